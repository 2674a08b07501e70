//! What broke when the crate was used as a hostile but realistic user would:
//! an output path equal to an input, sizes that would abort the process in
//! the allocator, files that differ from run to run, runs that train nothing,
//! overflow reported under names the user never gave, no progress without a
//! terminal, a learning curve of four points, killed runs. Each test failed
//! before its fix.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use neuroplastic::io::{TensorFile, save_episode, save_gradients, save_model};
use neuroplastic::tasks::{Net, PatternTask};
use neuroplastic::train::{OptimConfig, TrainCheckpoint, TrainConfig, Trainer};
use neuroplastic::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_neuroplastic"));
    // The machine's own memory must not decide these tests.
    c.env_remove(limits::ENV_LIMIT);
    c
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hardening").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A clean failure: exit status 1 (not an abort's 134 or a panic's 101).
fn fails_cleanly(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "expected a clean error:\n{}", text(o));
    let e = stderr(o);
    assert!(!e.contains("panicked") && !e.contains("memory allocation"), "{e}");
    e
}

fn assert_names(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in: {msg}");
    }
}

/// A small Hebbian model (identity activation when `identity`, tanh else) and an episode.
fn hebb(identity: bool, w_scale: f32, input: f32, steps: usize) -> (Model, Episode) {
    let n = 4;
    let mut cfg = LayerConfig { input_map: InputMap::Direct, ..LayerConfig::recurrent(Rule::Hebb, n, n) };
    if identity {
        cfg.activation = Activation::Identity;
    }
    let mut p = Params::<f32>::zeros(&cfg);
    for j in 0..n {
        p.w[j * n + j] = w_scale;
    }
    p.alpha.iter_mut().for_each(|a| *a = 0.01);
    p.eta[0] = 0.1;
    let model = Model { cfg, params: p, head: None };
    let b = 2;
    let ep = Episode {
        batch: b,
        steps,
        // `input` at step 0 of every episode, small values after.
        inputs: (0..b * steps * n).map(|k| if (k / n) % steps == 0 { input } else { 0.1 * (k % 3) as f32 }).collect(),
        targets: vec![0.5; b * steps * n],
        mask: vec![1.0; b * steps],
        init: None,
    };
    (model, ep)
}

fn grad(m: &Path, e: &Path, out: &Path) -> Output {
    bin()
        .args([
            "grad",
            "--model",
            m.to_str().unwrap(),
            "--episode",
            e.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

#[test]
fn grad_refuses_an_output_that_is_one_of_its_inputs() {
    let d = dir("same");
    let (model, ep) = hebb(false, 0.5, 1.0, 5);
    let (m, e) = (d.join("m.safetensors"), d.join("e.safetensors"));
    save_model(&model, &m).unwrap();
    save_episode(&ep, &model, &e).unwrap();
    let before = std::fs::read(&m).unwrap();
    std::fs::create_dir_all(d.join("sub")).unwrap();
    let mut aliases = vec![m.clone(), d.join("sub").join("..").join("m.safetensors"), e.clone()];
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&m, d.join("link.safetensors")).unwrap();
        std::fs::hard_link(&m, d.join("hard.safetensors")).unwrap();
        aliases.push(d.join("link.safetensors"));
        aliases.push(d.join("hard.safetensors"));
    }
    for out in &aliases {
        let o = grad(&m, &e, out);
        let msg = fails_cleanly(&o);
        assert_names(&msg, &["--out", "would replace that input"]);
        assert!(msg.contains("--model") || msg.contains("--episode"), "{msg}");
        assert!(o.stdout.is_empty(), "nothing computed: {}", text(&o));
    }
    assert_eq!(std::fs::read(&m).unwrap(), before, "the model file was changed");
    // Another path is fine.
    let o = grad(&m, &e, &d.join("g.safetensors"));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn grad_writes_the_same_bytes_every_time() {
    let d = dir("bytes");
    let (model, ep) = hebb(false, 0.5, 1.0, 5);
    let (m, e) = (d.join("m.safetensors"), d.join("e.safetensors"));
    save_model(&model, &m).unwrap();
    save_episode(&ep, &model, &e).unwrap();
    let first = d.join("g0.safetensors");
    assert!(grad(&m, &e, &first).status.success());
    let want = std::fs::read(&first).unwrap();
    for k in 1..4 {
        let g = d.join(format!("g{k}.safetensors"));
        assert!(grad(&m, &e, &g).status.success());
        assert!(std::fs::read(&g).unwrap() == want, "run {k} wrote other bytes than run 0");
    }
    // In one process too: every save of the same gradients gives the same bytes,
    // with the metadata keys in sorted order.
    let mut engine = Engine::new(model.cfg, Device::Cpu, Options::default()).unwrap();
    let g = model.loss_and_grad(&mut engine, &ep).unwrap();
    let mut files = Vec::new();
    for k in 0..16 {
        let p = d.join(format!("lib{k}.safetensors"));
        save_gradients(&p, g.loss, &g, &model).unwrap();
        files.push(std::fs::read(&p).unwrap());
    }
    assert!(files.iter().all(|f| *f == files[0]), "saves of equal gradients differ");
    let n = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&files[0][8..8 + n]).unwrap();
    let keys: Vec<usize> = ["neuroplastic.activation", "neuroplastic.alpha", "neuroplastic.eta", "neuroplastic.rule"]
        .iter()
        .map(|k| header.find(k).unwrap_or_else(|| panic!("{k} not in {header}")))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "metadata keys not sorted: {header}");
    // And the file still reads back.
    assert!(TensorFile::parse(&files[0], "g").is_ok());
}

#[test]
fn sizes_that_would_abort_in_the_allocator_are_refused_up_front() {
    let d = dir("sizes");
    let out = d.join("r");
    // 10^12 weights: 7.3 TiB each for w and alpha, on any machine.
    let o =
        bin().args(["train", "pattern", "--bits", "1000000", "--episodes", "1", "--out"]).arg(&out).output().unwrap();
    let e = fails_cleanly(&o);
    assert_names(&e, &["--bits 1000000", "TiB", "N = 1000000", "lower --bits"]);
    // A batch of 10^5 episodes of 1000 bits: 42 GB of inputs alone; with an 8 GiB limit.
    let o = bin()
        .env(limits::ENV_LIMIT, "8G")
        .args(["train", "pattern", "--bits", "1000", "--batch", "100000", "--episodes", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let e = fails_cleanly(&o);
    assert_names(&e, &["--batch 100000", "GiB", "8.0 GiB", "NEUROPLASTIC_MEMORY_LIMIT=8G", "lower --batch"]);
    // Nothing was written.
    assert!(!out.join("checkpoint.safetensors").exists());
    // An episode length that overflows usize is an error too, not a wrap-around.
    let o = bin()
        .args(["train", "pattern", "--cycles", "18446744073709551615", "--patterns", "2", "--episodes", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_names(&fails_cleanly(&o), &["cycles", "does not fit"]);

    // bench: --N of a workload, in the child process it runs.
    let o = bin().args(["bench", "--workload", "plastic", "--N", "100000", "--min-seconds", "0"]).output().unwrap();
    assert_names(&fails_cleanly(&o), &["--N 100000 --B 32 --T 100", "the plastic workload", "lower --N"]);

    // grad: a small episode file whose batch needs far more traces than the limit.
    let (model, _) = hebb(false, 0.5, 1.0, 5);
    let mut big = model.clone();
    big.cfg.n = 64;
    big.cfg.inputs = 64;
    big.params = Params::zeros(&big.cfg);
    big.params.eta[0] = 0.1;
    let (b, t) = (16, 40);
    let ep = Episode {
        batch: b,
        steps: t,
        inputs: vec![0.1; b * t * 64],
        targets: vec![0.0; b * t * 64],
        mask: vec![1.0; b * t],
        init: None,
    };
    let (m, e) = (d.join("m.safetensors"), d.join("e.safetensors"));
    save_model(&big, &m).unwrap();
    save_episode(&ep, &big, &e).unwrap();
    let o = bin()
        .env(limits::ENV_LIMIT, "2M")
        .args(["grad", "--model", m.to_str().unwrap(), "--episode", e.to_str().unwrap(), "--out"])
        .arg(d.join("g.safetensors"))
        .output()
        .unwrap();
    let msg = fails_cleanly(&o);
    assert_names(&msg, &["--episode", "e.safetensors", "B = 16", "split the episode file", "2.0 MiB"]);
    assert!(!d.join("g.safetensors").exists());
    // The same files pass without the limit.
    let o = grad(&m, &e, &d.join("g.safetensors"));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn the_library_returns_errors_instead_of_aborting() {
    // A model of 10^12 weights.
    let task = PatternTask { bits: 1_000_000, ..PatternTask::default() };
    match task.model(Net::Plastic, 0.01, 0.01, 0) {
        Err(Error::Memory { arg, needed, .. }) => {
            assert!(arg.contains("bits = 1000000"), "{arg}");
            assert!(needed >= 8_000_000_000_000);
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a model of 10^12 weights was built"),
    }
    // A trainer whose batch cannot be held (10^8 episodes of 1000 bits: 42 TB of inputs).
    let task = PatternTask::default();
    let (m, frozen) = task.model(Net::Plastic, 0.01, 0.01, 0).unwrap();
    let mut optim = OptimConfig::adam(1e-3);
    optim.frozen = frozen;
    let cfg = TrainConfig { seed: 0, batch: 100_000_000, eval_every: 0, eval_episodes: 1, optim };
    let engine = Engine::new(m.cfg, Device::Cpu, Options::default()).unwrap();
    match Trainer::new(task, m, engine, cfg) {
        Err(Error::Memory { arg, message, .. }) => {
            assert!(arg.contains("batch = 100000000"), "{arg}");
            assert!(message.contains("smaller batch"), "{message}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("accepted"),
    }
    // The engine: 10^7 episodes of one step through a 1000-neuron layer with a
    // single input (40 MB of inputs, hundreds of GB of traces and per-step vectors).
    let cfg = LayerConfig::feed_forward(Rule::Hebb, 1, 1000);
    let params = Params::<f32>::zeros(&cfg);
    let b = 10_000_000;
    let inputs = vec![0.0f32; b];
    let mut engine = Engine::new(cfg, Device::Cpu, Options::default()).unwrap();
    match engine.forward(&params, Seq::new(&inputs, b, 1), None) {
        Err(e @ Error::Memory { .. }) => {
            assert_names(&e.to_string(), &["inputs (B = 10000000, T = 1)", "fewer episodes"])
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

fn train(args: &[&str]) -> Output {
    bin().args(["train", "pattern"]).args(args).output().unwrap()
}

const SMALL: [&str; 12] =
    ["--bits", "12", "--patterns", "2", "--cycles", "1", "--show", "2", "--blank", "1", "--test", "2"];

fn small(extra: &[&str]) -> Vec<String> {
    SMALL.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run(args: &[String]) -> Output {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    train(&a)
}

#[test]
fn runs_that_would_train_nothing_say_so() {
    let d = dir("nothing");
    let out = d.join("r");
    let o = out.to_str().unwrap();
    let e = fails_cleanly(&run(&small(&["--episodes", "0", "--out", o])));
    assert_names(&e, &["--episodes 0", "at least one update"]);
    assert!(!out.exists(), "a refused run created its folder");
    let o2 = run(&small(&["--episodes", "4", "--eval-every", "0", "--quiet", "--out", o]));
    assert!(o2.status.success(), "{}", text(&o2));
    let ck = out.join("checkpoint.safetensors");
    let ck_s = ck.to_str().unwrap();
    for n in ["4", "2"] {
        let e = fails_cleanly(&train(&["--resume", ck_s, "--episodes", n, "--out", o]));
        assert_names(&e, &["nothing to train", "has done 4 updates", &format!("--episodes {n}"), "larger --episodes"]);
    }
    assert_eq!(TrainCheckpoint::read(&ck).unwrap().step, 4);
    // Resuming into another run's folder would overwrite that run.
    let other = d.join("other");
    let o3 = run(&small(&[
        "--episodes",
        "2",
        "--eval-every",
        "0",
        "--quiet",
        "--seed",
        "5",
        "--out",
        other.to_str().unwrap(),
    ]));
    assert!(o3.status.success(), "{}", text(&o3));
    let before = std::fs::read(other.join("checkpoint.safetensors")).unwrap();
    let e = fails_cleanly(&train(&["--resume", ck_s, "--episodes", "6", "--out", other.to_str().unwrap()]));
    assert_names(&e, &["another run's checkpoint", "--resume"]);
    assert_eq!(std::fs::read(other.join("checkpoint.safetensors")).unwrap(), before);
}

#[test]
fn overflow_is_reported_in_the_users_terms() {
    let d = dir("overflow");
    // Identity activation, recurrent gain 1e4: the state grows 10^4 per step and leaves f32 within 10 steps.
    let (model, ep) = hebb(true, 1e4, 1.0, 20);
    let (m, e) = (d.join("m.safetensors"), d.join("e.safetensors"));
    save_model(&model, &m).unwrap();
    save_episode(&ep, &model, &e).unwrap();
    let msg = fails_cleanly(&grad(&m, &e, &d.join("g.safetensors")));
    assert_names(
        &msg,
        &[
            "m.safetensors on",
            "e.safetensors",
            "pre-activation",
            "(episode 0, step ",
            "f32 range",
            "identity activation",
        ],
    );
    assert!(!msg.contains("dy:"), "{msg}");
    assert!(!d.join("g.safetensors").exists());

    // A finite loss whose gradient overflows: a huge state read out through a tiny head.
    // y = 1e30 at step 0, ŷ = 4 · 1e-20 · 1e30 = 4e10, L ≈ 1.6e21 (finite), dL/dW_o = dL/dŷ · y ≈ 8e40.
    let n = 4;
    let mut cfg = LayerConfig { input_map: InputMap::Direct, ..LayerConfig::recurrent(Rule::Hebb, n, n) };
    cfg.activation = Activation::Identity;
    let mut p = Params::<f32>::zeros(&cfg);
    p.eta[0] = 0.1;
    let model = Model { cfg, params: p, head: Some(Head { weight: vec![1e-20; n], bias: vec![0.0] }) };
    let ep = Episode { batch: 1, steps: 1, inputs: vec![1e30; n], targets: vec![0.0], mask: vec![1.0], init: None };
    let mut engine = Engine::new(cfg, Device::Cpu, Options::default()).unwrap();
    let err = model.loss_and_grad(&mut engine, &ep).unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }), "{err}");
    assert_names(&err.to_string(), &["gradient of `head.out.weight`", "f32 range", "(loss 1.", "e21)"]);
    save_model(&model, &m).unwrap();
    save_episode(&ep, &model, &e).unwrap();
    let msg = fails_cleanly(&grad(&m, &e, &d.join("g.safetensors")));
    assert_names(&msg, &["gradient of `head.out.weight`"]);
    assert!(!d.join("g.safetensors").exists(), "gradients with ∞ were written");
}

#[test]
fn training_without_a_terminal_prints_progress_and_plots_every_block() {
    let d = dir("progress");
    let out = d.join("r");
    // stderr is a pipe here, as in CI or nohup.
    let o = run(&small(&[
        "--episodes",
        "60",
        "--eval-every",
        "0",
        "--progress-every",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let e = stderr(&o);
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("progress: update ")).collect();
    assert!(lines.len() >= 50, "{} progress lines:\n{e}", lines.len());
    assert!(lines.last().unwrap().contains("/60") && lines.last().unwrap().contains("updates/s"), "{e}");
    // The curve: a training line with a point per block of updates, evaluations as markers.
    let svg = std::fs::read_to_string(out.join("curve.svg")).unwrap();
    let longest = svg
        .split("<polyline")
        .skip(1)
        .map(|p| p.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split_whitespace().count())
        .max()
        .unwrap();
    assert!(longest >= 50, "the training line has {longest} points");
    // Two evaluations (start and end) in each of the two panels, plus the legend's.
    assert!(svg.matches("<circle").count() >= 4, "{svg}");
    // Quiet stays quiet.
    let out2 = d.join("q");
    let o = run(&small(&["--episodes", "20", "--progress-every", "0", "--quiet", "--out", out2.to_str().unwrap()]));
    assert!(o.status.success() && !stderr(&o).contains("progress:"), "{}", text(&o));
}

#[test]
fn killed_runs_leave_a_checkpoint_that_resumes() {
    let d = dir("killed");
    let mut resumed = 0;
    for (k, wait_ms) in [60u64, 150, 300].into_iter().enumerate() {
        let out = d.join(format!("r{k}"));
        let o = out.to_str().unwrap();
        let args =
            small(&["--episodes", "100000", "--checkpoint-every", "1", "--eval-every", "0", "--quiet", "--out", o]);
        let mut child =
            bin().args(["train", "pattern"]).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let ck = out.join("checkpoint.safetensors");
        if !ck.exists() {
            continue; // killed before the first checkpoint: nothing to resume, nothing torn
        }
        let step = TrainCheckpoint::read(&ck).unwrap_or_else(|e| panic!("kill {k}: torn checkpoint: {e}")).step;
        let r =
            train(&["--resume", ck.to_str().unwrap(), "--episodes", &(step + 2).to_string(), "--quiet", "--out", o]);
        assert!(r.status.success(), "kill {k}: {}", text(&r));
        assert_eq!(TrainCheckpoint::read(&ck).unwrap().step, step + 2);
        resumed += 1;
    }
    // Updates take about a millisecond here: most kills come after a checkpoint.
    assert!(resumed >= 1, "no run lived long enough to write a checkpoint");
}

#[test]
fn errors_name_the_flags_the_user_gave() {
    let d = dir("flags");
    let o = d.join("r");
    let o = o.to_str().unwrap();
    for (args, needles) in [
        (vec!["--threads", "0"], vec!["--threads must be at least 1"]),
        (vec!["--init-std=-1"], vec!["--init-std = -1"]),
        (vec!["--eval-episodes", "0"], vec!["--eval-episodes must be at least 1"]),
        (vec!["--eta", "2"], vec!["--eta = 2"]),
        (vec!["--lr-decay", "0"], vec!["--lr-decay = 0"]),
        (vec!["--clip-norm=-3"], vec!["--clip-norm = -3"]),
    ] {
        let mut a = small(&["--episodes", "1", "--out", o]);
        a.extend(args.iter().map(|s| s.to_string()));
        assert_names(&fails_cleanly(&run(&a)), &needles);
    }
    let (model, ep) = hebb(false, 0.5, 1.0, 5);
    let (m, e) = (d.join("m.safetensors"), d.join("e.safetensors"));
    save_model(&model, &m).unwrap();
    save_episode(&ep, &model, &e).unwrap();
    let out = bin()
        .args(["grad", "--threads", "0", "--model", m.to_str().unwrap(), "--episode", e.to_str().unwrap(), "--out"])
        .arg(d.join("g.safetensors"))
        .output()
        .unwrap();
    assert_names(&fails_cleanly(&out), &["--threads 0"]);
}

#[test]
fn absurd_settings_in_a_checkpoint_are_refused_before_allocating() {
    let d = dir("ckmeta");
    let out = d.join("r");
    let o = run(&small(&["--episodes", "2", "--eval-every", "0", "--quiet", "--out", out.to_str().unwrap()]));
    assert!(o.status.success(), "{}", text(&o));
    let ck = TensorFile::read(out.join("checkpoint.safetensors")).unwrap();
    for (key, from, to, needles) in [
        (
            "neuroplastic.task.config",
            "\"bits\":12",
            "\"bits\":1000000000000",
            vec!["task", "1000000000000 bits", "N = 12"],
        ),
        (
            "neuroplastic.train",
            "\"batch\":1,",
            "\"batch\":100000000000,",
            vec!["batch = 100000000000", "smaller batch"],
        ),
    ] {
        let mut f = ck.clone();
        let v = f.metadata.get_mut(key).unwrap();
        assert!(v.contains(from), "{v}");
        *v = v.replace(from, to);
        let p = d.join("bad.safetensors");
        f.write(&p).unwrap();
        // Resumed into a fresh folder: the error must come before any episode is drawn.
        let fresh = d.join("fresh");
        let e = fails_cleanly(&train(&[
            "--resume",
            p.to_str().unwrap(),
            "--episodes",
            "5",
            "--out",
            fresh.to_str().unwrap(),
        ]));
        assert_names(&e, &needles);
        assert!(e.contains("bad.safetensors"), "{e}");
    }
}
