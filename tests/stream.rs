//! Streaming windows vs one truncated backward over the whole sequence, and
//! resuming a stream from its saved state.

use neuroplastic::{Device, Engine, LayerConfig, Options, Params, Rule, Seq, Stream, Truncation};

fn lcg(s: &mut u64) -> f32 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn setup(rule: Rule) -> (LayerConfig, Params<f32>, Vec<f32>, Vec<f32>) {
    let (n, x, b, t) = (6, 3, 2, 12);
    let mut cfg = LayerConfig::recurrent(rule, n, x);
    cfg.clip = 0.5;
    let mut s = 11u64;
    let mut p = Params::<f32>::zeros(&cfg);
    for (_, v) in p.named_mut() {
        v.iter_mut().for_each(|e| *e = 0.8 * lcg(&mut s));
    }
    p.eta.iter_mut().chain(p.eta_e.iter_mut()).for_each(|e| *e = 0.3);
    let inputs: Vec<f32> = (0..b * t * x).map(|_| lcg(&mut s)).collect();
    let dy: Vec<f32> = (0..b * t * n).map(|_| lcg(&mut s)).collect();
    (cfg, p, inputs, dy)
}

/// Columns `[t0, t0 + k)` of a `(B, T, F)` tensor.
fn window(v: &[f32], b: usize, t: usize, f: usize, t0: usize, k: usize) -> Vec<f32> {
    (0..b).flat_map(|e| v[(e * t + t0) * f..(e * t + t0 + k) * f].to_vec()).collect()
}

#[test]
fn windows_sum_to_truncated_backward() {
    for device in [Device::Reference, Device::Cpu] {
        for rule in Rule::ALL {
            let (cfg, p, inputs, dy) = setup(rule);
            let (b, t, k, n, x) = (2, 12, 4, cfg.n, cfg.inputs);
            let opts = Options { truncate: Truncation::Windows(k), ..Options::default() };
            let mut whole = Engine::new(cfg, device, opts).unwrap();
            let fwd = whole.forward(&p, Seq::new(&inputs, b, t), None).unwrap();
            let g = whole.backward(&p, Seq::new(&inputs, b, t), &fwd, &dy, None).unwrap();

            let mut eng = Engine::new(cfg, device, Options::default()).unwrap();
            let mut stream = Stream::new(&cfg, b);
            let mut sum = Params::<f32>::zeros(&cfg);
            let mut ys = Vec::new();
            for t0 in (0..t).step_by(k) {
                let xin = window(&inputs, b, t, x, t0, k);
                let dyw = window(&dy, b, t, n, t0, k);
                let w = stream.window(&mut eng, &p, &xin, k, |_| dyw).unwrap();
                for ((_, a), (_, g)) in sum.named_mut().into_iter().zip(w.grads.params.named()) {
                    a.iter_mut().zip(g).for_each(|(a, g)| *a += g);
                }
                let gin = window(&g.inputs, b, t, x, t0, k);
                for (q, (a, e)) in w.grads.inputs.iter().zip(&gin).enumerate() {
                    assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{rule:?} {device:?} input grad {q}: {a} vs {e}");
                }
                ys.push(w.y);
            }
            assert_eq!(stream.steps_done, t);
            for ((name, a), (_, e)) in sum.named().into_iter().zip(g.params.named()) {
                for (q, (a, e)) in a.iter().zip(e).enumerate() {
                    assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{rule:?} {device:?} {name}[{q}]: {a} vs {e}");
                }
            }
            // The streamed forward is the whole forward (up to the f32
            // rounding of the carried state for the f64 reference).
            for (w, t0) in ys.iter().zip((0..t).step_by(k)) {
                let whole_y = window(&fwd.y, b, t, n, t0, k);
                for (a, e) in w.iter().zip(&whole_y) {
                    assert!((a - e).abs() <= 1e-5, "{rule:?} {device:?} y of window at {t0}: {a} vs {e}");
                }
            }
        }
    }
}

#[test]
fn resume_from_saved_state_continues_identically() {
    let (cfg, p, inputs, dy) = setup(Rule::Retroactive);
    let (b, t, k, n, x) = (2, 12, 4, cfg.n, cfg.inputs);
    let mut eng = Engine::new(cfg, Device::Cpu, Options::default()).unwrap();
    let mut a = Stream::new(&cfg, b);
    let mut outs = Vec::new();
    for t0 in (0..t).step_by(k) {
        let dyw = window(&dy, b, t, n, t0, k);
        outs.push(a.window(&mut eng, &p, &window(&inputs, b, t, x, t0, k), k, |_| dyw).unwrap().grads.params);
    }
    // Stop after the first window, save, resume in a new stream.
    let mut first = Stream::new(&cfg, b);
    let dyw = window(&dy, b, t, n, 0, k);
    first.window(&mut eng, &p, &window(&inputs, b, t, x, 0, k), k, |_| dyw).unwrap();
    let mut resumed = Stream::resume(&cfg, first.state.clone(), b, first.steps_done).unwrap();
    for (i, t0) in (k..t).step_by(k).enumerate() {
        let dyw = window(&dy, b, t, n, t0, k);
        let g = resumed.window(&mut eng, &p, &window(&inputs, b, t, x, t0, k), k, |_| dyw).unwrap().grads.params;
        assert_eq!(g, outs[i + 1], "window {}", i + 1);
    }
    assert_eq!(resumed.state, a.state);
    // A state of the wrong batch is refused, naming it.
    let e = Stream::resume(&cfg, first.state.clone(), b + 1, 0).unwrap_err().to_string();
    assert!(e.contains("state.h"), "{e}");
}
