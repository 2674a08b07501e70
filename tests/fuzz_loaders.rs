//! Every safetensors loader (model, episode, gradients, training checkpoint,
//! meta-learner, trajectory) on malformed bytes: the files a hostile or careless user can hand us.
//! Hand-made cases first (empty, truncated, absurd header length,
//! overlapping offsets, non-UTF-8 header, wrong dtype, …), then a proptest
//! that mutates the bytes of valid files at random. Whatever the bytes, a
//! loader returns either a valid value or an error that names the file; it
//! never panics or aborts (an abort would end this test process).
#![cfg(feature = "train")]

use neuroplastic::io::{TensorFile, put_episode, put_model, save_gradients, take_episode, take_model};
use neuroplastic::tasks::{Net, PatternTask};
use neuroplastic::train::{OptimConfig, TrainCheckpoint, TrainConfig, Trainer};
use neuroplastic::*;
use proptest::prelude::*;

const NAME: &str = "fuzz.safetensors";

/// A retroactive model with every optional tensor and a head, and an episode with an initial state.
fn model_and_episode() -> (Model, Episode) {
    let n = 4;
    let mut cfg = LayerConfig::recurrent(Rule::Retroactive, n, 3);
    cfg.bias = true;
    cfg.clip = 1.5;
    cfg.modulator =
        ModulatorConfig { k: 2, activation: ModActivation::Sigmoid, bias: true, fanout: true, fanout_bias: true };
    let mut params = Params::<f32>::zeros(&cfg);
    for (k, (_, v)) in params.named_mut().into_iter().enumerate() {
        v.iter_mut().enumerate().for_each(|(i, x)| *x = ((i * 7 + k * 3) % 11) as f32 * 0.05 - 0.25);
    }
    params.eta_e[0] = 0.3;
    let head = Some(Head { weight: vec![0.1; 2 * n], bias: vec![0.0; 2] });
    let model = Model { cfg, params, head };
    let (b, t) = (2, 3);
    let mut init = State::<f32>::zeros(&cfg, b);
    init.h.iter_mut().for_each(|x| *x = 0.2);
    let ep = Episode {
        batch: b,
        steps: t,
        inputs: (0..b * t * 3).map(|i| (i % 5) as f32 * 0.1).collect(),
        targets: vec![0.5; b * t * 2],
        mask: vec![1.0; b * t],
        init: Some(init),
    };
    (model, ep)
}

/// The bytes of a valid model file, episode file, gradients file and training checkpoint.
fn valid_files() -> &'static [Vec<u8>; 6] {
    static FILES: std::sync::OnceLock<[Vec<u8>; 6]> = std::sync::OnceLock::new();
    FILES.get_or_init(make_files)
}

/// A small ANML meta-learner (RLN, PLN, NM gating layer 1, learned β, clamp)
/// and a trajectory for it.
fn meta_model_and_trajectory() -> (neuroplastic::meta::MetaModel<f32>, neuroplastic::meta::Trajectory<f32>) {
    use neuroplastic::meta::{MetaConfig, MetaModel, Trajectory};
    let cfg = MetaConfig { inner_lr: 0.1, learn_lr: true, clamp: 0.5, gate_at: 1, ..MetaConfig::default() };
    let mut m = MetaModel::<f32>::zeros(cfg, 3, &[3, 4], &[4, 5, 2], &[3, 5]);
    let fill = |v: &mut Vec<f32>| v.iter_mut().enumerate().for_each(|(k, x)| *x = ((k * 7 % 11) as f32 - 5.0) / 10.0);
    fill(&mut m.rln_p);
    fill(&mut m.theta0);
    fill(&mut m.nm_p);
    let (p, s, bi, bo) = (2, 3, 2, 2);
    let t = Trajectory {
        p,
        s,
        bi,
        bo,
        d: 3,
        ycols: 2,
        inner_x: vec![0.5; p * s * bi * 3],
        inner_y: vec![0.25; p * s * bi * 2],
        outer_x: vec![-0.5; p * bo * 3],
        outer_y: vec![0.75; p * bo * 2],
    };
    (m, t)
}

fn make_files() -> [Vec<u8>; 6] {
    let (model, ep) = model_and_episode();
    let mut mf = TensorFile::new();
    put_model(&mut mf, &model).unwrap();
    let mut ef = TensorFile::new();
    put_episode(&mut ef, &ep, &model).unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz_loaders");
    std::fs::create_dir_all(&dir).unwrap();
    let mut engine = Engine::new(model.cfg, Device::Cpu, Options::default()).unwrap();
    let g = model.loss_and_grad(&mut engine, &ep).unwrap();
    let gp = dir.join("g.safetensors");
    save_gradients(&gp, g.loss, &g, &model).unwrap();
    let task = PatternTask { bits: 6, patterns: 2, cycles: 1, show: 2, blank: 1, test: 2, ..PatternTask::default() };
    let (m, frozen) = task.model(Net::Plastic, 0.01, 0.1, 1).unwrap();
    let mut optim = OptimConfig::adam(1e-3);
    optim.frozen = frozen;
    let cfg = TrainConfig { seed: 1, batch: 2, eval_every: 1, eval_episodes: 2, optim };
    let engine = Engine::new(m.cfg, Device::Cpu, Options::default()).unwrap();
    let mut tr = Trainer::new(task, m, engine, cfg).unwrap();
    tr.run(2, None, &mut |_| Ok(())).unwrap();
    let ck = tr.checkpoint().to_file().unwrap().to_bytes().unwrap();
    let (mm, mt) = meta_model_and_trajectory();
    let (mp, tp) = (dir.join("meta.safetensors"), dir.join("traj.safetensors"));
    neuroplastic::meta::io::save_model(&mm, &mp).unwrap();
    neuroplastic::meta::io::save_trajectory(&mt, &mm, &tp).unwrap();
    [
        mf.to_bytes().unwrap(),
        ef.to_bytes().unwrap(),
        std::fs::read(&gp).unwrap(),
        ck,
        std::fs::read(&mp).unwrap(),
        std::fs::read(&tp).unwrap(),
    ]
}

/// Runs `bytes` through every loader. Each either succeeds or fails with a
/// message naming the file; returns the messages.
fn load_all(bytes: &[u8]) -> Vec<String> {
    let (model, _) = model_and_episode();
    let mut errs = Vec::new();
    let mut note = |r: Result<(), Error>| {
        if let Err(e) = r {
            let m = e.to_string();
            assert!(m.contains(NAME), "the error does not name the file: {m}");
            errs.push(m);
        }
    };
    let parsed = TensorFile::parse(bytes, NAME);
    note(parsed.as_ref().map(|_| ()).map_err(|e| Error::Format { path: NAME.into(), message: e.to_string() }));
    let Ok(f) = parsed else { return errs };
    note(take_model(&mut f.clone()).map(|_| ()));
    note(take_episode(&mut f.clone(), &model).map(|_| ()));
    note(TrainCheckpoint::from_file(f.clone()).map(|_| ()));
    note(neuroplastic::meta::io::take_model(&mut f.clone()).map(|_| ()));
    // The gradients loader reads a path: write the bytes out once per case.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz_loaders");
    let p = dir.join(format!("g-{:?}.safetensors", std::thread::current().id()).replace(['(', ')'], ""));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&p, bytes).unwrap();
    if let Err(e) = neuroplastic::io::load_gradients(&p, &model) {
        assert!(e.to_string().contains("g-"), "the gradients error does not name the file: {e}");
    }
    let (meta, _) = meta_model_and_trajectory();
    if let Err(e) = neuroplastic::meta::io::load_trajectory(&p, &meta) {
        assert!(e.to_string().contains("g-"), "the trajectory error does not name the file: {e}");
    }
    errs
}

/// A safetensors file from a hand-written header and data.
fn raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(data);
    v
}

fn rejected(bytes: &[u8], needles: &[&str]) {
    let msg = match TensorFile::parse(bytes, NAME) {
        // What load_model does: take the model, then refuse leftovers.
        Ok(mut f) => match take_model(&mut f).and_then(|m| f.finish("model").map(|_| m)) {
            Ok(m) => panic!("accepted a malformed model: {m:?}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in: {msg}");
    }
}

#[test]
fn hand_made_malformed_files_are_named_errors() {
    let model = valid_files()[0].clone();
    rejected(&[], &[NAME]);
    // Truncated: inside the length, inside the header, inside the data.
    for cut in [3, 8, 20, model.len() / 2, model.len() - 1] {
        rejected(&model[..cut], &[NAME]);
    }
    // A header length of 2^63 (and of u64::MAX): refused, not allocated.
    let mut huge = model.clone();
    huge[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    rejected(&huge, &[NAME]);
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    rejected(&huge, &[NAME]);
    // Overlapping offsets.
    let h = br#"{"w":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]},"alpha":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    rejected(&raw(h, &[0; 8]), &[NAME]);
    // A header that is not UTF-8.
    rejected(&raw(&[b'{', 0xff, 0xfe, b'}'], &[]), &[NAME]);
    // A huge declared shape whose data is absent.
    let h = br#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#;
    rejected(&raw(h, &[0; 4]), &[NAME]);
    // One whose element count overflows: the tensor and its shape are named.
    let h = br#"{"inner.x":{"dtype":"F32","shape":[1048576,1048576,1048576,3],"data_offsets":[0,4]}}"#;
    rejected(&raw(h, &[0; 4]), &[NAME, "`inner.x`", "1048576, 1048576, 1048576, 3"]);
    // Wrong dtype, named with the tensor.
    let h = br#"{"__metadata__":{"neuroplastic.rule":"hebb"},"w":{"dtype":"F16","shape":[1,1],"data_offsets":[0,2]}}"#;
    rejected(&raw(h, &[0; 2]), &[NAME, "`w`", "F16"]);
    // NaN and infinity, named with the tensor and element.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut f = TensorFile::parse(&model, NAME).unwrap();
        let Some(neuroplastic::io::Data::F32(v)) = f.tensors.get_mut("alpha").map(|t| &mut t.data) else { panic!() };
        v[3] = bad;
        rejected(&f.to_bytes().unwrap(), &[NAME, "`alpha`", "element 3"]);
    }
    // Unknown and missing tensors, absurd metadata.
    let mut f = TensorFile::parse(&model, NAME).unwrap();
    f.put_f32("extra", &[1], vec![0.0]);
    rejected(&f.to_bytes().unwrap(), &[NAME, "`extra`"]);
    let mut f = TensorFile::parse(&model, NAME).unwrap();
    f.tensors.remove("w");
    rejected(&f.to_bytes().unwrap(), &[NAME, "`w`"]);
    for (k, v) in [("neuroplastic.clip", "1e400"), ("neuroplastic.clip", "-1"), ("neuroplastic.rule", "\u{0}x")] {
        let mut f = TensorFile::parse(&model, NAME).unwrap();
        f.metadata.insert(k.into(), v.into());
        rejected(&f.to_bytes().unwrap(), &[NAME, k]);
    }
}

#[test]
fn the_valid_files_load() {
    for bytes in valid_files() {
        // Its own loader accepts each (the others may refuse it); none panics.
        let errs = load_all(bytes);
        assert!(errs.len() < 5, "{errs:?}");
    }
}

/// A mutation of a valid file.
#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite byte `at` (modulo the length) with `v`.
    Set(usize, u8),
    /// Cut the file at `at`.
    Truncate(usize),
    /// Insert `v` at `at`.
    Insert(usize, u8),
    /// Set the 8-byte header length to `v`.
    HeaderLen(u64),
    /// Overwrite 4 bytes of the data with an f32 (NaN, ∞, huge, …).
    Float(usize, f32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<usize>(), any::<u8>()).prop_map(|(a, v)| Mutation::Set(a, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(a, v)| Mutation::Insert(a, v)),
        1 => prop_oneof![any::<u64>(), 0u64..4096].prop_map(Mutation::HeaderLen),
        2 => (any::<usize>(), prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(3e38f32), Just(-1e30f32), any::<f32>()])
            .prop_map(|(a, v)| Mutation::Float(a, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len().max(1);
    match *m {
        Mutation::Set(a, v) => {
            if !bytes.is_empty() {
                bytes[a % len] = v;
            }
        }
        Mutation::Truncate(a) => bytes.truncate(a % len),
        Mutation::Insert(a, v) => bytes.insert(a % (bytes.len() + 1), v),
        Mutation::HeaderLen(v) => {
            if bytes.len() >= 8 {
                bytes[..8].copy_from_slice(&v.to_le_bytes());
            }
        }
        Mutation::Float(a, v) => {
            if bytes.len() >= 12 {
                let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                let start = 8usize.saturating_add(n).min(bytes.len() - 4);
                let span = bytes.len() - 4 - start + 1;
                let at = start + a % span;
                bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

proptest! {
    // Modest: CI runs this on 2 cores; each case parses four files with every loader.
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic_and_errors_name_the_file(
        which in 0usize..6,
        muts in proptest::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = valid_files()[which].clone();
        for m in &muts {
            apply(&mut bytes, m);
        }
        load_all(&bytes);
    }
}
