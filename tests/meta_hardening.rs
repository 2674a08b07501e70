//! `neuroplastic meta-grad` and the meta-learning files under bad input:
//! outputs that would replace an input or cannot be written are refused
//! before anything is computed; non-finite weights, misspelt or
//! contradictory metadata are named; a result that left the f32 range is an
//! error, not a file of NaN; a job too large for the memory is refused
//! before it allocates; S = 0 trajectories (documented) load; the bench
//! flags that would panic or never stop are refused.

mod meta_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meta_support::{Case, random};
use neuroplastic::io::TensorFile;
use neuroplastic::meta::io::{load_model, load_trajectory, save_model, save_trajectory};
use neuroplastic::meta::{Loss, MetaModel, Trajectory, cpu};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neuroplastic")
}

fn dir(test: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("meta_hardening").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn case() -> Case {
    Case::oml(2, 3, 2, 3)
}

/// A small valid model and trajectory written to `d`.
fn files(d: &Path) -> (MetaModel<f32>, Trajectory<f32>, PathBuf, PathBuf) {
    let (m, t) = random(&case(), 11);
    let (m, t) = (m.cast::<f32>(), t.cast::<f32>());
    let (mp, tp) = (d.join("m.safetensors"), d.join("t.safetensors"));
    save_model(&m, &mp).unwrap();
    save_trajectory(&t, &m, &tp).unwrap();
    (m, t, mp, tp)
}

fn meta_grad(mp: &Path, tp: &Path, out: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(["meta-grad", "--model"]).arg(mp).arg("--trajectory").arg(tp).arg("--out").arg(out);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure, got success: {}", String::from_utf8_lossy(&o.stdout));
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!e.contains("panicked"), "a panic, not an error: {e}");
    e
}

#[test]
fn an_out_that_is_an_input_is_refused_and_the_input_kept() {
    let d = dir("out_is_input");
    let (_, _, mp, tp) = files(&d);
    let (model, traj) = (std::fs::read(&mp).unwrap(), std::fs::read(&tp).unwrap());
    let e = failed(&meta_grad(&mp, &tp, &mp, &[]));
    assert!(e.contains("--out") && e.contains("--model") && e.contains("replace that input"), "{e}");
    // Another spelling of the trajectory, and a link to the model.
    let dotted = d.join(".").join("t.safetensors");
    let e = failed(&meta_grad(&mp, &tp, &dotted, &[]));
    assert!(e.contains("--out") && e.contains("--trajectory"), "{e}");
    #[cfg(unix)]
    {
        let link = d.join("link.safetensors");
        std::os::unix::fs::symlink(&mp, &link).unwrap();
        let e = failed(&meta_grad(&mp, &tp, &link, &[]));
        assert!(e.contains("--model"), "{e}");
    }
    assert_eq!(std::fs::read(&mp).unwrap(), model, "the model file changed");
    assert_eq!(std::fs::read(&tp).unwrap(), traj, "the trajectory file changed");
}

#[test]
fn an_out_that_cannot_be_written_is_refused_before_computing() {
    let d = dir("out_unwritable");
    let (_, _, mp, tp) = files(&d);
    for (out, want) in [
        (d.join("no/such/folder/g.safetensors"), "does not exist"),
        (d.clone(), "names a folder"),
        (PathBuf::from(format!("{}/", d.join("sub").display())), "names a folder"),
    ] {
        let e = failed(&meta_grad(&mp, &tp, &out, &[]));
        assert!(e.contains("--out") && e.contains(want), "{}: {e}", out.display());
        // Refused up front: nothing was computed (the summary line is printed after).
        assert!(!e.contains("meta-loss"), "{e}");
    }
}

#[test]
fn non_finite_weights_are_named_and_a_diverged_result_is_not_written() {
    let d = dir("non_finite");
    let (m, _, mp, tp) = files(&d);
    let g = d.join("g.safetensors");
    // A NaN in one PLN weight: the loss alone may stay finite, so the file is refused.
    let mut f = TensorFile::read(&mp).unwrap();
    let (i, o) = m.pln.dims[1];
    let mut w = m.theta0[m.pln.ranges(1).0].to_vec();
    w[3] = f32::NAN;
    f.put_f32("pln.1.weight", &[o, i], w);
    let bad = d.join("nan.safetensors");
    f.write(&bad).unwrap();
    let e = failed(&meta_grad(&bad, &tp, &g, &[]));
    assert!(e.contains("nan.safetensors") && e.contains("pln.1.weight") && e.contains("element 3"), "{e}");
    // A β so large the inner loop leaves the f32 range: an error naming the
    // meta-loss and β, and no gradient file.
    let mut f = TensorFile::read(&mp).unwrap();
    f.metadata.insert("neuroplastic.meta.inner_lr".into(), "1e30".into());
    let huge = d.join("huge.safetensors");
    f.write(&huge).unwrap();
    let e = failed(&meta_grad(&huge, &tp, &g, &[]));
    assert!(e.contains("meta-loss") && e.contains("1e30") && e.contains("lower β"), "{e}");
    assert!(!g.exists(), "a gradient file was written for a diverged result");
    // β that f32 cannot hold, as the user wrote it.
    f.metadata.insert("neuroplastic.meta.inner_lr".into(), "1e-50".into());
    f.write(&huge).unwrap();
    let e = failed(&meta_grad(&huge, &tp, &g, &[]));
    assert!(e.contains("`1e-50`") && e.contains("neuroplastic.meta.inner_lr"), "{e}");
}

#[test]
fn misspelt_and_contradictory_metadata_are_refused() {
    let d = dir("metadata");
    let (m, _, mp, _) = files(&d);
    let with = |edit: &dyn Fn(&mut TensorFile)| -> String {
        let mut f = TensorFile::read(&mp).unwrap();
        edit(&mut f);
        let p = d.join("edited.safetensors");
        f.write(&p).unwrap();
        load_model(&p).unwrap_err().to_string()
    };
    let e = with(&|f| {
        f.metadata.insert("neuroplastic.meta.trunacte".into(), "2".into());
    });
    assert!(e.contains("unknown metadata key `neuroplastic.meta.trunacte`") && e.contains("truncate"), "{e}");
    // Keys of other tools are not ours to judge.
    let mut f = TensorFile::read(&mp).unwrap();
    f.metadata.insert("format".into(), "pt".into());
    f.write(d.join("other.safetensors")).unwrap();
    assert!(load_model(d.join("other.safetensors")).is_ok());
    let e = with(&|f| {
        f.put_f32("inner_lr", &[1], vec![0.1]);
    });
    assert!(e.contains("β is given twice"), "{e}");
    let e = with(&|f| {
        f.metadata.remove("neuroplastic.meta.inner_lr");
        f.put_f32("inner_lr", &[1, 1], vec![0.1]);
    });
    assert!(e.contains("`inner_lr` has shape (1, 1)"), "{e}");
    let e = with(&|f| {
        f.metadata.insert("neuroplastic.meta.gate_at".into(), "7".into());
    });
    assert!(e.contains("gate_at") && e.contains("no neuromodulatory network"), "{e}");
    let e = with(&|f| {
        f.metadata.insert("neuroplastic.meta.order".into(), "first".into());
        f.metadata.insert("neuroplastic.meta.truncate".into(), "2".into());
    });
    assert!(e.contains("truncate") && e.contains("first"), "{e}");
    // An xent model with one output names the key and the layer.
    let mut one = m.clone();
    one.cfg.loss = Loss::Xent;
    let (i, _) = one.pln.dims[1];
    one.pln.dims[1] = (i, 1);
    one.theta0.truncate(one.pln.params());
    let e = one.validate().unwrap_err().to_string();
    assert!(e.contains("neuroplastic.meta.loss") && e.contains("pln.1.weight"), "{e}");
}

#[test]
fn a_trajectory_of_no_inner_steps_is_the_outer_loss_at_theta0() {
    let d = dir("s0");
    let (m, t, _, _) = files(&d);
    let mut t0 = t.clone();
    t0.s = 0;
    t0.inner_x.clear();
    t0.inner_y.clear();
    let tp = d.join("t0.safetensors");
    save_trajectory(&t0, &m, &tp).unwrap();
    let back = load_trajectory(&tp, &m).unwrap();
    assert_eq!(back.s, 0);
    // The meta-gradient is then the outer loss's own gradient at θ₀, which
    // any β gives alike.
    let g = cpu::meta_grad(&m, &back).unwrap();
    let mut other = m.clone();
    other.inner_lr *= 7.0;
    other.cfg.inner_lr *= 7.0;
    assert_eq!(cpu::meta_grad(&other, &back).unwrap(), g);
    assert!(g.pln.iter().any(|&v| v != 0.0));
}

#[test]
fn bad_trajectory_values_are_located_by_task_step_and_row() {
    let d = dir("locate");
    let (m, mut t, _, _) = files(&d);
    // inner.x is (P, S, Bi, D): task 1, step 2, row 1, column 0.
    let k = ((t.s + 2) * t.bi + 1) * t.d;
    t.inner_x[k] = f32::INFINITY;
    let e = cpu::meta_grad(&m, &t).unwrap_err().to_string();
    assert!(e.contains("inner.x (task 1, inner step 2, row 1, column 0)"), "{e}");
}

#[test]
fn a_job_larger_than_the_memory_is_refused_before_it_allocates() {
    let d = dir("memory");
    // Many inner steps of 384-wide layers: beyond a 64 MiB limit, from
    // files of a few MiB.
    let (m, t) = meta_support::random_wide(&case(), 12, 384);
    let (m, t) = (m.cast::<f32>(), t.cast::<f32>());
    let mp = d.join("m.safetensors");
    save_model(&m, &mp).unwrap();
    let mut big = t.clone();
    big.s = 1000;
    big.inner_x = vec![0.5; big.p * big.s * big.bi * big.d];
    big.inner_y = vec![0.5; big.p * big.s * big.bi * big.ycols];
    let tp = d.join("big.safetensors");
    save_trajectory(&big, &m, &tp).unwrap();
    let est = neuroplastic::meta::estimate(&m, &big, 1).total();
    assert!(est > 64 << 20, "the case is too small to test the limit: {est} bytes");
    let o = meta_grad(&mp, &tp, &d.join("g.safetensors"), &[("NEUROPLASTIC_MEMORY_LIMIT", "64M")]);
    let e = failed(&o);
    assert!(
        e.contains("the meta-gradient needs") && e.contains("S = 1000") && e.contains("NEUROPLASTIC_MEMORY_LIMIT"),
        "{e}"
    );
    // Under a limit above the estimate the same job runs.
    let limit = format!("{}", est * 4 + (256 << 20));
    let o = meta_grad(&mp, &tp, &d.join("g.safetensors"), &[("NEUROPLASTIC_MEMORY_LIMIT", &limit)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bench_flags_that_would_panic_or_never_stop_are_refused() {
    for args in [
        &["--min-reps", "0", "--min-seconds", "0"][..],
        &["--min-seconds", "inf"],
        &["--min-seconds", "NaN"],
        &["--threads", "0"],
    ] {
        let o = Command::new(bin())
            .args(["bench", "meta", "--no-peers", "--workload", "inner"])
            .args(args)
            .output()
            .unwrap();
        let e = failed(&o);
        assert!(e.contains(args[0]), "{args:?}: {e}");
    }
}

/// `bench meta` times the meta-gradient and the meta-loss alone, each in a
/// process of its own: the same loss, and the loss alone holds less memory.
#[test]
fn bench_meta_times_the_gradient_and_the_loss_alone() {
    let o = Command::new(bin())
        .args(["bench", "meta", "--no-peers", "--workload", "inner", "--json", "--min-seconds", "0"])
        .args(["--min-reps", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    let (grad, loss) = (&rows[0], &rows[1]);
    assert_eq!((grad["impl"].as_str(), loss["impl"].as_str()), (Some("neuroplastic"), Some("neuroplastic-loss")));
    assert_eq!(grad["loss"], loss["loss"], "{out}");
    let peak = |r: &serde_json::Value| r["peak_rss_mib"].as_f64().unwrap();
    assert!(peak(loss) < peak(grad), "{out}");
}

/// A missing or unreadable input is named with the flag that gave it.
#[test]
fn input_errors_name_their_flag() {
    let d = dir("input_flags");
    let (_, _, mp, tp) = files(&d);
    let absent = d.join("absent.safetensors");
    let e = failed(&meta_grad(&absent, &tp, &d.join("g.safetensors"), &[]));
    assert!(e.contains(&format!("--model {}:", absent.display())), "{e}");
    let e = failed(&meta_grad(&mp, &absent, &d.join("g.safetensors"), &[]));
    assert!(e.contains(&format!("--trajectory {}:", absent.display())), "{e}");
    // A model given as the trajectory: named as the trajectory, with what is wrong.
    let e = failed(&meta_grad(&mp, &mp, &d.join("g.safetensors"), &[]));
    assert!(e.contains("--trajectory") && e.contains("inner.x"), "{e}");
}
