//! Model, episode and gradient files: round trips, and every malformed file
//! gives an error that names the offending tensor or metadata key.
#![cfg(feature = "io")]

use std::path::PathBuf;

use neuroplastic::io::{
    Data, Tensor, TensorFile, load_episode, load_gradients, load_model, put_episode, put_model, save_episode,
    save_gradients, save_model,
};
use neuroplastic::*;

/// A small deterministic generator (values in [-1, 1)).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32
    }
    fn fill(&mut self, v: &mut [f32]) {
        v.iter_mut().for_each(|x| *x = self.next());
    }
}

/// A fresh folder for one test.
fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("io").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A model with random values; `variant` toggles input map, bias and modulator options.
fn model(rule: Rule, alpha: AlphaShape, head: bool, variant: usize, seed: u64) -> Model {
    let n = 5;
    let mut cfg = if variant.is_multiple_of(2) {
        LayerConfig::recurrent(rule, n, 3)
    } else {
        LayerConfig { input_map: InputMap::Direct, ..LayerConfig::recurrent(rule, n, n) }
    };
    cfg.alpha = alpha;
    cfg.bias = variant.is_multiple_of(2);
    cfg.activation = if variant % 3 == 2 { Activation::Identity } else { Activation::Tanh };
    cfg.eta = if variant % 2 == 1 { EtaMode::Fixed } else { EtaMode::Learned };
    cfg.clip = 0.1 + 0.2; // 0.30000000000000004: the decimal must round-trip exactly.
    cfg.modulator = ModulatorConfig {
        k: 1 + variant % 2,
        activation: ModActivation::ALL[variant % 3],
        bias: variant.is_multiple_of(2),
        fanout: variant % 2 == 1,
        fanout_bias: !variant.is_multiple_of(3),
    };
    let mut r = Lcg(seed);
    let mut params = Params::<f32>::zeros(&cfg);
    for (_, v) in params.named_mut() {
        r.fill(v);
    }
    params.eta.iter_mut().for_each(|e| *e = 0.25);
    params.eta_e.iter_mut().for_each(|e| *e = 0.75);
    let head = head.then(|| {
        let mut h = Head { weight: vec![0.0; 2 * n], bias: vec![0.0; 2] };
        r.fill(&mut h.weight);
        r.fill(&mut h.bias);
        h
    });
    let m = Model { cfg, params, head };
    m.validate(true).unwrap();
    m
}

fn episode(m: &Model, b: usize, t: usize, init: bool, seed: u64) -> Episode {
    let mut r = Lcg(seed);
    let mut inputs = vec![0.0; b * t * m.cfg.inputs];
    let mut targets = vec![0.0; b * t * m.outputs()];
    r.fill(&mut inputs);
    r.fill(&mut targets);
    let mask = (0..b * t).map(|k| (k % 3 != 0) as u8 as f32).collect();
    let init = init.then(|| {
        let mut s = State::<f32>::zeros(&m.cfg, b);
        r.fill(&mut s.h);
        r.fill(&mut s.hebb);
        r.fill(&mut s.elig);
        s
    });
    Episode { batch: b, steps: t, inputs, targets, mask, init }
}

/// `m` with the configuration fields its rule ignores set to what a file
/// gives back (the defaults of `LayerConfig::recurrent`): files hold only what matters.
fn canonical(m: &Model) -> Model {
    let mut m = m.clone();
    let d = LayerConfig::recurrent(m.cfg.rule, 1, 1);
    if !m.cfg.rule.is_modulated() {
        (m.cfg.modulator, m.cfg.clip) = (d.modulator, d.clip);
    }
    if m.cfg.rule == Rule::Modulated {
        m.cfg.eta = d.eta;
    }
    m
}

/// The file of `m` as a [`TensorFile`], to be broken by a test.
fn model_file(m: &Model) -> TensorFile {
    let mut f = TensorFile::new();
    put_model(&mut f, m).unwrap();
    f
}

/// Writes `f` and loads it as a model; returns the error message.
fn model_error(f: &TensorFile, name: &str) -> String {
    // Shared by tests running in parallel: created, never emptied; names are unique.
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("io").join("errors");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(format!("{name}.safetensors"));
    f.write(&p).unwrap();
    match load_model(&p) {
        Ok(m) => panic!("{name}: loaded a malformed model: {m:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "error message does not name {n}: {msg}");
    }
}

#[test]
fn models_round_trip_for_every_rule_alpha_shape_and_head() {
    let d = dir("models");
    let mut count = 0;
    for rule in Rule::ALL {
        for alpha in AlphaShape::ALL {
            for head in [false, true] {
                for variant in 0..3 {
                    let m = model(rule, alpha, head, variant, count as u64 + 1);
                    let p = d.join(format!("m{count}.safetensors"));
                    save_model(&m, &p).unwrap();
                    let back = load_model(&p).unwrap();
                    assert_eq!(back, canonical(&m), "{rule:?} {alpha:?} head {head} variant {variant}");
                    count += 1;
                }
            }
        }
    }
    // Atomic writes leave no temporary files behind.
    let names: Vec<String> =
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), count, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".safetensors") && !n.starts_with('.')), "{names:?}");
}

#[test]
fn feed_forward_models_and_episodes_round_trip() {
    let d = dir("feedforward");
    for rule in Rule::ALL {
        let mut cfg = LayerConfig::feed_forward(rule, 4, 3);
        cfg.alpha = AlphaShape::Neuron;
        cfg.clip = 2.0;
        let mut params = Params::<f32>::zeros(&cfg);
        let mut r = Lcg(3);
        for (_, v) in params.named_mut() {
            r.fill(v);
        }
        params.eta.iter_mut().for_each(|e| *e = 0.5);
        params.eta_e.iter_mut().for_each(|e| *e = 0.5);
        let m = Model { cfg, params, head: None };
        save_model(&m, d.join("m.safetensors")).unwrap();
        let back = load_model(d.join("m.safetensors")).unwrap();
        assert_eq!(back, canonical(&m));
        assert_eq!(back.cfg.topology, Topology::FeedForward);
        let ep = episode(&m, 2, 3, true, 9);
        assert!(ep.init.as_ref().unwrap().h.is_empty());
        save_episode(&ep, &m, d.join("e.safetensors")).unwrap();
        assert_eq!(load_episode(d.join("e.safetensors"), &m).unwrap(), ep);
    }
}

#[test]
fn a_model_written_by_hand_gets_the_documented_defaults() {
    // Only what `docs/design.md` §5 requires: rule, clip (clipped rules), tensors.
    let mut f = TensorFile::new();
    let n = 4;
    f.put_f32("w", &[n, n], vec![0.1; n * n]);
    f.put_f32("alpha", &[], vec![0.2]); // a 0-d scalar, as numpy/PyTorch write it
    f.put_f32("eta_e", &[1], vec![0.3]);
    f.put_f32("mod.v", &[2, n], vec![0.4; 2 * n]);
    f.metadata.insert("neuroplastic.rule".into(), "retroactive".into());
    f.metadata.insert("neuroplastic.clip".into(), "2".into());
    f.metadata.insert("format".into(), "pt".into()); // foreign keys are ignored
    let p = dir("defaults").join("m.safetensors");
    f.write(&p).unwrap();
    let m = load_model(&p).unwrap();
    let c = m.cfg;
    assert_eq!(
        (c.topology, c.input_map, c.inputs, c.alpha, c.activation, c.eta, c.bias),
        (Topology::Recurrent, InputMap::Direct, n, AlphaShape::Scalar, Activation::Tanh, EtaMode::Learned, false)
    );
    assert_eq!(c.clip, 2.0);
    assert_eq!(
        c.modulator,
        ModulatorConfig { k: 2, activation: ModActivation::Tanh, bias: false, fanout: false, fanout_bias: false }
    );
    assert!(m.head.is_none());
    assert_eq!(m.params.alpha, vec![0.2]);
    // Shape (N,) means per neuron when the key is absent.
    let mut f2 = model_file(&model(Rule::Hebb, AlphaShape::Neuron, false, 0, 5));
    f2.metadata.remove("neuroplastic.alpha");
    let p2 = dir("defaults").join("m2.safetensors");
    f2.write(&p2).unwrap();
    assert_eq!(load_model(&p2).unwrap().cfg.alpha, AlphaShape::Neuron);
}

#[test]
fn episodes_round_trip_with_and_without_initial_state() {
    let d = dir("episodes");
    for rule in Rule::ALL {
        for head in [false, true] {
            let m = model(rule, AlphaShape::Connection, head, 0, 11);
            for init in [false, true] {
                let ep = episode(&m, 3, 4, init, 5);
                let p = d.join(format!("{}-{head}-{init}.safetensors", rule.name()));
                save_episode(&ep, &m, &p).unwrap();
                assert_eq!(load_episode(&p, &m).unwrap(), ep, "{rule:?} head {head} init {init}");
            }
        }
    }
}

#[test]
fn a_partial_initial_state_is_completed_with_zeros() {
    let m = model(Rule::Retroactive, AlphaShape::Scalar, false, 1, 2);
    let ep = episode(&m, 2, 3, true, 4);
    let mut f = TensorFile::new();
    put_episode(&mut f, &ep, &m).unwrap();
    f.tensors.remove("h0");
    f.tensors.remove("elig0");
    let p = dir("partial").join("e.safetensors");
    f.write(&p).unwrap();
    let back = load_episode(&p, &m).unwrap();
    let s = back.init.unwrap();
    assert_eq!(s.hebb, ep.init.as_ref().unwrap().hebb);
    assert_eq!(s.h, vec![0.0; 2 * 5]);
    assert_eq!(s.elig, vec![0.0; 2 * 5 * 5]);
}

#[test]
fn gradient_files_round_trip_and_hold_one_tensor_per_parameter() {
    let d = dir("grads");
    for rule in Rule::ALL {
        for head in [false, true] {
            let m = model(rule, AlphaShape::Neuron, head, 1, 21);
            let ep = episode(&m, 2, 4, true, 22);
            let mut eng = Engine::new(m.cfg, Device::Reference, Options::default()).unwrap();
            let g = m.loss_and_grad(&mut eng, &ep).unwrap();
            let p = d.join(format!("{}-{head}.safetensors", rule.name()));
            save_gradients(&p, g.loss, &g, &m).unwrap();
            let back = load_gradients(&p, &m).unwrap();
            assert_eq!(back.loss, g.loss as f32 as f64);
            assert_eq!(back.layer.params, g.layer.params);
            assert_eq!(back.head, g.head);
            // Exactly `loss` plus the parameters the model has, under their file names.
            let f = TensorFile::read(&p).unwrap();
            let mut want: Vec<String> = vec!["loss".into()];
            for ((name, v), _) in m.params.named().into_iter().zip(0..) {
                if !v.is_empty() {
                    want.push(name.into());
                }
            }
            if head {
                want.extend(["head.out.weight".into(), "head.out.bias".into()]);
            }
            want.sort();
            let got: Vec<String> = f.tensors.keys().cloned().collect();
            assert_eq!(got, want);
            assert_eq!(f.metadata.get("neuroplastic.rule").map(String::as_str), Some(rule.name()));
            // A gradients file of another model is refused, naming the key.
            let other = model(if rule == Rule::Hebb { Rule::Oja } else { Rule::Hebb }, AlphaShape::Neuron, head, 1, 21);
            let e = load_gradients(&p, &other).unwrap_err().to_string();
            assert_names(&e, &["`neuroplastic.rule`"]);
        }
    }
}

#[test]
fn writes_are_atomic_and_failures_name_the_path() {
    let d = dir("atomic");
    let m = model(Rule::Oja, AlphaShape::Scalar, true, 0, 1);
    let p = d.join("m.safetensors");
    save_model(&m, &p).unwrap();
    let m2 = model(Rule::Oja, AlphaShape::Scalar, true, 0, 2);
    save_model(&m2, &p).unwrap(); // replaces the file
    assert_eq!(load_model(&p).unwrap(), canonical(&m2));
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    let missing = d.join("no-such-folder").join("m.safetensors");
    let e = save_model(&m, &missing).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_names(&e.to_string(), &["no-such-folder"]);
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    // Reading a file that is not safetensors.
    std::fs::write(d.join("junk.safetensors"), b"not a safetensors file").unwrap();
    let e = load_model(d.join("junk.safetensors")).unwrap_err().to_string();
    assert_names(&e, &["junk.safetensors", "not a valid safetensors file"]);
}

/// What the output path already is, is kept: a link stays a link (its
/// target is replaced), a read-only file is refused and left as it was, an
/// existing file's permissions carry over, a pipe is written to in place
/// (a rename would replace it with a regular file, as it would `/dev/null`).
#[cfg(unix)]
#[test]
fn writes_keep_links_permissions_and_special_files() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let d = dir("atomic_kinds");
    let bytes = |seed| {
        let mut f = TensorFile::new();
        f.put_f32("v", &[2], vec![seed, 1.0]);
        f.to_bytes().unwrap()
    };
    // Through a link: the target gets the new contents, the link remains.
    let target = d.join("target.safetensors");
    std::fs::write(&target, b"old").unwrap();
    let link = d.join("link.safetensors");
    std::os::unix::fs::symlink("target.safetensors", &link).unwrap();
    neuroplastic::io::write_atomic(&link, &bytes(1.0)).unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert_eq!(std::fs::read(&target).unwrap(), bytes(1.0));
    // Permissions carry over.
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    neuroplastic::io::write_atomic(&target, &bytes(2.0)).unwrap();
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
    // Read-only: refused, contents kept.
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o444)).unwrap();
    let e = neuroplastic::io::write_atomic(&target, &bytes(3.0)).unwrap_err().to_string();
    assert_names(&e, &["target.safetensors", "read-only"]);
    assert_eq!(std::fs::read(&target).unwrap(), bytes(2.0));
    // A folder.
    let e = neuroplastic::io::write_atomic(&d, &bytes(3.0)).unwrap_err().to_string();
    assert_names(&e, &["is a folder"]);
    // A pipe: written in place, still a pipe.
    let fifo = d.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    neuroplastic::io::write_atomic(&fifo, &bytes(4.0)).unwrap();
    assert_eq!(reader.join().unwrap(), bytes(4.0));
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the pipe was replaced by a file");
}

#[test]
fn unknown_missing_and_forbidden_tensors_are_named() {
    let hebb = model(Rule::Hebb, AlphaShape::Connection, true, 0, 1);
    let modulated = model(Rule::Modulated, AlphaShape::Connection, false, 0, 1);
    let retro = model(Rule::Retroactive, AlphaShape::Connection, false, 0, 1);

    let mut f = model_file(&hebb);
    f.put_f32("foo", &[1], vec![1.0]);
    assert_names(&model_error(&f, "unknown"), &["unknown tensor `foo`"]);

    for name in ["w", "alpha", "eta"] {
        let mut f = model_file(&hebb);
        f.tensors.remove(name);
        assert_names(&model_error(&f, &format!("missing-{name}")), &["missing", &format!("`{name}`")]);
    }
    let mut f = model_file(&retro);
    f.tensors.remove("eta_e");
    assert_names(&model_error(&f, "missing-eta_e"), &["missing required tensor `eta_e`", "retroactive"]);
    let mut f = model_file(&modulated);
    f.tensors.remove("mod.v");
    assert_names(&model_error(&f, "missing-mod.v"), &["missing required tensor `mod.v`"]);
    let mut f = model_file(&hebb);
    f.tensors.remove("head.out.bias");
    assert_names(&model_error(&f, "missing-head-bias"), &["`head.out.bias`"]);

    // Each rule has exactly the tensors it uses.
    let mut f = model_file(&modulated);
    f.put_f32("eta", &[1], vec![0.1]);
    assert_names(&model_error(&f, "eta-modulated"), &["`eta`", "modulated"]);
    let mut f = model_file(&hebb);
    f.put_f32("eta_e", &[1], vec![0.1]);
    assert_names(&model_error(&f, "eta_e-hebb"), &["`eta_e`", "hebb"]);
    let mut f = model_file(&hebb);
    f.put_f32("mod.v", &[1, 5], vec![0.1; 5]);
    assert_names(&model_error(&f, "modv-hebb"), &["`mod.v`", "no neuromodulator"]);
    let mut ff = model_file(&hebb);
    ff.metadata.insert("neuroplastic.topology".into(), "feedforward".into());
    assert_names(&model_error(&ff, "u-feedforward"), &["`u`", "feed-forward"]);
}

#[test]
fn wrong_shapes_dtypes_and_values_are_named() {
    let m = model(Rule::Modulated, AlphaShape::Connection, true, 0, 1);
    let n = m.cfg.n;
    let cases: Vec<(&str, Tensor, &[&str])> = vec![
        ("w", Tensor::f32(&[n, n + 1], vec![0.0; n * (n + 1)]), &["`w`", "square"]),
        ("w", Tensor::f32(&[n * n], vec![0.0; n * n]), &["`w`", "2-D"]),
        ("w", Tensor { shape: vec![n, n], data: Data::F64(vec![0.0; n * n]) }, &["`w`", "F64", "F32"]),
        ("alpha", Tensor::f32(&[n, n + 1], vec![0.0; n * (n + 1)]), &["`alpha`", "`neuroplastic.alpha`"]),
        ("u", Tensor::f32(&[n + 1, 3], vec![0.0; (n + 1) * 3]), &["`u`", "(N, X)"]),
        ("b", Tensor::f32(&[n + 1], vec![0.0; n + 1]), &["`b`", "(5,)"]),
        ("mod.v", Tensor::f32(&[1, n + 1], vec![0.0; n + 1]), &["`mod.v`", "(K, N)"]),
        ("mod.c", Tensor::f32(&[2], vec![0.0; 2]), &["`mod.c`", "K = 1"]),
        ("head.out.weight", Tensor::f32(&[2, n + 1], vec![0.0; 2 * (n + 1)]), &["`head.out.weight`", "(2, 5)"]),
        ("w", Tensor::f32(&[n, n], vec![f32::NAN; n * n]), &["`w`", "not finite"]),
        ("mask", Tensor::f32(&[1], vec![0.0]), &["`mask`"]),
    ];
    for (k, (name, t, needles)) in cases.into_iter().enumerate() {
        let mut f = model_file(&m);
        f.put(name, t);
        assert_names(&model_error(&f, &format!("shape{k}")), needles);
    }
    let hebb = model(Rule::Hebb, AlphaShape::Scalar, false, 0, 1);
    for (v, needles) in [(1.5f32, &["`eta`", "[0, 1]"][..]), (-0.1, &["`eta`"][..])] {
        let mut f = model_file(&hebb);
        f.put_f32("eta", &[1], vec![v]);
        assert_names(&model_error(&f, "eta-range"), needles);
    }
    let mut f = model_file(&hebb);
    f.put_f32("eta", &[2], vec![0.1, 0.2]);
    assert_names(&model_error(&f, "eta-shape"), &["`eta`", "(1,)"]);
}

#[test]
fn metadata_that_is_missing_unknown_or_contradicts_the_tensors_is_named() {
    let m = model(Rule::Retroactive, AlphaShape::Connection, false, 0, 1);
    let set = |key: &str, value: Option<&str>| {
        let mut f = model_file(&m);
        match value {
            Some(v) => f.metadata.insert(key.into(), v.into()),
            None => f.metadata.remove(key),
        };
        f
    };
    let cases: Vec<(&str, Option<&str>, &[&str])> = vec![
        ("neuroplastic.rule", None, &["missing metadata key `neuroplastic.rule`"]),
        ("neuroplastic.rule", Some("hebbian"), &["`neuroplastic.rule`", "hebbian"]),
        ("neuroplastic.alpha", Some("neuron"), &["`alpha`", "`neuroplastic.alpha`", "(5,)"]),
        ("neuroplastic.alpha", Some("synapse"), &["`neuroplastic.alpha`", "synapse"]),
        ("neuroplastic.activation", Some("relu"), &["`neuroplastic.activation`", "relu"]),
        ("neuroplastic.modulator", Some("softmax"), &["`neuroplastic.modulator`"]),
        ("neuroplastic.eta", Some("sometimes"), &["`neuroplastic.eta`"]),
        ("neuroplastic.topology", Some("convolutional"), &["`neuroplastic.topology`"]),
        ("neuroplastic.clip", None, &["missing metadata key `neuroplastic.clip`"]),
        ("neuroplastic.clip", Some("abc"), &["`neuroplastic.clip`", "abc"]),
        ("neuroplastic.clip", Some("-1"), &["`neuroplastic.clip`"]),
        ("neuroplastic.clip", Some("inf"), &["`neuroplastic.clip`"]),
        ("neuroplastic.activaton", Some("tanh"), &["unknown metadata key `neuroplastic.activaton`"]),
    ];
    for (k, (key, value, needles)) in cases.into_iter().enumerate() {
        assert_names(&model_error(&set(key, value), &format!("meta{k}")), needles);
    }
    // A rule that contradicts the tensors: the file has eta_e, not eta.
    assert_names(&model_error(&set("neuroplastic.rule", Some("hebb")), "rule-hebb"), &["`eta`", "hebb"]);
    assert_names(&model_error(&set("neuroplastic.rule", Some("modulated")), "rule-mod"), &["`eta_e`"]);
}

#[test]
fn malformed_episodes_are_named() {
    let m = model(Rule::Hebb, AlphaShape::Neuron, true, 0, 1); // X = 3, O = 2, N = 5
    let ep = episode(&m, 2, 3, true, 2);
    let d = dir("episode-errors");
    let check = |f: &TensorFile, name: &str, needles: &[&str]| {
        let p = d.join(format!("{name}.safetensors"));
        f.write(&p).unwrap();
        let e = load_episode(&p, &m).unwrap_err().to_string();
        assert_names(&e, needles);
    };
    let base = || {
        let mut f = TensorFile::new();
        put_episode(&mut f, &ep, &m).unwrap();
        f
    };
    let cases: Vec<(&str, Tensor, &[&str])> = vec![
        ("inputs", Tensor::f32(&[2, 3, 4], vec![0.0; 24]), &["`inputs`", "X = 3", "`u`"]),
        ("inputs", Tensor::f32(&[6, 3], vec![0.0; 18]), &["`inputs`", "(B, T, 3)"]),
        ("targets", Tensor::f32(&[2, 3, 5], vec![0.0; 30]), &["`targets`", "O = 2", "`head.out.weight`"]),
        ("mask", Tensor::f32(&[3, 2], vec![0.0; 6]), &["`mask`", "(2, 3)"]),
        ("mask", Tensor { shape: vec![2, 3], data: Data::F64(vec![1.0; 6]) }, &["`mask`", "F64"]),
        ("h0", Tensor::f32(&[2, 4], vec![0.0; 8]), &["`h0`", "(2, 5)"]),
        ("hebb0", Tensor::f32(&[2, 5, 4], vec![0.0; 40]), &["`hebb0`", "(2, 5, 5)"]),
        ("elig0", Tensor::f32(&[2, 5, 5], vec![0.0; 50]), &["`elig0`", "eligibility"]),
        ("targets", Tensor::f32(&[2, 3, 2], vec![f32::INFINITY; 12]), &["`targets`", "not finite"]),
        ("w", Tensor::f32(&[1], vec![0.0]), &["unknown tensor `w`"]),
    ];
    for (k, (name, t, needles)) in cases.into_iter().enumerate() {
        let mut f = base();
        f.put(name, t);
        check(&f, &format!("e{k}"), needles);
    }
    let mut f = base();
    f.tensors.remove("targets");
    check(&f, "missing-targets", &["missing required tensor `targets`"]);
    // A feed-forward model has no hidden state.
    let mut cfg = LayerConfig::feed_forward(Rule::Hebb, 3, 5);
    cfg.alpha = AlphaShape::Scalar;
    let mut params = Params::<f32>::zeros(&cfg);
    params.eta[0] = 0.5;
    let ffm = Model { cfg, params, head: None };
    let ffe = episode(&ffm, 2, 3, true, 3);
    let mut f = TensorFile::new();
    put_episode(&mut f, &ffe, &ffm).unwrap();
    f.put_f32("h0", &[2, 5], vec![0.0; 10]);
    let p = d.join("ff-h0.safetensors");
    f.write(&p).unwrap();
    assert_names(&load_episode(&p, &ffm).unwrap_err().to_string(), &["`h0`", "feed-forward"]);
}
