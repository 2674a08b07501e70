//! Incremental sine regression: the task's data, that meta-training lowers
//! its meta-loss, the evaluation protocol, and the two CLI commands.

use std::process::Command;

use neuroplastic::meta::cpu;
use neuroplastic::meta::io::load_model;
use neuroplastic::meta::sine::{self, D, Method, SLOTS, SineConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn small() -> SineConfig {
    SineConfig {
        width: 24,
        rln_layers: 2,
        pool: 20,
        fns_per_traj: 3,
        steps_per_fn: 5,
        meta_lr: 3e-3,
        inner_lr: 0.05,
        ..SineConfig::default()
    }
}

#[test]
fn trajectories_hold_sine_points_function_after_function() {
    let c = small();
    let pool = sine::pool(&c, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let t = sine::meta_trajectory(&c, &pool, &mut rng);
    assert_eq!((t.p, t.s, t.bi, t.bo, t.d), (1, c.fns_per_traj * c.steps_per_fn, c.batch, 2 * c.remember, D));
    let rows = t.s * t.bi;
    // Every row: a one-hot slot, and y = a sin(x + p) for some pool function.
    let slot = |k: usize| (0..SLOTS).find(|&s| t.inner_x[k * D + 1 + s] == 1.0).unwrap();
    for k in 0..rows {
        let hot: f32 = t.inner_x[k * D + 1..(k + 1) * D].iter().sum();
        assert_eq!(hot, 1.0);
        let (x, y) = (t.inner_x[k * D], t.inner_y[k]);
        assert!((-5.0..5.0).contains(&x));
        assert!(pool.iter().any(|f| (f.a * (x + f.p).sin() - y).abs() < 1e-5), "row {k} is on no pool function");
    }
    // Batches of one function in a row: the slot changes only between functions.
    let per = c.steps_per_fn * c.batch;
    for k in 1..rows {
        if k % per != 0 {
            assert_eq!(slot(k), slot(k - 1), "row {k}");
        } else {
            assert_ne!(slot(k), slot(k - 1), "row {k}: a new function takes a new slot");
        }
    }
    // The meta-loss batch: only the trajectory's functions, each in its slot
    // (a pool function in a slot it never had in the trajectory would be
    // unpredictable noise).
    let fn_of_slot = |s: usize| {
        let k = (0..rows).find(|&k| slot(k) == s)?;
        pool.iter().find(|f| (f.a * (t.inner_x[k * D] + f.p).sin() - t.inner_y[k]).abs() < 1e-5)
    };
    for k in 0..t.bo {
        let s = (0..SLOTS).find(|&s| t.outer_x[k * D + 1 + s] == 1.0).unwrap();
        let f = fn_of_slot(s).unwrap_or_else(|| panic!("outer row {k}: slot {s} is not one of the trajectory's"));
        let (x, y) = (t.outer_x[k * D], t.outer_y[k]);
        assert!((f.a * (x + f.p).sin() - y).abs() < 1e-5, "outer row {k} is not on its slot's function");
    }
}

/// The initial network keeps the input's scale through its ReLU stack (He
/// initialisation): its output's RMS over random inputs is of the order of
/// the input's, not ~1000× smaller as with U(±1/√fan-in) over 8 layers.
#[test]
fn initial_network_keeps_the_signal_scale() {
    let c = SineConfig::default();
    let m = sine::init_model(&c, Method::Oml, 7).unwrap();
    let pool = sine::pool(&c, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut t = sine::iid_batch(&c, &pool, &mut rng);
    t.outer_y.iter_mut().for_each(|y| *y = 0.0);
    // With zero targets the loss is the mean squared output.
    let rms = cpu::meta_grad(&m, &t).unwrap().loss.sqrt();
    let rms_in = (t.outer_x.iter().map(|&v| (v * v) as f64).sum::<f64>() / t.bo as f64).sqrt();
    assert!(rms > 0.1 * rms_in && rms < 10.0 * rms_in, "output RMS {rms} vs input RMS {rms_in}");
    // Biases start at zero.
    let (_, b) = m.rln.ranges(0);
    assert!(m.rln_p[b].iter().all(|&v| v == 0.0));
}

#[test]
fn meta_training_lowers_the_meta_loss() {
    let c = small();
    for method in [Method::Oml, Method::Anml { gate_at: 1 }, Method::Pretrained] {
        let mut m = sine::init_model(&c, method, 4).unwrap();
        let mut losses = Vec::new();
        sine::train(&c, &mut m, method, 300, 4, |_, l, _, _| {
            losses.push(l);
            Ok(())
        })
        .unwrap();
        let first: f64 = losses[..50].iter().sum::<f64>() / 50.0;
        let last: f64 = losses[250..].iter().sum::<f64>() / 50.0;
        assert!(last < 0.9 * first, "{method:?}: mean loss {first:.3} -> {last:.3}");
    }
}

/// `truncate` reaches the model's meta-gradient: the same trajectory gives
/// the same meta-loss with and without it (same forward) but a different
/// RLN gradient (the early steps' second-order terms are dropped).
#[test]
fn truncation_reaches_the_meta_gradient() {
    let c = SineConfig { fns_per_traj: 2, steps_per_fn: 3, truncate: 2, ..small() };
    let m = sine::init_model(&c, Method::Oml, 5).unwrap();
    assert_eq!(m.cfg.truncate, 2);
    let full = sine::init_model(&SineConfig { truncate: 0, ..c.clone() }, Method::Oml, 5).unwrap();
    let pool = sine::pool(&c, 5);
    let t = sine::meta_trajectory(&c, &pool, &mut ChaCha8Rng::seed_from_u64(2));
    let (gt, gf) = (cpu::meta_grad(&m, &t).unwrap(), cpu::meta_grad(&full, &t).unwrap());
    assert_eq!(gt.loss, gf.loss);
    let diff = gt.rln.iter().zip(&gf.rln).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-6, "truncated and full RLN gradients agree to {diff}");
}

#[test]
fn evaluation_without_learning_does_not_depend_on_the_order() {
    let c = small();
    let mut m = sine::init_model(&c, Method::Oml, 5).unwrap();
    let set = sine::eval_set(&c, 2);
    assert_eq!(set.batches.len(), SLOTS * c.eval_batches);
    let order: Vec<usize> = (0..set.batches.len()).collect();
    let rev: Vec<usize> = order.iter().rev().copied().collect();
    m.cfg.inner_lr = 0.0;
    assert_eq!(sine::evaluate(&m, &set, &order).unwrap(), sine::evaluate(&m, &set, &rev).unwrap());
    // With learning, the last function learned is fit better than before learning.
    m.cfg.inner_lr = 0.05;
    let before = sine::evaluate(&m, &set, &[]).unwrap();
    let after = sine::evaluate(&m, &set, &order).unwrap();
    assert!(after[SLOTS - 1] < before[SLOTS - 1], "{:?} vs {:?}", after, before);
}

#[test]
fn cli_trains_and_evaluates() {
    let bin = env!("CARGO_BIN_EXE_neuroplastic");
    let d = std::env::temp_dir().join(format!("neuroplastic-oml-sine-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    for (method, gate, out) in
        [("oml", &[][..], "oml.safetensors"), ("anml", &["--gate-at", "1"][..], "anml.safetensors")]
    {
        let o = Command::new(bin)
            .args(["train", "oml-sine", "--method", method, "--steps", "3", "--width", "16", "--rln-layers", "1"])
            .args(gate)
            .args(["--save-every", "2", "--out", &p(out)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // --save-every 2 of 3 steps: one snapshot (step 2), the end goes to --out.
    let snap = load_model(p("oml.step2.safetensors")).unwrap();
    let last = load_model(p("oml.safetensors")).unwrap();
    assert_ne!(snap.theta0, last.theta0, "the snapshot is the model after step 2, not the last");
    assert!(!std::path::Path::new(&p("oml.step3.safetensors")).exists());
    let o = Command::new(bin)
        .args(["eval", "oml-sine", "--model", &format!("OML={}", p("oml.safetensors"))])
        .args(["--model", &format!("ANML={}", p("anml.safetensors")), "--scratch", "--seeds", "2"])
        .args(["--table", &p("t.md"), "--plot", &p("f.svg")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = std::fs::read_to_string(p("t.md")).unwrap();
    for row in ["| OML |", "| ANML |", "| scratch |"] {
        assert!(table.contains(row), "{table}");
    }
    assert!(std::fs::read_to_string(p("f.svg")).unwrap().contains("<svg"));
    // The SGD rate chosen on validation seeds is one of --lrs, and shown.
    let o = Command::new(bin)
        .args(["eval", "oml-sine", "--model", &format!("OML={}", p("oml.safetensors")), "--seeds", "1"])
        .args(["--lrs", "0.0001,0.05", "--validation-seeds", "1", "--table", &p("lrs.md")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("OML: validation error").count(), 2, "{err}");
    let table = std::fs::read_to_string(p("lrs.md")).unwrap();
    assert!(table.contains("| OML | 0.0001 |") || table.contains("| OML | 0.05 |"), "{table}");
    for bad in ["--lrs=-1", "--lrs=0", "--lrs=nan"] {
        let o = Command::new(bin)
            .args(["eval", "oml-sine", "--model", &format!("OML={}", p("oml.safetensors")), bad])
            .output()
            .unwrap();
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not a positive learning rate"),
            "{bad}"
        );
    }
    // A name holding '=' is kept whole when the rest names the file.
    let o = Command::new(bin)
        .args(["eval", "oml-sine", "--model", &format!("OML (K=1)={}", p("oml.safetensors")), "--seeds", "1"])
        .args(["--table", &p("eq.md")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(p("eq.md")).unwrap().contains("| OML (K=1) |"));
    // An output in a folder that does not exist is refused before training
    // or evaluating, naming the flag and the folder.
    let missing = d.join("no-such-folder").join("m.safetensors");
    let o = Command::new(bin)
        .args(["train", "oml-sine", "--steps", "1000000", "--out", missing.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--out") && err.contains("does not exist"), "{err}");
    let o = Command::new(bin)
        .args(["eval", "oml-sine", "--model", &format!("OML={}", p("oml.safetensors"))])
        .args(["--plot", missing.with_extension("svg").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--plot") && err.contains("does not exist"), "{err}");
    let o = Command::new(bin).args(["eval", "oml-sine", "--model", "x"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("NAME=PATH"));

    // Replicas: files under one NAME make one row, the mean of the models'
    // own means, with an interval over the models.
    let o = Command::new(bin)
        .args(["train", "oml-sine", "--steps", "3", "--width", "16", "--rln-layers", "1", "--seed", "7"])
        .args(["--out", &p("oml7.safetensors")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = |models: &[(&str, &str)], out: &str| -> String {
        let mut cmd = Command::new(bin);
        cmd.args(["eval", "oml-sine", "--seeds", "2", "--table", &p(out)]);
        for (name, file) in models {
            cmd.args(["--model", &format!("{name}={}", p(file))]);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(p(out)).unwrap()
    };
    // The first number after `| row | rate |` in a table.
    let value = |t: &str, row: &str| -> f64 {
        let line = t.lines().find(|l| l.starts_with(&format!("| {row} |"))).unwrap_or_else(|| panic!("{row}: {t}"));
        line.split('|').nth(3).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    let a = value(&table(&[("A", "oml.safetensors")], "a.md"), "A");
    let b = value(&table(&[("B", "oml7.safetensors")], "b.md"), "B");
    assert!((a - b).abs() > 1e-3, "two different models should score differently here: {a} {b}");
    let both = table(&[("OML", "oml.safetensors"), ("X", "anml.safetensors"), ("OML", "oml7.safetensors")], "ab.md");
    let mean = value(&both, "OML (2 models)");
    assert!((mean - (a + b) / 2.0).abs() <= 1.5e-3, "{mean} is not the mean of {a} and {b}:\n{both}");
    assert!(both.contains("| X |") && both.contains("over the models"), "{both}");
    // A different network under the same NAME is not a replica, nor is a copy.
    let o = Command::new(bin)
        .args(["eval", "oml-sine", "--model", &format!("OML={}", p("oml.safetensors"))])
        .args(["--model", &format!("OML={}", p("anml.safetensors"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("its network") && err.contains("own NAME"), "{err}");
    std::fs::copy(p("oml.safetensors"), p("copy.safetensors")).unwrap();
    let o = Command::new(bin)
        .args(["eval", "oml-sine", "--model", &format!("OML={}", p("oml.safetensors"))])
        .args(["--model", &format!("OML={}", p("copy.safetensors"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("a copy"), "{err}");
    // The same file twice under one NAME would count twice.
    let o = Command::new(bin)
        .args(["eval", "oml-sine", "--model", &format!("OML={}", p("oml.safetensors"))])
        .args(["--model", &format!("OML={}", p("oml.safetensors"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("already given as `OML`"), "{err}");
}

/// `--save-every` + `--resume`: a run stopped after 2 steps and continued to
/// 5 writes the same model file, byte for byte, as a run of 5 steps; the
/// checkpoint refuses a `--steps` it has already reached, and a damaged
/// checkpoint is an error naming the file.
#[test]
fn resumed_run_equals_an_uninterrupted_one() {
    let bin = env!("CARGO_BIN_EXE_neuroplastic");
    let d = std::env::temp_dir().join(format!("neuroplastic-oml-resume-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let small = ["--width", "16", "--rln-layers", "1", "--fns-per-traj", "2", "--steps-per-fn", "3", "--seed", "5"];
    for method in ["oml", "anml"] {
        let run = |args: &[&str]| {
            let o = Command::new(bin).args(["train", "oml-sine", "--method", method]).args(args).output().unwrap();
            assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        run(&[&small[..], &["--steps", "5", "--out", &p("whole.safetensors")]].concat());
        // The previous method's checkpoint would make a new run there refuse to start.
        let _ = std::fs::remove_file(p("part.ckpt.safetensors"));
        run(&[&small[..], &["--steps", "2", "--save-every", "2", "--out", &p("part.safetensors")]].concat());
        // The resumed run takes its settings from the checkpoint, not from flags.
        run(&[
            "--resume",
            &p("part.ckpt.safetensors"),
            "--steps",
            "5",
            "--width",
            "99",
            "--out",
            &p("rest.safetensors"),
        ]);
        let whole = std::fs::read(p("whole.safetensors")).unwrap();
        assert_eq!(whole, std::fs::read(p("rest.safetensors")).unwrap(), "{method}: resumed ≠ uninterrupted");
        assert_ne!(whole, std::fs::read(p("part.safetensors")).unwrap(), "{method}: 2 steps = 5 steps?");
    }
    let fails = |ckpt: &str, steps: &str| {
        let o = Command::new(bin)
            .args(["train", "oml-sine", "--resume", &p(ckpt), "--steps", steps, "--out", &p("x.safetensors")])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = fails("part.ckpt.safetensors", "2");
    assert!(err.contains("--resume") && err.contains("done 2 steps"), "{err}");
    // A model file is not a checkpoint: the error names the flag, the file,
    // what is missing and where checkpoints come from.
    let err = fails("whole.safetensors", "9");
    assert!(
        err.contains("--resume") && err.contains("whole.safetensors") && err.contains("neuroplastic.oml_sine"),
        "{err}"
    );
    assert!(err.contains("not a `train oml-sine` checkpoint") && err.contains("--save-every"), "{err}");
    // A missing file is named with its flag.
    let err = fails("absent.ckpt.safetensors", "9");
    assert!(err.contains("--resume ") && err.contains("absent.ckpt.safetensors"), "{err}");
}

/// The memory estimate counts the parameters [`sine::init_model`] creates,
/// for every method and depth, and is a sane upper bound: the default run
/// (width 300, 6 RLN layers, S = 400) far below a gigabyte, a width of
/// 100,000 far above 40 GB, and no overflow for absurd widths.
#[test]
fn memory_estimate_counts_the_model_and_bounds_the_run() {
    for (rln_layers, pln_layers) in [(0, 1), (0, 2), (1, 2), (3, 3)] {
        for method in
            [Method::Oml, Method::Anml { gate_at: 0 }, Method::Anml { gate_at: pln_layers - 1 }, Method::Pretrained]
        {
            let c = SineConfig { width: 7, rln_layers, pln_layers, ..small() };
            let m = sine::init_model(&c, method, 1).unwrap();
            let [r, p, n] = sine::parameter_counts(&c, method);
            assert_eq!(
                (r, p, n),
                (m.rln_p.len() as u128, m.theta0.len() as u128, m.nm_p.len() as u128),
                "{c:?} {method:?}"
            );
        }
    }
    let default = sine::training_memory(&SineConfig::default(), Method::Anml { gate_at: 0 }).total();
    assert!(default > 10 << 20 && default < 1 << 30, "{default}");
    let wide =
        sine::training_memory(&SineConfig { width: 100_000, rln_layers: 1, ..SineConfig::default() }, Method::Oml);
    assert!(wide.total() > 40_000_000_000, "{}", wide.total());
    let absurd = SineConfig {
        width: usize::MAX,
        rln_layers: usize::MAX,
        fns_per_traj: 10,
        steps_per_fn: usize::MAX,
        ..SineConfig::default()
    };
    assert!(sine::training_memory(&absurd, Method::Anml { gate_at: 1 }).total() > u64::MAX as u128);
}

/// Settings that would panic or be silently ignored are refused by
/// `SineConfig::check` (and so by `init_model` and `train`), naming the field.
#[test]
fn bad_settings_are_errors_naming_the_setting() {
    let c = small();
    for (bad, method, key) in [
        (SineConfig { fns_per_traj: 0, ..c.clone() }, Method::Oml, "fns_per_traj"),
        (SineConfig { fns_per_traj: SLOTS + 1, ..c.clone() }, Method::Oml, "fns_per_traj"),
        (SineConfig { steps_per_fn: 0, ..c.clone() }, Method::Anml { gate_at: 0 }, "steps_per_fn"),
        (c.clone(), Method::Anml { gate_at: 2 }, "gate_at"),
        (SineConfig { inner_lr: -1.0, ..c.clone() }, Method::Pretrained, "inner_lr"),
        (SineConfig { meta_lr: f64::NAN, ..c.clone() }, Method::Oml, "meta_lr"),
        (SineConfig { pool: 0, ..c.clone() }, Method::Pretrained, "pool"),
        (SineConfig { pln_layers: 0, ..c.clone() }, Method::Oml, "pln_layers"),
        (SineConfig { truncate: 16, ..c.clone() }, Method::Oml, "truncate"),
    ] {
        assert_eq!(bad.check(method).unwrap_err().key, key);
        let e = sine::init_model(&bad, method, 0).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
    // Pre-training uses no trajectory: its counts are not checked.
    assert!(SineConfig { fns_per_traj: 0, ..c }.check(Method::Pretrained).is_ok());
}
