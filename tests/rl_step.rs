//! The step-at-a-time API: a closed loop (each input computed from the
//! previous output) run through `Engine::stepper` gives the outputs and the
//! gradients of a whole-episode `forward` + `backward` on the recorded
//! inputs, bitwise on the CPU and on the reference, for every rule, grouped
//! (episode-parallel) and step-parallel shapes, zero and given initial
//! states, and any thread count.

mod common;

use common::Rng;
use neuroplastic::{
    Checkpoint, Device, Engine, Gradients, LayerConfig, Options, Params, Rule, Seq, State, Stepped, StepperF64,
};

fn params(cfg: &LayerConfig, rng: &mut Rng) -> Params<f32> {
    let mut p = Params::<f64>::zeros(cfg);
    for (name, v) in p.named_mut() {
        match name {
            "eta" | "eta_e" => rng.fill(v, 0.05, 0.3),
            "alpha" => rng.fill(v, -0.3, 0.3),
            _ => rng.fill(v, -0.5, 0.5),
        }
    }
    p.map(|v| v as f32)
}

fn config(rule: Rule, n: usize, x: usize) -> LayerConfig {
    let mut cfg = LayerConfig::recurrent(rule, n, x);
    cfg.bias = true;
    cfg.modulator.fanout = true;
    cfg
}

/// Runs a closed loop of `t` steps: x_{t+1} is a fixed function of y_t.
fn closed_loop(
    engine: &mut Engine,
    p: &Params<f32>,
    b: usize,
    t: usize,
    init: Option<&State<f32>>,
    dy: &[f32],
) -> (Stepped, Gradients<f32>, Vec<f32>) {
    let (n, x) = (engine.config().n, engine.config().inputs);
    let mut st = engine.stepper(p, b, t, init).unwrap();
    let mut input: Vec<f32> = (0..b * x).map(|k| ((k % 5) as f32 - 2.0) * 0.3).collect();
    let mut ys = Vec::new();
    for _ in 0..t {
        let y = st.step(&input).unwrap().to_vec();
        assert_eq!(y.len(), b * n);
        for e in 0..b {
            for k in 0..x {
                input[e * x + k] = (y[e * n + (k % n)] * 1.7 + 0.1 * k as f32).sin();
            }
        }
        ys.extend(y);
    }
    let (s, g) = st.backward(dy, None).unwrap();
    (s, g, ys)
}

#[allow(clippy::too_many_arguments)]
fn check(device: Device, rule: Rule, b: usize, n: usize, x: usize, t: usize, with_init: bool, ck: Checkpoint) {
    let cfg = config(rule, n, x);
    let mut rng = Rng::new((b * 1000 + n * 10 + t) as u64);
    let p = params(&cfg, &mut rng);
    let init = with_init.then(|| {
        let mut s = State::<f64>::zeros(&cfg, b);
        rng.fill(&mut s.h, -0.5, 0.5);
        rng.fill(&mut s.hebb, -0.5, 0.5);
        rng.fill(&mut s.elig, -0.5, 0.5);
        s.map(|v| v as f32)
    });
    let dy: Vec<f32> = rng.vec(b * t * n, -1.0, 1.0).into_iter().map(|v| v as f32).collect();
    let opts = Options { checkpoint: ck, ..Options::default() };
    let mut engine = Engine::new(cfg, device, opts).unwrap();
    let (s, g, ys) = closed_loop(&mut engine, &p, b, t, init.as_ref(), &dy);
    // The step outputs, gathered (B, T, N), are the episode's y.
    for e in 0..b {
        for k in 0..t {
            assert_eq!(&ys[(k * b + e) * n..(k * b + e + 1) * n], &s.fwd.y[(e * t + k) * n..(e * t + k + 1) * n]);
        }
    }
    let seq = Seq::new(&s.inputs, b, t);
    let fwd = engine.forward(&p, seq, init.as_ref()).unwrap();
    let what = format!("{device:?} {rule:?} B={b} N={n} X={x} T={t} init={with_init} {ck:?}");
    assert_eq!(fwd.y, s.fwd.y, "y: {what}");
    assert_eq!(fwd.last, s.fwd.last, "last state: {what}");
    assert_eq!(fwd.saved_bytes(), s.fwd.saved_bytes(), "saved bytes: {what}");
    let g2 = engine.backward(&p, seq, &fwd, &dy, None).unwrap();
    assert_eq!(g, g2, "gradients: {what}");
    assert!(g.params.w.iter().any(|&v| v != 0.0), "{what}: a zero gradient proves nothing");
}

#[test]
fn cpu_stepping_equals_whole_episode() {
    for rule in Rule::ALL {
        // Grouped (B ≥ 4, small N) and step-parallel (B = 2; B = 3 with N = 37).
        check(Device::Cpu, rule, 5, 9, 4, 7, false, Checkpoint::Auto);
        check(Device::Cpu, rule, 2, 13, 3, 11, true, Checkpoint::Auto);
        check(Device::Cpu, rule, 3, 37, 5, 6, false, Checkpoint::Every(4));
        check(Device::Cpu, rule, 4, 8, 2, 5, true, Checkpoint::All);
    }
}

#[test]
fn reference_stepping_equals_whole_episode() {
    for rule in Rule::ALL {
        check(Device::Reference, rule, 2, 5, 3, 6, false, Checkpoint::Auto);
        check(Device::Reference, rule, 3, 4, 2, 4, true, Checkpoint::Auto);
    }
}

#[test]
fn stepping_is_bitwise_the_same_on_one_and_two_threads() {
    for rule in [Rule::Hebb, Rule::Retroactive] {
        for (b, n) in [(6, 10), (2, 40)] {
            let cfg = config(rule, n, 3);
            let p = params(&cfg, &mut Rng::new(3));
            let dy = vec![0.25f32; b * 9 * n];
            let mut out = Vec::new();
            for threads in [1, 2] {
                let opts = Options { threads: Some(threads), ..Options::default() };
                let mut engine = Engine::new(cfg, Device::Cpu, opts).unwrap();
                let (s, g, _) = closed_loop(&mut engine, &p, b, 9, None, &dy);
                out.push((s.fwd.y, g));
            }
            assert_eq!(out[0], out[1], "{rule:?} B={b} N={n}");
        }
    }
}

#[test]
fn f64_stepper_matches_the_reference_forward() {
    let cfg = config(Rule::Retroactive, 5, 3);
    let p = params(&cfg, &mut Rng::new(9)).map(f64::from);
    let mut st = StepperF64::new(cfg, p.clone(), 2, 4, None).unwrap();
    let mut x = vec![0.3f64; 6];
    for _ in 0..4 {
        let y = st.step(&x).unwrap().to_vec();
        x.iter_mut().zip(&y).for_each(|(a, b)| *a = b.cos());
    }
    let e = st.finish().unwrap();
    let (y, last) = neuroplastic::reference::forward(&cfg, &p, Seq::new(&e.inputs, 2, 4), None).unwrap();
    assert_eq!(y, e.y);
    assert_eq!(last, e.last);
}

#[test]
fn bad_use_is_a_clear_error() {
    let cfg = config(Rule::Modulated, 4, 3);
    let p = params(&cfg, &mut Rng::new(1));
    for device in [Device::Cpu, Device::Reference] {
        let mut engine = Engine::new(cfg, device, Options::default()).unwrap();
        let e = engine.stepper(&p, 0, 5, None).err().unwrap().to_string();
        assert!(e.contains("batch"), "{e}");
        let e = engine.stepper(&p, 2, 0, None).err().unwrap().to_string();
        assert!(e.contains("steps"), "{e}");
        let mut st = engine.stepper(&p, 2, 2, None).unwrap();
        let e = st.step(&[0.0; 5]).unwrap_err().to_string();
        assert!(e.contains("x (one step's inputs)") && e.contains("6"), "{e}");
        st.step(&[0.0; 6]).unwrap();
        let e = st.finish().err().unwrap().to_string();
        assert!(e.contains("only 1 have run"), "{e}");
        let mut st = engine.stepper(&p, 2, 1, None).unwrap();
        st.step(&[0.0; 6]).unwrap();
        let e = st.step(&[0.0; 6]).unwrap_err().to_string();
        assert!(e.contains("all T = 1 steps"), "{e}");
        let e = st.backward(&[0.0; 3], None).err().unwrap().to_string();
        assert!(e.contains("dy"), "{e}");
    }
}

/// The owning stepper (`Engine::stepper_owned`, what the Python bindings
/// hold) runs the same closed loop to the same outputs, final state, saved
/// episode and gradients as the borrowing one, and refuses another engine.
#[test]
fn owned_stepper_equals_borrowing_stepper() {
    for device in [Device::Cpu, Device::Reference] {
        for rule in [Rule::Hebb, Rule::Modulated, Rule::Retroactive] {
            let (b, n, x, t) = (3, 7, 4, 6);
            let cfg = config(rule, n, x);
            let mut rng = Rng::new(21);
            let p = params(&cfg, &mut rng);
            let dy: Vec<f32> = rng.vec(b * t * n, -1.0, 1.0).into_iter().map(|v| v as f32).collect();
            let opts = Options { checkpoint: Checkpoint::Every(4), ..Options::default() };
            let mut engine = Engine::new(cfg, device, opts).unwrap();
            let (s, g, ys) = closed_loop(&mut engine, &p, b, t, None, &dy);

            let mut st = engine.stepper_owned(p.clone(), b, t, None).unwrap();
            let mut input: Vec<f32> = (0..b * x).map(|k| ((k % 5) as f32 - 2.0) * 0.3).collect();
            let mut ys2 = Vec::new();
            for _ in 0..t {
                let y = st.step(&mut engine, &input).unwrap().to_vec();
                for e in 0..b {
                    for k in 0..x {
                        input[e * x + k] = (y[e * n + (k % n)] * 1.7 + 0.1 * k as f32).sin();
                    }
                }
                ys2.extend(y);
            }
            let what = format!("{device:?} {rule:?}");
            assert_eq!(st.done(), t);
            let (s2, p2) = st.finish(&engine).unwrap();
            assert_eq!(p2, p);
            assert_eq!(ys, ys2, "step outputs: {what}");
            assert_eq!(s.inputs, s2.inputs, "inputs: {what}");
            assert_eq!(s.fwd.y, s2.fwd.y, "y: {what}");
            assert_eq!(s.fwd.last, s2.fwd.last, "last: {what}");
            let g2 = engine.backward(&p2, Seq::new(&s2.inputs, b, t), &s2.fwd, &dy, None).unwrap();
            assert_eq!(g, g2, "gradients: {what}");
            assert!(g.params.w.iter().any(|&v| v != 0.0), "{what}: a zero gradient proves nothing");

            // Another configuration's engine is refused by name.
            let mut other = Engine::new(config(rule, n + 1, x), device, Options::default()).unwrap();
            let mut st = engine.stepper_owned(p.clone(), b, t, None).unwrap();
            let e = st.step(&mut other, &input).unwrap_err().to_string();
            assert!(e.contains("engine") && e.contains("started on"), "{e}");
            let e = st.step(&mut engine, &input[1..]).unwrap_err().to_string();
            assert!(e.contains("x (one step's inputs)"), "{e}");
        }
    }
}
