//! `train oml-sine` / `eval oml-sine` on bad input: every flag, file and
//! output path is checked before any work, errors name the flag or file,
//! the value and what is allowed, nothing panics, no table of NaN is
//! printed with success, and no input file is replaced by an output.
//! (Findings F2–F6, F9, F11–F13 of the break-it audit.) Every run is tiny.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use neuroplastic::meta::io::{load_model, save_model};
use neuroplastic::meta::{Loss, MetaConfig, MetaModel};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neuroplastic")
}

/// A fresh folder for one test.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("neuroplastic-sine-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a clean refusal (exit 1, not a panic's 101 or an abort) whose
/// message holds every needle; returns the message.
fn refused(o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected a clean error, got {:?}: {err}", o.status);
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}\n{}", stdout(o), stderr(o));
}

/// The smallest sizes `train oml-sine` takes.
const TINY: [&str; 8] = ["--width", "4", "--rln-layers", "1", "--fns-per-traj", "1", "--steps-per-fn", "1"];

/// `train oml-sine` with the tiny sizes, except those `extra` sets itself.
fn train(extra: &[&str]) -> Output {
    let tiny: Vec<&str> = TINY.chunks(2).filter(|f| !extra.contains(&f[0])).flatten().copied().collect();
    Command::new(bin()).args(["train", "oml-sine"]).args(tiny).args(extra).output().unwrap()
}

/// A tiny trained OML model at `path`.
fn tiny_model(path: &Path) {
    ok(&train(&["--steps", "1", "--out", s(path)]));
}

fn eval(extra: &[&str]) -> Output {
    Command::new(bin()).args(["eval", "oml-sine"]).args(extra).output().unwrap()
}

/// F2: `--table` or `--plot` onto a `--model` file (any spelling, or a
/// link) is refused before evaluating, the model left as it was; so is a
/// `--plot` that is the `--table`.
#[test]
fn f2_table_or_plot_onto_a_model_file_is_refused() {
    let d = dir("f2");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    let m = d.join("m.safetensors");
    tiny_model(&m);
    let before = std::fs::read(&m).unwrap();
    let spec = format!("v={}", s(&m));
    let dotted = d.join("sub").join("..").join("m.safetensors");
    let o = eval(&["--model", &spec, "--seeds", "1", "--table", s(&m)]);
    refused(&o, &["--table", "--model", "would replace"]);
    let o = eval(&["--model", &spec, "--seeds", "1", "--plot", s(&dotted)]);
    refused(&o, &["--plot", "--model"]);
    #[cfg(unix)]
    {
        let link = d.join("link.md");
        std::os::unix::fs::symlink(&m, &link).unwrap();
        let o = eval(&["--model", &spec, "--seeds", "1", "--table", s(&link)]);
        refused(&o, &["--table", "--model", "link"]);
    }
    assert_eq!(std::fs::read(&m).unwrap(), before, "the model file changed");
    assert!(stdout(&o).is_empty(), "evaluated before refusing");
    // The plot onto the table, spelt two ways, before either exists.
    let t = d.join("t.md");
    let o = eval(&["--model", &spec, "--seeds", "1", "--table", s(&t), "--plot", s(&d.join("sub/../t.md"))]);
    refused(&o, &["--plot", "--table", "same file"]);
    assert!(!t.exists());
}

/// F3: `--out` on the `--resume` checkpoint (any spelling) and a snapshot
/// `<out>.step<N>` on it are refused up front, the checkpoint intact; the
/// usual `--resume run.ckpt.safetensors --out run.safetensors --save-every`
/// still works and leaves a checkpoint that continues again.
#[test]
fn f3_resume_checkpoint_is_never_replaced_by_a_model() {
    let d = dir("f3");
    let out = d.join("run.safetensors");
    let ckpt = d.join("run.ckpt.safetensors");
    ok(&train(&["--steps", "2", "--save-every", "1", "--out", s(&out)]));
    let saved = std::fs::read(&ckpt).unwrap();
    // A new run with checkpoints onto the same --out: refused, not overwritten.
    let o = train(&["--steps", "2", "--save-every", "1", "--out", s(&out)]);
    refused(&o, &["run.ckpt.safetensors", "exists", "--resume"]);
    assert_eq!(std::fs::read(&ckpt).unwrap(), saved, "another run's checkpoint was replaced");
    let o = train(&["--steps", "5", "--resume", s(&ckpt), "--out", s(&ckpt)]);
    refused(&o, &["--out", "--resume", "would replace"]);
    let o = train(&["--steps", "5", "--resume", s(&ckpt), "--out", &format!("{}/./run.ckpt.safetensors", s(&d))]);
    refused(&o, &["--out", "--resume"]);
    assert!(!stdout(&o).contains("step"), "trained before refusing: {}", stdout(&o));
    // A checkpoint (at step 2) named like the snapshot of step 3 of --out.
    let q3 = d.join("q.step3.safetensors");
    std::fs::copy(&ckpt, &q3).unwrap();
    let q = d.join("q.safetensors");
    let o = train(&["--steps", "5", "--save-every", "1", "--resume", s(&q3), "--out", s(&q)]);
    refused(&o, &["--resume", "snapshot", "step 3", "--save-every 1"]);
    assert_eq!(std::fs::read(&q3).unwrap(), saved);
    // Saving every 2 steps from step 2 writes step 4 only: q.step3 is safe.
    ok(&train(&["--steps", "5", "--save-every", "2", "--resume", s(&q3), "--out", s(&q)]));
    assert_eq!(std::fs::read(&q3).unwrap(), saved);
    assert_eq!(std::fs::read(&ckpt).unwrap(), saved, "the checkpoint changed");
    // The usual use: --out's own checkpoint is the one resumed; it is replaced
    // by the same run's later checkpoint, which continues it in turn.
    ok(&train(&["--steps", "4", "--save-every", "1", "--resume", s(&ckpt), "--out", s(&out)]));
    let o = train(&["--steps", "4", "--resume", s(&ckpt), "--out", s(&d.join("x.safetensors"))]);
    refused(&o, &["nothing to train", "done 4 steps"]);
    ok(&train(&["--steps", "5", "--resume", s(&ckpt), "--out", s(&d.join("x.safetensors"))]));
}

/// F4: flags that panicked (an empty range to draw from, a gate on a
/// missing layer) and the other counts that could reach one are clear
/// errors naming the flag, the value and the allowed range.
#[test]
fn f4_out_of_range_counts_are_flag_errors_not_panics() {
    let d = dir("f4");
    let out = d.join("m.safetensors");
    let o = s(&out);
    refused(&train(&["--steps", "1", "--fns-per-traj", "0", "--out", o]), &["--fns-per-traj 0", "1 … 10"]);
    refused(&train(&["--steps", "1", "--fns-per-traj", "11", "--out", o]), &["--fns-per-traj 11", "1 … 10", "slot"]);
    refused(
        &train(&["--steps", "1", "--method", "anml", "--gate-at", "3", "--out", o]),
        &["--gate-at 3", "0 … 1", "2 layers"],
    );
    refused(&train(&["--steps", "1", "--steps-per-fn", "0", "--out", o]), &["--steps-per-fn 0", "at least 1"]);
    refused(&train(&["--steps", "1", "--width", "0", "--out", o]), &["--width 0", "at least 1"]);
    refused(&train(&["--steps", "1", "--truncate", "2", "--out", o]), &["--truncate 2", "0 … 1"]);
    assert!(!out.exists());
    // The same settings in a hand-edited checkpoint: an error naming the file.
    let ck = d.join("m.ckpt.safetensors");
    ok(&train(&["--steps", "1", "--save-every", "1", "--out", o]));
    let mut k = neuroplastic::meta::sine::load_checkpoint(&ck).unwrap();
    k.config.fns_per_traj = 0;
    neuroplastic::meta::sine::save_checkpoint(&ck, &k.config, k.method, k.seed, &k.model, &k.state).unwrap();
    let r = train(&["--steps", "3", "--resume", s(&ck), "--out", s(&d.join("r.safetensors"))]);
    refused(&r, &["m.ckpt.safetensors", "fns_per_traj", "1 … 10"]);
}

/// F9: a non-positive or non-finite `--inner-lr` (as `eval --lrs`), nothing
/// to train, and `--gate-at` without ANML's gate are refused.
#[test]
fn f9_meaningless_training_flags_are_refused() {
    let d = dir("f9");
    let out = d.join("m.safetensors");
    let o = s(&out);
    for bad in ["-1", "0", "NaN", "inf"] {
        let r = train(&["--steps", "1", &format!("--inner-lr={bad}"), "--out", o]);
        refused(&r, &["--inner-lr", "a finite number > 0"]);
    }
    refused(&train(&["--steps", "1", "--meta-lr=-1", "--out", o]), &["--meta-lr", "a finite number > 0"]);
    refused(&train(&["--steps", "0", "--out", o]), &["--steps 0", "nothing to train"]);
    for method in ["oml", "pretrained"] {
        let r = train(&["--steps", "1", "--method", method, "--gate-at", "0", "--out", o]);
        refused(&r, &["--gate-at 0", "only to --method anml"]);
    }
    assert!(!out.exists());
    ok(&train(&["--steps", "1", "--method", "anml", "--out", o]));
}

/// F11: an output that names a folder (a trailing `/`, an existing folder)
/// or lies under a file is refused before training or evaluating.
#[test]
fn f11_outputs_naming_folders_are_refused_up_front() {
    let d = dir("f11");
    std::fs::create_dir_all(d.join("existing")).unwrap();
    std::fs::write(d.join("file"), b"x").unwrap();
    let slash = format!("{}/sub/", s(&d));
    let existing = d.join("existing");
    let under_file = d.join("file").join("m.safetensors");
    for (bad, what) in
        [(slash.as_str(), "names a folder"), (s(&existing), "names a folder"), (s(&under_file), "not a folder")]
    {
        let r = train(&["--steps", "1", "--out", bad]);
        refused(&r, &["--out", what]);
        assert!(!stdout(&r).contains("step"), "trained before refusing: {}", stdout(&r));
    }
    let m = d.join("m.safetensors");
    tiny_model(&m);
    let spec = format!("m={}", s(&m));
    for flag in ["--table", "--plot"] {
        for (bad, what) in [(slash.as_str(), "names a folder"), (s(&existing), "names a folder")] {
            let r = eval(&["--model", &spec, "--seeds", "1", flag, bad]);
            refused(&r, &[flag, what]);
            assert!(stdout(&r).is_empty(), "evaluated before refusing");
        }
    }
    assert!(!d.join("sub").exists());
}

/// A model of `m`'s kind with other sizes or loss, zero weights.
fn odd_model(path: &Path, input: usize, outputs: usize, loss: Loss) {
    let cfg = MetaConfig { loss, inner_lr: 0.01, ..MetaConfig::default() };
    let m = MetaModel::<f32>::zeros(cfg, input, &[input, 4], &[4, outputs], &[]);
    save_model(&m, path).unwrap();
}

/// F12: with `--lrs`, a model of the wrong architecture or loss is named
/// (NAME=PATH) with what is wrong, as without it; a diverging training run
/// names the outer step and the flags to lower.
#[test]
fn f12_errors_name_the_model_and_the_step() {
    let d = dir("f12");
    let d3 = d.join("d3.safetensors");
    odd_model(&d3, 3, 1, Loss::Mse);
    let x2 = d.join("x2.safetensors");
    odd_model(&x2, 11, 2, Loss::Xent);
    for lrs in [&["--lrs", "0.01", "--validation-seeds", "1"][..], &[][..]] {
        let spec = format!("d3={}", s(&d3));
        let r = eval(&[&["--model", &spec, "--seeds", "1"][..], lrs].concat());
        refused(&r, &[&format!("--model d3={}", s(&d3)), "takes 3 inputs", "needs 11 inputs"]);
        let spec = format!("x={}", s(&x2));
        let r = eval(&[&["--model", &spec, "--seeds", "1"][..], lrs].concat());
        refused(&r, &[&format!("--model x={}", s(&x2)), "gives 2 outputs", "1 output"]);
        assert!(!stderr(&r).contains("outer.y") && !stderr(&r).contains("inner.x"), "{}", stderr(&r));
    }
    let r = train(&["--steps", "3", "--inner-lr", "1e30", "--out", s(&d.join("m.safetensors"))]);
    let err = refused(&r, &["outer step", "diverged", "--inner-lr", "--meta-lr"]);
    assert!(!err.contains("grad.rln"), "{err}");
    // The data are generated: no advice to scale the inputs, and β said once.
    assert!(!err.contains("scale the inputs") && err.matches("β").count() == 1, "{err}");
}

/// F6 and F13: `eval oml-sine` never prints NaN with success: non-finite
/// weights are refused at load (naming the model and tensor), a rate at
/// which learning diverges is an error naming the model and rate, `--lrs`
/// skips diverging rates and never falls back to one not among them,
/// `--seeds 0` is refused and one seed prints no interval; names must be
/// given and distinct; a learned β prints as written.
#[test]
fn f6_f13_eval_never_reports_nan_and_prints_plain_numbers() {
    let d = dir("f13");
    let m = d.join("m.safetensors");
    tiny_model(&m);
    let base = load_model(&m).unwrap();
    let spec = |n: &str, p: &Path| format!("{n}={}", s(p));
    // Non-finite weights.
    let nan = d.join("nan.safetensors");
    let mut bad = base.clone();
    bad.theta0[3] = f32::NAN;
    save_model(&bad, &nan).unwrap();
    refused(
        &eval(&["--model", &spec("n", &nan), "--seeds", "1"]),
        &["--model n=", "pln.0.weight: element 3", "finite"],
    );
    // A rate at which learning diverges.
    let huge = d.join("huge.safetensors");
    let mut h = base.clone();
    h.cfg.inner_lr = 1e6;
    h.inner_lr = 1e6;
    save_model(&h, &huge).unwrap();
    let r = eval(&["--model", &spec("h", &huge), "--seeds", "1"]);
    refused(&r, &["--model h=", "diverged", "1000000", "--lrs"]);
    assert!(!stdout(&r).contains("NaN"), "{}", stdout(&r));
    // --lrs: every rate diverges → an error, not the model's own β.
    let r = eval(&["--model", &spec("m", &m), "--seeds", "1", "--lrs", "1e30", "--validation-seeds", "1"]);
    refused(&r, &["--model m=", "every rate of --lrs", "1000000000000000000000000000000"]);
    assert!(!stdout(&r).contains("0.003"), "{}", stdout(&r));
    // … a diverging candidate is skipped, a finite one chosen.
    let r = eval(&["--model", &spec("m", &m), "--seeds", "1", "--lrs", "1e30,0.001", "--validation-seeds", "1"]);
    ok(&r);
    assert!(stdout(&r).contains("| m | 0.001 |"), "{}", stdout(&r));
    // A negative β at its own rate is refused; with --lrs it does not matter.
    let neg = d.join("neg.safetensors");
    let mut n = base.clone();
    n.cfg.inner_lr = -1.0;
    n.inner_lr = -1.0;
    save_model(&n, &neg).unwrap();
    refused(&eval(&["--model", &spec("g", &neg), "--seeds", "1"]), &["--model g=", "β = -1", "not positive"]);
    ok(&eval(&["--model", &spec("g", &neg), "--seeds", "1", "--lrs", "0.003", "--validation-seeds", "1"]));
    // Seeds.
    refused(&eval(&["--model", &spec("m", &m), "--seeds", "0"]), &["--seeds 0", "at least 1"]);
    let r = eval(&["--model", &spec("m", &m), "--lrs", "0.01", "--validation-seeds", &u64::MAX.to_string()]);
    refused(&r, &["--validation-seeds 18446744073709551615", "at most"]);
    let r = eval(&["--model", &spec("m", &m), "--seeds", "1"]);
    ok(&r);
    let out = stdout(&r);
    assert!(out.contains("(1 seed, no CI)") && !out.contains("NaN"), "{out}");
    // Names.
    refused(&eval(&["--model", &format!("={}", s(&m)), "--seeds", "1"]), &["--model =", "NAME", "empty"]);
    refused(&eval(&["--model", "a=", "--seeds", "1"]), &["--model a=", "PATH", "empty"]);
    // One NAME for several files makes replicas; one file twice would count twice.
    let r = eval(&["--model", &spec("m", &m), "--model", &spec("m", &m), "--seeds", "1"]);
    refused(&r, &["--model m=", "already given as `m`", "count twice"]);
    let r = eval(&["--model", &spec("m", &m), "--model", &spec("m", &nan), "--seeds", "1"]);
    refused(&r, &["--model m=", "nan.safetensors", "not finite"]);
    let r = eval(&["--model", &spec("scratch", &m), "--scratch", "--seeds", "1"]);
    refused(&r, &["`scratch`", "--scratch"]);
    // A learned β of 0.01 (an f32) prints as 0.01.
    let learned = d.join("learned.safetensors");
    let mut l = base.clone();
    l.cfg.learn_lr = true;
    l.cfg.inner_lr = 0.01f32 as f64;
    l.inner_lr = 0.01;
    save_model(&l, &learned).unwrap();
    let r = eval(&["--model", &spec("l", &learned), "--seeds", "1"]);
    ok(&r);
    assert!(stdout(&r).contains("| l | 0.01 |"), "{}", stdout(&r));
}

/// F5: a network too large for the memory is refused before anything is
/// allocated, with the estimate, the limit and the flags to lower (and
/// widths whose parameter count overflows `usize` are estimated too).
#[test]
fn f5_too_wide_a_network_is_refused_with_its_memory() {
    let d = dir("f5");
    let out = d.join("m.safetensors");
    for (width, layers) in [("100000", "1"), ("4294967296", "2")] {
        let r = Command::new(bin())
            .env("NEUROPLASTIC_MEMORY_LIMIT", "1G")
            .args(["train", "oml-sine", "--steps", "1", "--fns-per-traj", "1", "--steps-per-fn", "1"])
            .args(["--width", width, "--rln-layers", layers, "--out", s(&out)])
            .output()
            .unwrap();
        refused(
            &r,
            &[
                &format!("--width {width} --rln-layers {layers}"),
                "needs",
                "NEUROPLASTIC_MEMORY_LIMIT=1G",
                "lower --width",
            ],
        );
    }
    // Long trajectories are the activations' fault, not the width's.
    let r = Command::new(bin())
        .env("NEUROPLASTIC_MEMORY_LIMIT", "64M")
        .args(["train", "oml-sine", "--steps", "1", "--width", "64", "--rln-layers", "1"])
        .args(["--fns-per-traj", "10", "--steps-per-fn", "100000", "--out", s(&out)])
        .output()
        .unwrap();
    refused(&r, &["--steps-per-fn 100000", "differentiated", "--truncate"]);
    assert!(!out.exists());
    // A small run fits a small limit.
    let r = Command::new(bin())
        .env("NEUROPLASTIC_MEMORY_LIMIT", "64M")
        .args(["train", "oml-sine"])
        .args(TINY)
        .args(["--steps", "1", "--out", s(&out)])
        .output()
        .unwrap();
    ok(&r);
}
