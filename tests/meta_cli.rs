//! `neuroplastic meta-grad`: agreement with PyTorch (`create_graph=True`)
//! through `examples/python/meta_check.py` when a Python with torch is
//! available, and clear errors on bad files.
//!
//! The interpreter is `$NEUROPLASTIC_PYTHON` if set, else `python3` on PATH;
//! without torch, numpy and safetensors there the check prints why it skips.

mod meta_support;

use std::path::PathBuf;
use std::process::Command;

use meta_support::{Case, random};
use neuroplastic::meta::cpu;
use neuroplastic::meta::io::{load_grads, save_model, save_trajectory};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neuroplastic")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("neuroplastic-meta-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn case() -> Case {
    Case { learn_lr: true, nm: true, gate_at: 1, ..Case::oml(3, 4, 2, 3) }
}

#[test]
fn meta_check_py_agrees_with_pytorch() {
    let py = std::env::var("NEUROPLASTIC_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&py).args(["-c", "import torch, numpy, safetensors"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => {
            eprintln!("skipping: `{py}` cannot import torch, numpy and safetensors (set NEUROPLASTIC_PYTHON)");
            return;
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/meta_check.py");
    let out = Command::new(&py).args([script, "--bin", bin()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "meta_check.py found a mismatch:\n{text}");
    assert!(text.contains("all configurations agree"), "{text}");
}

#[test]
fn meta_grad_cli_writes_the_cpu_gradient() {
    let (m, t) = random(&case(), 5);
    let (m, t) = (m.cast::<f32>(), t.cast::<f32>());
    let (mp, tp, gp) = (tmp("m.safetensors"), tmp("t.safetensors"), tmp("g.safetensors"));
    save_model(&m, &mp).unwrap();
    save_trajectory(&t, &m, &tp).unwrap();
    let o = Command::new(bin())
        .args(["meta-grad", "--model", mp.to_str().unwrap(), "--trajectory", tp.to_str().unwrap()])
        .args(["--out", gp.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = load_grads(&gp, &m).unwrap();
    let mut want = cpu::meta_grad(&m, &t).unwrap();
    want.loss = want.loss as f32 as f64;
    assert_eq!(got, want);
}

#[test]
fn meta_grad_cli_names_the_bad_tensor() {
    let (m, t) = random(&case(), 6);
    let (m, t) = (m.cast::<f32>(), t.cast::<f32>());
    let (mp, tp, gp) = (tmp("bm.safetensors"), tmp("bt.safetensors"), tmp("bg.safetensors"));
    save_model(&m, &mp).unwrap();
    let run = |tp: &PathBuf| {
        let o = Command::new(bin())
            .args(["meta-grad", "--model", mp.to_str().unwrap(), "--trajectory", tp.to_str().unwrap()])
            .args(["--out", gp.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    // outer.y with the wrong number of columns.
    let mut bad = t.clone();
    bad.ycols = 1;
    bad.outer_y.truncate(bad.p * bad.bo);
    bad.inner_y.truncate(bad.p * bad.s * bad.bi);
    let mut f = neuroplastic::io::TensorFile::new();
    f.put_f32("inner.x", &[t.p, t.s, t.bi, t.d], t.inner_x.clone());
    f.put_f32("outer.x", &[t.p, t.bo, t.d], t.outer_x.clone());
    f.put_f32("inner.y", &[t.p, t.s, t.bi, 2], t.inner_y.clone());
    f.put_f32("outer.y", &[t.p, t.bo, 1], bad.outer_y.clone());
    f.write(&tp).unwrap();
    let e = run(&tp);
    assert!(e.contains("outer.y") && e.contains("bt.safetensors") && e.contains("expected shape"), "{e}");
    // A trajectory with a missing tensor.
    let mut f = neuroplastic::io::TensorFile::new();
    f.put_f32("inner.x", &[t.p, t.s, t.bi, t.d], t.inner_x.clone());
    f.write(&tp).unwrap();
    let e = run(&tp);
    assert!(e.contains("missing required tensor `outer.x`"), "{e}");
    // A model whose NM does not fit the gated layer.
    let mut f = neuroplastic::io::TensorFile::read(&mp).unwrap();
    f.put_f32("nm.1.weight", &[2, m.nm.dims[1].0], vec![0.0; 2 * m.nm.dims[1].0]);
    f.put_f32("nm.1.bias", &[2], vec![0.0; 2]);
    f.write(&mp).unwrap();
    save_trajectory(&t, &m, &tp).unwrap();
    let e = run(&tp);
    assert!(e.contains("nm.1.weight") && e.contains("gate values"), "{e}");
}
