//! The `neuroplastic grad` and `gradcheck` subcommands, run as a user runs
//! them: the built binary on files in a temporary folder.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use neuroplastic::io::{TensorFile, load_gradients, put_model, save_episode, save_model};
use neuroplastic::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_neuroplastic"))
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli_grad").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32
    }
    fn fill(&mut self, v: &mut [f32], scale: f32) {
        v.iter_mut().for_each(|x| *x = scale * self.next());
    }
}

/// A retroactive model with every optional tensor (the richest file), or a
/// Hebbian one with direct input and no head.
fn problem(rich: bool) -> (Model, Episode) {
    let n = 6;
    let mut cfg = if rich {
        let mut c = LayerConfig::recurrent(Rule::Retroactive, n, 4);
        c.bias = true;
        c.alpha = AlphaShape::Neuron;
        c.clip = 0.7;
        c.modulator =
            ModulatorConfig { k: 2, activation: ModActivation::Sigmoid, bias: true, fanout: true, fanout_bias: true };
        c
    } else {
        LayerConfig { input_map: InputMap::Direct, ..LayerConfig::recurrent(Rule::Hebb, n, n) }
    };
    cfg.alpha = if rich { AlphaShape::Neuron } else { AlphaShape::Connection };
    let mut r = Lcg(if rich { 1 } else { 2 });
    let mut params = Params::<f32>::zeros(&cfg);
    for (_, v) in params.named_mut() {
        r.fill(v, 0.5);
    }
    params.eta.iter_mut().for_each(|e| *e = 0.3);
    params.eta_e.iter_mut().for_each(|e| *e = 0.4);
    let head = rich.then(|| {
        let mut h = Head { weight: vec![0.0; 3 * n], bias: vec![0.0; 3] };
        r.fill(&mut h.weight, 0.4);
        r.fill(&mut h.bias, 0.1);
        h
    });
    let model = Model { cfg, params, head };
    let (b, t) = (3, 7);
    let mut inputs = vec![0.0; b * t * cfg.inputs];
    let mut targets = vec![0.0; b * t * model.outputs()];
    r.fill(&mut inputs, 1.0);
    r.fill(&mut targets, 0.5);
    let mask = (0..b * t).map(|k| if k % 4 == 0 { 0.0 } else { 1.0 }).collect();
    let init = rich.then(|| {
        let mut s = State::<f32>::zeros(&cfg, b);
        r.fill(&mut s.h, 0.3);
        r.fill(&mut s.hebb, 0.3);
        r.fill(&mut s.elig, 0.3);
        s
    });
    (model, Episode { batch: b, steps: t, inputs, targets, mask, init })
}

fn grad(model: &Path, episode: &Path, out: &Path, device: &str) -> Output {
    bin()
        .args(["grad", "--model"])
        .arg(model)
        .arg("--episode")
        .arg(episode)
        .arg("--out")
        .arg(out)
        .args(["--device", device])
        .output()
        .unwrap()
}

/// Largest |a − b| over the tensor, relative to the tensor's largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-12f64, |m, &x| m.max((x as f64).abs()));
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs() / scale).fold(0.0, f64::max)
}

#[test]
fn grad_writes_the_gradients_of_the_reference_engine() {
    for rich in [true, false] {
        let d = dir(if rich { "rich" } else { "plain" });
        let (model, ep) = problem(rich);
        let (mp, ep_path) = (d.join("m.safetensors"), d.join("e.safetensors"));
        save_model(&model, &mp).unwrap();
        save_episode(&ep, &model, &ep_path).unwrap();
        let mut eng = Engine::new(model.cfg, Device::Reference, Options::default()).unwrap();
        let want = model.loss_and_grad(&mut eng, &ep).unwrap();
        assert!(want.loss > 0.1, "a loss worth checking: {}", want.loss);
        // The reference device must agree to f32 rounding; the CPU backend to f32 accumulation.
        for (device, tol) in [("reference", 1e-6), ("cpu", 1e-3)] {
            let gp = d.join(format!("g-{device}.safetensors"));
            let out = grad(&mp, &ep_path, &gp, device);
            assert!(out.status.success(), "{}", text(&out));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let printed: f64 = stdout
                .lines()
                .find_map(|l| l.strip_prefix("loss = "))
                .unwrap_or_else(|| panic!("no `loss = ` line: {}", text(&out)))
                .trim()
                .parse()
                .unwrap();
            assert!((printed - want.loss).abs() <= tol * want.loss, "{device}: loss {printed} vs {}", want.loss);
            let got = load_gradients(&gp, &model).unwrap();
            assert!((got.loss - want.loss).abs() <= 1e-6 * want.loss + tol * want.loss);
            for ((name, g), (_, w)) in got.layer.params.named().into_iter().zip(want.layer.params.named()) {
                assert_eq!(g.len(), w.len(), "{name}");
                if !w.is_empty() {
                    let e = rel_err(g, w);
                    assert!(e <= tol, "{device} rich={rich}: {name} err {e}");
                }
            }
            match (&got.head, &want.head) {
                (Some(g), Some(w)) => {
                    assert!(rel_err(&g.weight, &w.weight) <= tol, "{device}: head.out.weight");
                    assert!(rel_err(&g.bias, &w.bias) <= tol, "{device}: head.out.bias");
                }
                (None, None) => {}
                _ => panic!("head gradients present in one file only"),
            }
        }
    }
}

#[test]
fn grad_rejects_bad_files_naming_the_tensor() {
    let d = dir("bad");
    let (model, ep) = problem(false);
    let (mp, ep_path, gp) = (d.join("m.safetensors"), d.join("e.safetensors"), d.join("g.safetensors"));
    save_model(&model, &mp).unwrap();
    save_episode(&ep, &model, &ep_path).unwrap();

    // A Hebbian model without its rate η.
    let mut f = TensorFile::new();
    put_model(&mut f, &model).unwrap();
    f.tensors.remove("eta");
    let bad_model = d.join("bad-model.safetensors");
    f.write(&bad_model).unwrap();
    let out = grad(&bad_model, &ep_path, &gp, "cpu");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`eta`"), "{}", text(&out));

    // An episode whose targets do not match the model's outputs.
    let mut f = TensorFile::read(&ep_path).unwrap();
    f.put_f32("targets", &[3, 7, 2], vec![0.0; 42]);
    let bad_ep = d.join("bad-episode.safetensors");
    f.write(&bad_ep).unwrap();
    let out = grad(&mp, &bad_ep, &gp, "reference");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`targets`"), "{}", text(&out));

    // A missing file names the path.
    let out = grad(&d.join("nowhere.safetensors"), &ep_path, &gp, "cpu");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere.safetensors"), "{}", text(&out));
    assert!(!gp.exists(), "no gradients file may appear after a failure");
}

#[test]
fn gradcheck_passes_on_every_backend() {
    let out = bin().args(["gradcheck", "--seed", "3", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["failed"], 0);
    let entries = doc["entries"].as_array().unwrap();
    // 4 rules × 3 α shapes × 3 variants on each of the f64 oracle, the reference and the CPU engine (and CUDA).
    for backend in ["ref-f64", "reference", "cpu"] {
        assert_eq!(entries.iter().filter(|e| e["backend"] == backend).count(), 36, "{backend}");
    }
    for e in entries {
        assert_eq!(e["pass"], true, "{e}");
        assert!(e["err"].as_f64().unwrap() <= e["tol"].as_f64().unwrap(), "{e}");
        let clipped = matches!(e["rule"].as_str(), Some("modulated" | "retroactive"));
        assert_eq!(e["clipped"].is_f64(), clipped, "{e}");
    }
    // CUDA is either checked or reported skipped with a reason.
    let skipped = doc["skipped"].as_array().unwrap();
    let cuda_rows = entries.iter().filter(|e| e["backend"].as_str().unwrap().starts_with("cuda")).count();
    assert!(cuda_rows > 0 || skipped.iter().any(|s| s["backend"] == "cuda" && s["reason"].is_string()));
    // The table form prints the skip.
    let out = bin().args(["gradcheck", "--seed", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("cuda: skipped (") || cuda_rows > 0, "{table}");
}
