//! Bad input through the public API returns an `Error` whose message names the
//! argument (and, for shapes, the expected shape and what was received); it
//! never panics and is never silently accepted.
//!
//! Every check runs on every entry point that takes the argument:
//! `Engine::new/forward/backward` on `Device::Reference` and `Device::Cpu`,
//! `reference::{forward, backward, plastic_step_fwd}`, `Model::loss_and_grad`,
//! `LayerConfig::validate` and `Options::validate`. The expected shapes are
//! written out by hand for a fixed layer (N = 4, X = 3, K = 2, B = 2, T = 5),
//! not computed with the crate's own shape functions.

use neuroplastic::{
    AlphaShape, Checkpoint, Device, Engine, Episode, Error, Forward, Head, InputMap, LayerConfig, ModActivation, Model,
    ModulatorConfig, Options, Params, Rule, Seq, State, Truncation, reference,
};

const N: usize = 4;
const X: usize = 3;
const K: usize = 2;
const B: usize = 2;
const T: usize = 5;
/// Outputs of the model's head.
const O: usize = 3;
const DEVICES: [Device; 2] = [Device::Reference, Device::Cpu];

/// The message of an expected error; panics (failing the test) when `r` is `Ok`.
#[track_caller]
fn message<V>(r: Result<V, Error>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what}: accepted, but it must be an error"),
        Err(e) => e.to_string(),
    }
}

/// Asserts that `r` is an error whose message contains every one of `needles`.
#[track_caller]
fn assert_err<V>(r: Result<V, Error>, what: &str, needles: &[&str]) {
    let m = message(r, what);
    for n in needles {
        assert!(m.contains(n), "{what}: the message {m:?} does not contain {n:?}");
    }
}

/// A recurrent layer with every optional tensor of its rule.
fn full(rule: Rule) -> LayerConfig {
    LayerConfig {
        bias: true,
        modulator: ModulatorConfig {
            k: K,
            activation: ModActivation::Tanh,
            bias: true,
            fanout: true,
            fanout_bias: true,
        },
        ..LayerConfig::recurrent(rule, N, X)
    }
}

/// Small deterministic values of the right shapes.
fn params(cfg: &LayerConfig) -> Params<f32> {
    let mut p = Params::<f32>::zeros(cfg);
    for (name, v) in p.named_mut() {
        for (k, e) in v.iter_mut().enumerate() {
            *e = if name.starts_with("eta") { 0.3 } else { 0.1 * ((k % 7) as f32 - 3.0) };
        }
    }
    p
}

fn inputs(cfg: &LayerConfig, batch: usize, steps: usize) -> Vec<f32> {
    (0..batch * steps * cfg.inputs).map(|k| ((k % 5) as f32 - 2.0) * 0.4).collect()
}

fn state(cfg: &LayerConfig, batch: usize) -> State<f32> {
    State::<f32>::zeros(cfg, batch).map(|_| 0.05)
}

fn engine(cfg: LayerConfig, device: Device, check_finite: bool) -> Engine {
    Engine::new(cfg, device, Options { check_finite, ..Options::default() }).expect("a valid engine")
}

fn forward(e: &mut Engine, p: &Params<f32>, xs: &[f32]) -> Forward {
    e.forward(p, Seq::new(xs, B, T), None).expect("a valid forward pass")
}

fn model(cfg: LayerConfig) -> Model {
    let head = Head { weight: vec![0.1; O * N], bias: vec![0.0; O] };
    Model { cfg, params: params(&cfg), head: Some(head) }
}

fn episode(cfg: &LayerConfig) -> Episode {
    Episode {
        batch: B,
        steps: T,
        inputs: inputs(cfg, B, T),
        targets: vec![0.5; B * T * O],
        mask: vec![1.0; B * T],
        init: Some(state(cfg, B)),
    }
}

fn to64(p: &Params<f32>) -> Params<f64> {
    p.map(f64::from)
}

fn v64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Runs every entry point that takes `p` (the other arguments valid) and
/// asserts each fails with all of `needles` in its message.
#[track_caller]
fn assert_params_rejected(cfg: LayerConfig, p: &Params<f32>, check_finite: bool, what: &str, needles: &[&str]) {
    let good = params(&cfg);
    let xs = inputs(&cfg, B, T);
    for device in DEVICES {
        let mut e = engine(cfg, device, check_finite);
        assert_err(e.forward(p, Seq::new(&xs, B, T), None), &format!("{what}: {device:?} forward"), needles);
        let fwd = forward(&mut e, &good, &xs);
        let dy = vec![0.1; B * T * N];
        let r = e.backward(p, Seq::new(&xs, B, T), &fwd, &dy, None);
        assert_err(r, &format!("{what}: {device:?} backward"), needles);
        let m = Model { params: p.clone(), ..model(cfg) };
        assert_err(m.loss_and_grad(&mut e, &episode(&cfg)), &format!("{what}: {device:?} loss_and_grad"), needles);
    }
    if !check_finite {
        // The reference's own functions check shapes and ranges, not finiteness.
        let (p64, x64) = (to64(p), v64(&xs));
        assert_err(
            reference::forward(&cfg, &p64, Seq::new(&x64, B, T), None),
            &format!("{what}: reference::forward"),
            needles,
        );
        let dy = vec![0.1; B * T * N];
        let r = reference::backward(&cfg, &p64, Seq::new(&x64, B, T), None, &dy, None, Truncation::None);
        assert_err(r, &format!("{what}: reference::backward"), needles);
    }
}

// ---------------------------------------------------------------------------

#[test]
fn config_errors() {
    let bad: Vec<(LayerConfig, &str, Vec<&str>)> = vec![
        (LayerConfig { n: 0, ..full(Rule::Hebb) }, "N = 0", vec!["config.n", "at least 1", "got 0"]),
        (LayerConfig::feed_forward(Rule::Oja, 0, N), "feed-forward X = 0", vec!["config.inputs", "got 0"]),
        (
            LayerConfig { input_map: InputMap::Direct, ..full(Rule::Hebb) },
            "Direct with X ≠ N",
            vec!["config.inputs", "InputMap::Direct", "N = 4", "got 3"],
        ),
        (
            LayerConfig { modulator: ModulatorConfig { k: 0, ..ModulatorConfig::default() }, ..full(Rule::Modulated) },
            "K = 0 (modulated)",
            vec!["config.modulator.k", "at least 1", "got 0"],
        ),
        (
            LayerConfig {
                modulator: ModulatorConfig { k: 0, ..ModulatorConfig::default() },
                ..full(Rule::Retroactive)
            },
            "K = 0 (retroactive)",
            vec!["config.modulator.k"],
        ),
    ];
    let mut bad = bad;
    for rule in [Rule::Modulated, Rule::Retroactive] {
        for (clip, text) in
            [(0.0, "= 0 "), (-1.0, "= -1 "), (f64::NAN, "NaN"), (f64::INFINITY, "inf"), (f64::NEG_INFINITY, "-inf")]
        {
            bad.push((
                LayerConfig { clip, ..full(rule) },
                "c_max",
                vec!["config.clip", "c_max", text, "finite number > 0"],
            ));
        }
    }
    for (cfg, what, needles) in &bad {
        assert_err(cfg.validate(), &format!("validate {what}"), needles);
        for device in DEVICES {
            assert_err(
                Engine::new(*cfg, device, Options::default()),
                &format!("Engine::new {what} on {device:?}"),
                needles,
            );
        }
        // The entry points that take a configuration but no engine.
        let p = Params::<f64>::zeros(cfg);
        let xs = vec![0.0; B * T * cfg.inputs];
        assert_err(
            reference::forward(cfg, &p, Seq::new(&xs, B, T), None),
            &format!("reference::forward {what}"),
            needles,
        );
        let m = Model { cfg: *cfg, params: Params::zeros(cfg), head: None };
        let mut e = engine(full(Rule::Hebb), Device::Reference, false);
        assert_err(m.loss_and_grad(&mut e, &episode(&full(Rule::Hebb))), &format!("loss_and_grad {what}"), needles);
    }
}

#[test]
fn option_errors() {
    let bad = [
        (Options { threads: Some(0), ..Options::default() }, vec!["options.threads", "at least 1", "got 0"]),
        (Options { checkpoint: Checkpoint::Every(0), ..Options::default() }, vec!["options.checkpoint", "at least 1"]),
        (Options { truncate: Truncation::Last(0), ..Options::default() }, vec!["truncate", "at least 1"]),
        (Options { truncate: Truncation::Windows(0), ..Options::default() }, vec!["truncate", "at least 1"]),
    ];
    for (opts, needles) in &bad {
        assert_err(opts.validate(), &format!("{opts:?}"), needles);
        for device in DEVICES {
            assert_err(
                Engine::new(full(Rule::Hebb), device, *opts),
                &format!("Engine::new {opts:?} {device:?}"),
                needles,
            );
            let mut e = engine(full(Rule::Hebb), device, false);
            assert_err(e.set_options(*opts), &format!("set_options {opts:?} {device:?}"), needles);
            // A refused change leaves the engine as it was, and working.
            assert_eq!(e.options(), &Options::default());
            let cfg = full(Rule::Hebb);
            forward(&mut e, &params(&cfg), &inputs(&cfg, B, T));
        }
    }
    // The reference's backward takes the truncation directly.
    let cfg = full(Rule::Oja);
    let (p, xs, dy) = (to64(&params(&cfg)), v64(&inputs(&cfg, B, T)), vec![0.1; B * T * N]);
    for truncate in [Truncation::Last(0), Truncation::Windows(0)] {
        let r = reference::backward(&cfg, &p, Seq::new(&xs, B, T), None, &dy, None, truncate);
        assert_err(r, &format!("reference::backward {truncate:?}"), &["truncate", "at least 1"]);
    }
}

#[test]
fn cuda_is_an_error_value_when_unavailable() {
    // A device ordinal no machine has: always an error, never a panic.
    assert_err(Engine::new(full(Rule::Hebb), Device::Cuda(1_000_000), Options::default()), "Cuda(1000000)", &["cuda"]);
    match Engine::new(full(Rule::Hebb), Device::Cuda(0), Options::default()) {
        Ok(_) => eprintln!("skipping the Cuda(0) check: a CUDA device is available"),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("cuda:0") && m.contains("unavailable"), "Cuda(0): {m:?}");
        }
    }
}

/// The hand-written shape of every parameter tensor of `full(rule)`.
fn expected_param_shapes(rule: Rule) -> [(&'static str, &'static str); 10] {
    let (eta, eta_e, v, c, f, g) = match rule {
        Rule::Hebb | Rule::Oja => ("(1,)", "(0,)", "(0,)", "(0,)", "(0,)", "(0,)"),
        Rule::Modulated => ("(0,)", "(0,)", "(2, 4)", "(2,)", "(2, 4)", "(4,)"),
        Rule::Retroactive => ("(0,)", "(1,)", "(2, 4)", "(2,)", "(2, 4)", "(4,)"),
    };
    [
        ("w", "(4, 4)"),
        ("alpha", "(4, 4)"),
        ("eta", eta),
        ("eta_e", eta_e),
        ("u", "(4, 3)"),
        ("b", "(4,)"),
        ("mod.v", v),
        ("mod.c", c),
        ("mod.fanout", f),
        ("mod.fanout_bias", g),
    ]
}

#[test]
fn every_parameter_shape_mismatch() {
    for rule in Rule::ALL {
        let cfg = full(rule);
        for (k, (name, shape)) in expected_param_shapes(rule).into_iter().enumerate() {
            let len = params(&cfg).named()[k].1.len();
            let mut sizes = vec![len + 1];
            if len > 0 {
                sizes.push(len - 1);
            }
            for size in sizes {
                let mut p = params(&cfg);
                p.named_mut()[k].1.resize(size, 0.1);
                let arg = format!("params.{name}:");
                let expected = format!("expected shape {shape}");
                let got = format!("got {size} elements");
                let what = format!("{rule:?} params.{name} with {size} elements");
                assert_params_rejected(cfg, &p, false, &what, &[&arg, &expected, &got]);
                if len == 0 {
                    assert_params_rejected(cfg, &p, false, &what, &["unused by this configuration"]);
                }
            }
        }
    }
    // α of the other granularities, and W of a feed-forward layer (N, I = X).
    for (alpha, shape) in [(AlphaShape::Neuron, "(4,)"), (AlphaShape::Scalar, "(1,)")] {
        let cfg = LayerConfig { alpha, ..full(Rule::Hebb) };
        let mut p = params(&cfg);
        p.alpha.push(0.0);
        let expected = format!("expected shape {shape}");
        assert_params_rejected(cfg, &p, false, &format!("{alpha:?}"), &["params.alpha:", &expected]);
    }
    let ff = LayerConfig::feed_forward(Rule::Hebb, X, N);
    let mut p = params(&ff);
    p.w.push(0.0);
    let xs = inputs(&ff, B, T);
    let mut e = engine(ff, Device::Cpu, false);
    assert_err(e.forward(&p, Seq::new(&xs, B, T), None), "feed-forward w", &["params.w:", "expected shape (4, 3)"]);
}

#[test]
fn rates_outside_the_unit_interval() {
    for (rule, name) in [(Rule::Hebb, "eta"), (Rule::Oja, "eta"), (Rule::Retroactive, "eta_e")] {
        let cfg = full(rule);
        let k = if name == "eta" { 2 } else { 3 };
        for value in [-0.1f32, 1.5, -f32::MIN_POSITIVE, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut p = params(&cfg);
            p.named_mut()[k].1[0] = value;
            let arg = format!("params.{name}");
            let what = format!("{rule:?} {name} = {value}");
            // Without the finiteness check, NaN and ±∞ are out of range too.
            assert_params_rejected(cfg, &p, false, &what, &[&arg, "out of range", "[0, 1]"]);
            let with_check: &[&str] = if value.is_finite() { &[&arg, "[0, 1]"] } else { &[&arg, "not finite"] };
            assert_params_rejected(cfg, &p, true, &what, with_check);
        }
        // The interval is closed.
        for value in [0.0f32, 1.0] {
            let mut p = params(&cfg);
            p.named_mut()[k].1[0] = value;
            for device in DEVICES {
                let mut e = engine(cfg, device, true);
                e.forward(&p, Seq::new(&inputs(&cfg, B, T), B, T), None).expect("a rate of 0 or 1 is valid");
            }
        }
    }
}

#[test]
fn input_shape_and_size_errors() {
    let cfg = full(Rule::Retroactive);
    let p = params(&cfg);
    let p64 = to64(&p);
    let xs = inputs(&cfg, B, T);
    let cases: Vec<(Vec<f32>, usize, usize, Vec<&str>)> = vec![
        (xs[1..].to_vec(), B, T, vec!["inputs:", "expected shape (2, 5, 3)", "got 29 elements"]),
        ([xs.clone(), vec![0.0]].concat(), B, T, vec!["inputs:", "expected shape (2, 5, 3)", "got 31 elements"]),
        (Vec::new(), 0, T, vec!["batch (B)", "at least 1", "got 0"]),
        (Vec::new(), B, 0, vec!["steps (T)", "at least 1", "got 0"]),
        // (2^62, 4, 3) has more elements than usize can count: a wrapped product must not match.
        (Vec::new(), 1 << 62, 4, vec!["inputs:", "more than usize::MAX"]),
    ];
    for (data, batch, steps, needles) in &cases {
        let what = format!("inputs of {} elements as B = {batch}, T = {steps}", data.len());
        for device in DEVICES {
            let mut e = engine(cfg, device, false);
            assert_err(e.forward(&p, Seq::new(data, *batch, *steps), None), &format!("{what}: {device:?}"), needles);
            let ep = Episode { batch: *batch, steps: *steps, inputs: data.clone(), ..episode(&cfg) };
            assert_err(model(cfg).loss_and_grad(&mut e, &ep), &format!("{what}: loss_and_grad"), needles);
        }
        let x64 = v64(data);
        assert_err(reference::forward(&cfg, &p64, Seq::new(&x64, *batch, *steps), None), &what, needles);
        let dy = vec![0.0; B * T * N];
        let r = reference::backward(&cfg, &p64, Seq::new(&x64, *batch, *steps), None, &dy, None, Truncation::None);
        assert_err(r, &format!("{what}: reference::backward"), needles);
    }
}

/// A state with one tensor's length changed by `delta` (+1 or −1).
fn resized(s: &State<f32>, which: usize, delta: isize) -> State<f32> {
    let mut s = s.clone();
    let v = match which {
        0 => &mut s.h,
        1 => &mut s.hebb,
        _ => &mut s.elig,
    };
    v.resize(v.len().saturating_add_signed(delta), 0.0);
    s
}

#[test]
fn state_shape_errors() {
    // (configuration, its (h, hebb, elig) shapes)
    let layers = [
        (full(Rule::Retroactive), ["(2, 4)", "(2, 4, 4)", "(2, 4, 4)"]),
        (full(Rule::Hebb), ["(2, 4)", "(2, 4, 4)", "(0,)"]),
        (LayerConfig::feed_forward(Rule::Retroactive, X, N), ["(0,)", "(2, 4, 3)", "(2, 4, 3)"]),
    ];
    for (cfg, shapes) in layers {
        let p = params(&cfg);
        let xs = inputs(&cfg, B, T);
        let good = state(&cfg, B);
        for (which, name) in ["h", "hebb", "elig"].into_iter().enumerate() {
            let deltas: &[isize] = if [&good.h, &good.hebb, &good.elig][which].is_empty() { &[1] } else { &[1, -1] };
            for &delta in deltas {
                let bad = resized(&good, which, delta);
                let got = format!("got {} elements", [&bad.h, &bad.hebb, &bad.elig][which].len());
                let expected = format!("expected shape {}", shapes[which]);
                let what = format!("{:?} {:?} {name} {delta:+}", cfg.topology, cfg.rule);
                let init_arg = format!("init.{name}:");
                let dlast_arg = format!("dlast.{name}:");
                for device in DEVICES {
                    let mut e = engine(cfg, device, false);
                    let r = e.forward(&p, Seq::new(&xs, B, T), Some(&bad));
                    assert_err(r, &format!("init {what} {device:?}"), &[&init_arg, &expected, &got]);
                    let ep = Episode { init: Some(bad.clone()), ..episode(&cfg) };
                    let m = Model { head: None, ..model(cfg) };
                    let ep = Episode { targets: vec![0.0; B * T * N], ..ep };
                    assert_err(m.loss_and_grad(&mut e, &ep), &format!("init {what} loss_and_grad"), &[&init_arg]);
                    let fwd = forward(&mut e, &p, &xs);
                    let dy = vec![0.1; B * T * N];
                    let r = e.backward(&p, Seq::new(&xs, B, T), &fwd, &dy, Some(&bad));
                    assert_err(r, &format!("dlast {what} {device:?}"), &[&dlast_arg, &expected, &got]);
                }
                let (p64, x64, s64) = (to64(&p), v64(&xs), bad.map(f64::from));
                let r = reference::forward(&cfg, &p64, Seq::new(&x64, B, T), Some(&s64));
                assert_err(r, &format!("reference::forward init {what}"), &[&init_arg, &expected, &got]);
                let dy = vec![0.1; B * T * N];
                let r = reference::backward(&cfg, &p64, Seq::new(&x64, B, T), Some(&s64), &dy, None, Truncation::None);
                assert_err(r, &format!("reference::backward init {what}"), &[&init_arg, &expected, &got]);
                let r = reference::backward(&cfg, &p64, Seq::new(&x64, B, T), None, &dy, Some(&s64), Truncation::None);
                assert_err(r, &format!("reference::backward dlast {what}"), &[&dlast_arg, &expected, &got]);
            }
        }
    }
}

#[test]
fn sizes_that_overflow_with_empty_inputs() {
    // A recurrent layer without external inputs (X = 0) has empty inputs for
    // any B and T: the sizes must still be checked before allocating.
    let cfg = LayerConfig::recurrent(Rule::Hebb, N, 0);
    let p = params(&cfg);
    let needles = ["batch (B), steps (T)", "more than usize::MAX"];
    for (batch, steps) in [(1usize << 62, 1usize), (1 << 40, 1 << 30)] {
        for device in DEVICES {
            let mut e = engine(cfg, device, false);
            assert_err(
                e.forward(&p, Seq::new(&[], batch, steps), None),
                &format!("B = {batch}, T = {steps}"),
                &needles,
            );
        }
        let r = reference::forward(&cfg, &to64(&p), Seq::new(&[], batch, steps), None);
        assert_err(r, &format!("reference::forward B = {batch}, T = {steps}"), &needles);
    }
    // And the layer itself works.
    let mut e = engine(cfg, Device::Cpu, true);
    let fwd = e.forward(&p, Seq::new(&[], B, T), Some(&state(&cfg, B))).expect("X = 0 is a valid layer");
    assert_eq!(fwd.y.len(), B * T * N);
}

#[test]
fn dy_shape_errors() {
    let cfg = full(Rule::Modulated);
    let (p, xs) = (params(&cfg), inputs(&cfg, B, T));
    for len in [B * T * N - 1, B * T * N + 1, 0] {
        let dy = vec![0.1f32; len];
        let needles = ["dy:", "expected shape (2, 5, 4)", &format!("got {len} elements")];
        for device in DEVICES {
            let mut e = engine(cfg, device, false);
            let fwd = forward(&mut e, &p, &xs);
            assert_err(e.backward(&p, Seq::new(&xs, B, T), &fwd, &dy, None), &format!("dy {len} {device:?}"), &needles);
        }
        let r =
            reference::backward(&cfg, &to64(&p), Seq::new(&v64(&xs), B, T), None, &v64(&dy), None, Truncation::None);
        assert_err(r, &format!("reference::backward dy {len}"), &needles);
    }
}

#[test]
fn model_errors() {
    let cfg = full(Rule::Retroactive);
    let good = model(cfg);
    let ep = episode(&cfg);
    let mut bad_models: Vec<(Model, &str, Vec<&str>)> = Vec::new();
    for len in [O * N - 1, O * N + 1] {
        let head = Head { weight: vec![0.1; len], bias: vec![0.0; O] };
        bad_models.push((
            Model { head: Some(head), ..good.clone() },
            "head weight",
            vec!["head.out.weight:", "expected shape (3, 4)", "O = 3"],
        ));
    }
    let head = Head { weight: vec![0.1; O * N], bias: vec![0.0; O - 1] };
    bad_models.push((
        Model { head: Some(head), ..good.clone() },
        "head bias shorter",
        vec!["head.out.weight:", "(2, 4)"],
    ));
    let head = Head { weight: Vec::new(), bias: Vec::new() };
    bad_models.push((Model { head: Some(head), ..good.clone() }, "empty head", vec!["head.out.bias", "at least 1"]));
    let mut bad_episodes: Vec<(Episode, &str, Vec<&str>)> = Vec::new();
    for len in [B * T * O - 1, B * T * O + 1] {
        bad_episodes.push((
            Episode { targets: vec![0.0; len], ..ep.clone() },
            "targets",
            vec!["targets:", "expected shape (2, 5, 3)", "O = 3"],
        ));
    }
    for len in [B * T - 1, B * T + 1] {
        bad_episodes.push((
            Episode { mask: vec![1.0; len], ..ep.clone() },
            "mask",
            vec!["mask:", "expected shape (2, 5)", "got "],
        ));
    }
    for device in DEVICES {
        let mut e = engine(cfg, device, false);
        for (m, what, needles) in &bad_models {
            assert_err(m.loss_and_grad(&mut e, &ep), &format!("{what} {device:?}"), needles);
            assert_err(m.loss(&mut e, &ep), &format!("{what} {device:?} loss"), needles);
        }
        for (bad, what, needles) in &bad_episodes {
            assert_err(good.loss_and_grad(&mut e, bad), &format!("{what} {device:?}"), needles);
            assert_err(good.loss(&mut e, bad), &format!("{what} {device:?} loss"), needles);
        }
        // Without a head the outputs are h: O = N.
        let headless = Model { head: None, ..good.clone() };
        assert_err(headless.loss_and_grad(&mut e, &ep), "headless targets", &["targets:", "expected shape (2, 5, 4)"]);
        // The model's own engine must match its layer.
        let mut other = engine(full(Rule::Hebb), device, false);
        let needles = ["engine:", "another layer configuration"];
        assert_err(good.loss_and_grad(&mut other, &ep), "engine of another layer", &needles);
        // Same parameter shapes, other equations: must not be computed silently.
        let mut identity = engine(LayerConfig { activation: neuroplastic::Activation::Identity, ..cfg }, device, false);
        assert_err(good.loss_and_grad(&mut identity, &ep), "engine of another activation", &needles);
        assert_err(good.loss(&mut identity, &ep), "engine of another activation: loss", &needles);
    }
}

#[test]
fn non_finite_values_with_check_finite() {
    let cfg = full(Rule::Retroactive);
    let hebb = full(Rule::Hebb);
    for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let text = value.to_string();
        // Every parameter tensor (the rates too: their range check cannot miss them either).
        for c in [cfg, hebb] {
            let names: Vec<(usize, &str, usize)> =
                params(&c).named().iter().enumerate().map(|(k, (n, v))| (k, *n, v.len())).collect();
            for (k, name, len) in names {
                if len == 0 {
                    continue;
                }
                let mut p = params(&c);
                p.named_mut()[k].1[len - 1] = value;
                let arg = format!("params.{name}:");
                let element = format!("element {} is not finite ({text})", len - 1);
                assert_params_rejected(c, &p, true, &format!("params.{name} = {text}"), &[&arg, &element]);
            }
        }
        let p = params(&cfg);
        let xs = inputs(&cfg, B, T);
        let dy = vec![0.1f32; B * T * N];
        for device in DEVICES {
            let mut e = engine(cfg, device, true);
            // inputs
            let mut bad = xs.clone();
            bad[7] = value;
            let needles = ["inputs:", "element 7 is not finite"];
            assert_err(e.forward(&p, Seq::new(&bad, B, T), None), &format!("inputs {text} {device:?}"), &needles);
            let fwd = forward(&mut e, &p, &xs);
            let r = e.backward(&p, Seq::new(&bad, B, T), &fwd, &dy, None);
            assert_err(r, &format!("inputs {text} {device:?} backward"), &needles);
            // dy
            let mut bad_dy = dy.clone();
            bad_dy[3] = value;
            let r = e.backward(&p, Seq::new(&xs, B, T), &fwd, &bad_dy, None);
            assert_err(r, &format!("dy {text} {device:?}"), &["dy:", "element 3 is not finite"]);
            // init and dlast, each tensor
            for (which, name) in ["h", "hebb", "elig"].into_iter().enumerate() {
                let mut s = state(&cfg, B);
                [&mut s.h, &mut s.hebb, &mut s.elig][which][1] = value;
                let init = format!("init.{name}:");
                let r = e.forward(&p, Seq::new(&xs, B, T), Some(&s));
                assert_err(r, &format!("init.{name} {text} {device:?}"), &[&init, "element 1 is not finite"]);
                let dlast = format!("dlast.{name}:");
                let r = e.backward(&p, Seq::new(&xs, B, T), &fwd, &dy, Some(&s));
                assert_err(r, &format!("dlast.{name} {text} {device:?}"), &[&dlast, "element 1 is not finite"]);
                let ep = Episode { init: Some(s.clone()), ..episode(&cfg) };
                assert_err(model(cfg).loss_and_grad(&mut e, &ep), &format!("episode init {text}"), &[&init]);
            }
            // The model's head and the episode's targets and mask.
            let mut m = model(cfg);
            m.head.as_mut().unwrap().weight[2] = value;
            assert_err(m.loss_and_grad(&mut e, &episode(&cfg)), "head weight", &["head.out.weight:", "element 2"]);
            let mut m = model(cfg);
            m.head.as_mut().unwrap().bias[1] = value;
            assert_err(m.loss_and_grad(&mut e, &episode(&cfg)), "head bias", &["head.out.bias:", "element 1"]);
            let mut ep = episode(&cfg);
            ep.targets[4] = value;
            assert_err(model(cfg).loss_and_grad(&mut e, &ep), "targets", &["targets:", "element 4"]);
            let mut ep = episode(&cfg);
            ep.mask[5] = value;
            assert_err(model(cfg).loss_and_grad(&mut e, &ep), "mask", &["mask:", "element 5"]);
            let mut ep = episode(&cfg);
            ep.inputs[6] = value;
            assert_err(model(cfg).loss_and_grad(&mut e, &ep), "episode inputs", &["inputs:", "element 6"]);
        }
        // The reference always checks dy (it has no option to turn checks off or on).
        let mut bad_dy = v64(&dy);
        bad_dy[3] = value as f64;
        let r = reference::backward(&cfg, &to64(&p), Seq::new(&v64(&xs), B, T), None, &bad_dy, None, Truncation::None);
        assert_err(r, &format!("reference::backward dy {text}"), &["dy:", "element 3 is not finite"]);
    }
}

#[test]
fn forward_and_backward_must_match() {
    let cfg = full(Rule::Retroactive);
    let (p, xs) = (params(&cfg), inputs(&cfg, B, T));
    let dy = vec![0.1f32; B * T * N];
    let mut on = [engine(cfg, Device::Reference, false), engine(cfg, Device::Cpu, false)];
    let fwd = [forward(&mut on[0], &p, &xs), forward(&mut on[1], &p, &xs)];
    // A Forward from the other device.
    for (k, names) in [(0, ("reference", "cpu")), (1, ("cpu", "reference"))] {
        let r = on[1 - k].backward(&p, Seq::new(&xs, B, T), &fwd[k], &dy, None);
        assert_err(r, &format!("{} Forward to {}", names.0, names.1), &["fwd:", names.0, names.1]);
    }
    for (k, e) in on.iter_mut().enumerate() {
        // Other B or T than the forward pass (the data and dy sized to match the claim).
        for (batch, steps) in [(B + 1, T), (B, T - 1), (1, T)] {
            let xs2 = inputs(&cfg, batch, steps);
            let dy2 = vec![0.1f32; batch * steps * N];
            let r = e.backward(&p, Seq::new(&xs2, batch, steps), &fwd[k], &dy2, None);
            let got = format!("got B = {batch}, T = {steps}");
            assert_err(r, &format!("B = {batch}, T = {steps}"), &["inputs:", "ran with B = 2, T = 5", &got]);
        }
        // A Forward of another layer configuration (same device, same B and T).
        let other = LayerConfig { bias: false, ..cfg };
        let mut e2 = engine(other, e.device(), false);
        let p2 = params(&other);
        let r = e2.backward(&p2, Seq::new(&xs, B, T), &fwd[k], &dy, None);
        assert_err(r, "Forward of another configuration", &["fwd:", "another layer configuration"]);
        // None of the refusals above disturbed the engine.
        e.backward(&p, Seq::new(&xs, B, T), &fwd[k], &dy, None).expect("the matching backward still works");
    }
}

#[test]
fn plastic_step_fwd_slice_lengths() {
    let cfg = full(Rule::Retroactive);
    let p = to64(&params(&cfg));
    let (input, h, trace) = (vec![0.1; X], vec![0.1; N], vec![0.1; N * N]);
    let (mut next_hebb, mut next_elig) = (vec![0.0; N * N], vec![0.0; N * N]);
    reference::plastic_step_fwd(&cfg, &p, &input, &h, &trace, &trace, &mut next_hebb, &mut next_elig)
        .expect("valid slices");
    let short = |v: &Vec<f64>| v[1..].to_vec();
    let (si, sh, st) = (short(&input), short(&h), short(&trace));
    let (mut snh, mut sne) = (short(&next_hebb), short(&next_elig));
    let r = reference::plastic_step_fwd(&cfg, &p, &si, &h, &trace, &trace, &mut next_hebb, &mut next_elig);
    assert_err(r, "input", &["input:", "expected shape (3,)", "got 2"]);
    let r = reference::plastic_step_fwd(&cfg, &p, &input, &sh, &trace, &trace, &mut next_hebb, &mut next_elig);
    assert_err(r, "h_prev", &["h_prev:", "expected shape (4,)", "got 3"]);
    let r = reference::plastic_step_fwd(&cfg, &p, &input, &h, &st, &trace, &mut next_hebb, &mut next_elig);
    assert_err(r, "hebb", &["hebb:", "expected shape (4, 4)", "got 15"]);
    let r = reference::plastic_step_fwd(&cfg, &p, &input, &h, &trace, &st, &mut next_hebb, &mut next_elig);
    assert_err(r, "elig", &["elig:", "expected shape (4, 4)", "got 15"]);
    let r = reference::plastic_step_fwd(&cfg, &p, &input, &h, &trace, &trace, &mut snh, &mut next_elig);
    assert_err(r, "hebb_next", &["hebb_next:", "expected shape (4, 4)"]);
    let r = reference::plastic_step_fwd(&cfg, &p, &input, &h, &trace, &trace, &mut next_hebb, &mut sne);
    assert_err(r, "elig_next", &["elig_next:", "expected shape (4, 4)"]);
    let mut bad = p.clone();
    bad.mod_v.pop();
    let r = reference::plastic_step_fwd(&cfg, &bad, &input, &h, &trace, &trace, &mut next_hebb, &mut next_elig);
    assert_err(r, "params", &["params.mod.v:", "expected shape (2, 4)"]);
    // A feed-forward layer has no h: a non-empty h_prev is refused.
    let ff = LayerConfig::feed_forward(Rule::Hebb, X, N);
    let pf = to64(&params(&ff));
    let (t_ff, mut n_ff) = (vec![0.0; N * X], vec![0.0; N * X]);
    let r = reference::plastic_step_fwd(&ff, &pf, &input, &h, &t_ff, &[], &mut n_ff, &mut []);
    assert_err(r, "feed-forward h_prev", &["h_prev:", "expected shape (0,)", "got 4"]);
}
