//! Checkpointed back-propagation: every checkpoint interval gives the same
//! gradients, bit for bit, where the backward recomputes a segment's traces
//! with the forward's own update code (the clipped rules always; Hebb and Oja
//! at large η), and to f32 rounding where it reconstructs them backwards
//! (Hebb and Oja at small η); and the memory kept between the forward and
//! the backward pass grows sub-linearly in T with `Checkpoint::Auto`
//! (snapshots every ⌈√T⌉ steps) and linearly with `Checkpoint::All`.

use neuroplastic::*;

fn lcg(s: &mut u64) -> f32 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32
}

fn fill(len: usize, scale: f32, s: &mut u64) -> Vec<f32> {
    (0..len).map(|_| lcg(s) * scale).collect()
}

struct Problem {
    cfg: LayerConfig,
    p: Params<f32>,
    xs: Vec<f32>,
    dy: Vec<f32>,
    init: State<f32>,
    dlast: State<f32>,
    b: usize,
    t: usize,
}

fn problem(cfg: LayerConfig, b: usize, t: usize, seed: u64) -> Problem {
    let mut s = seed;
    let mut p = Params::<f32>::zeros(&cfg);
    let i = cfg.pre() as f32;
    for (name, v) in p.named_mut() {
        let scale = if name == "w" || name == "alpha" { 1.5 / i.sqrt() } else { 0.5 };
        *v = fill(v.len(), scale, &mut s);
    }
    for e in p.eta.iter_mut().chain(p.eta_e.iter_mut()) {
        *e = 0.4;
    }
    let xs = fill(b * t * cfg.inputs, 1.0, &mut s);
    let dy = fill(b * t * cfg.n, 1.0, &mut s);
    let mut init = State::<f32>::zeros(&cfg, b);
    init.h = fill(init.h.len(), 0.5, &mut s);
    init.hebb = fill(init.hebb.len(), 0.3, &mut s);
    init.elig = fill(init.elig.len(), 0.3, &mut s);
    let mut dlast = State::<f32>::zeros(&cfg, b);
    dlast.h = fill(dlast.h.len(), 1.0, &mut s);
    dlast.hebb = fill(dlast.hebb.len(), 1.0, &mut s);
    dlast.elig = fill(dlast.elig.len(), 1.0, &mut s);
    Problem { cfg, p, xs, dy, init, dlast, b, t }
}

/// (forward outputs, gradients flattened, saved bytes) under `checkpoint`.
fn grads(pb: &Problem, checkpoint: Checkpoint, truncate: Truncation) -> (Vec<Vec<f32>>, usize) {
    let opts = Options { checkpoint, truncate, ..Options::default() };
    let mut eng = Engine::new(pb.cfg, Device::Cpu, opts).unwrap();
    let seq = Seq::new(&pb.xs, pb.b, pb.t);
    let fwd = eng.forward(&pb.p, seq, Some(&pb.init)).unwrap();
    let g = eng.backward(&pb.p, seq, &fwd, &pb.dy, Some(&pb.dlast)).unwrap();
    let mut v = vec![fwd.y.clone(), fwd.last.hebb.clone(), g.inputs, g.init.h, g.init.hebb, g.init.elig];
    v.extend(g.params.named().into_iter().map(|(_, t)| t.clone()));
    (v, fwd.saved_bytes())
}

#[test]
fn every_interval_gives_the_same_gradients_bitwise() {
    let t = 11;
    for rule in Rule::ALL {
        for recurrent in [true, false] {
            let mut cfg =
                if recurrent { LayerConfig::recurrent(rule, 13, 6) } else { LayerConfig::feed_forward(rule, 10, 13) };
            cfg.clip = 0.4;
            let pb = problem(cfg, if (rule as u64).is_multiple_of(2) { 2 } else { 5 }, t, 7 + rule as u64);
            for truncate in [Truncation::None, Truncation::Last(5), Truncation::Windows(3)] {
                let (all, _) = grads(&pb, Checkpoint::All, truncate);
                assert!(all[7].iter().any(|v| *v != 0.0), "the gradient of W is zero: a vacuous comparison");
                let intervals = (1..=t + 2).map(Checkpoint::Every).chain([Checkpoint::Auto]);
                for ck in intervals {
                    let (g, _) = grads(&pb, ck, truncate);
                    for (k, (a, b)) in all.iter().zip(&g).enumerate() {
                        let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(
                            same,
                            "{} recurrent={recurrent} {truncate:?} {ck:?}: tensor #{k} differs from Checkpoint::All",
                            rule.name()
                        );
                    }
                }
            }
        }
    }
}

/// At η = 0.01 the Hebb and Oja backward reconstructs each segment's traces
/// backwards from its last state; every interval must agree with
/// `Checkpoint::All` (which reads every state from its snapshot) to f32
/// rounding: 1e-4 of each tensor's largest entry, the tolerance of the f32
/// backend against the f64 reference (`dη` sums `g·(y x − H)` over every
/// connection and step, with cancellation, and sees ~2e-5 here).
#[test]
fn reconstructed_traces_give_the_same_gradients_to_rounding() {
    let t = 40;
    for rule in [Rule::Hebb, Rule::Oja] {
        for recurrent in [true, false] {
            let cfg =
                if recurrent { LayerConfig::recurrent(rule, 13, 6) } else { LayerConfig::feed_forward(rule, 10, 13) };
            let mut pb = problem(cfg, if recurrent { 2 } else { 5 }, t, 11 + rule as u64);
            pb.p.eta[0] = 0.01;
            for truncate in [Truncation::None, Truncation::Last(17), Truncation::Windows(9)] {
                let (all, _) = grads(&pb, Checkpoint::All, truncate);
                for ck in [Checkpoint::Auto, Checkpoint::Every(2), Checkpoint::Every(13), Checkpoint::Every(40)] {
                    let (g, _) = grads(&pb, ck, truncate);
                    let mut bitwise = true;
                    for (k, (a, b)) in all.iter().zip(&g).enumerate() {
                        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
                        let worst = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
                        bitwise &= a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(
                            worst <= 1e-4 * scale,
                            "{} recurrent={recurrent} {truncate:?} {ck:?}: tensor #{k} off by {worst:e} (largest {scale:e})",
                            rule.name()
                        );
                    }
                    // Not vacuous: the reconstruction ran (its rounding differs
                    // from the stored states somewhere).
                    assert!(!bitwise, "{} {ck:?}: bitwise equal, so nothing was reconstructed", rule.name());
                }
            }
        }
    }
}

/// Where the backward reconstructs, `Auto` takes the longest interval that
/// still does (41 at η = 0.01: `40·(−ln 0.99) ≤ ln 1.5 < 41·(−ln 0.99)`)
/// when that keeps fewer traces than `⌈√T⌉` would; elsewhere it is `⌈√T⌉`.
#[test]
fn auto_takes_the_longest_reconstructing_interval() {
    let t = 200;
    let cfg = LayerConfig::recurrent(Rule::Hebb, 13, 6);
    let mut pb = problem(cfg, 2, t, 5);
    pb.p.eta[0] = 0.01;
    assert_eq!(Checkpoint::Auto.interval(&cfg, &pb.p, t), 41);
    assert_eq!(Checkpoint::Auto.interval(&cfg, &pb.p, 30), 30);
    assert_eq!(Checkpoint::Every(7).interval(&cfg, &pb.p, t), 7);
    let (auto, auto_bytes) = grads(&pb, Checkpoint::Auto, Truncation::None);
    let (sqrt, sqrt_bytes) = grads(&pb, Checkpoint::Every(15), Truncation::None);
    let trace = 2 * 13 * 13 * 4;
    // ⌈200/41⌉ = 5 snapshots + the final state, against ⌈200/15⌉ = 14 + 1.
    assert!(sqrt_bytes - auto_bytes >= 9 * trace, "Auto kept {auto_bytes} bytes, Every(15) {sqrt_bytes}");
    for (k, (a, b)) in auto.iter().zip(&sqrt).enumerate() {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
        let worst = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(worst <= 1e-4 * scale, "tensor #{k} off by {worst:e} (largest {scale:e})");
    }
    // Long episodes: 10000/41 + 1 = 245 snapshots reconstructing, against
    // 100 + 99 replaying at ⌈√T⌉ = 100 (which cannot reconstruct).
    assert_eq!(Checkpoint::Auto.interval(&cfg, &pb.p, 10000), 100);
    // 3600: 88 + 1 against 60 + 59.
    assert_eq!(Checkpoint::Auto.interval(&cfg, &pb.p, 3600), 41);
    pb.p.eta[0] = 0.4;
    assert_eq!(Checkpoint::Auto.interval(&cfg, &pb.p, t), 15);
}

#[test]
fn saved_memory_is_sublinear_with_auto_and_linear_with_all() {
    for rule in [Rule::Hebb, Rule::Retroactive] {
        let bytes = |t: usize, ck: Checkpoint| {
            let pb = problem(LayerConfig::recurrent(rule, 48, 3), 2, t, 3);
            grads(&pb, ck, Truncation::None).1
        };
        let trace = 2 * 48 * 48 * 4 * if rule == Rule::Retroactive { 2 } else { 1 };
        let (a16, a64, a256) = (bytes(16, Checkpoint::Auto), bytes(64, Checkpoint::Auto), bytes(256, Checkpoint::Auto));
        let (l16, l64) = (bytes(16, Checkpoint::All), bytes(64, Checkpoint::All));
        // All: every step's traces, so ×4 the steps is ×4 the memory.
        assert!(l16 >= 16 * trace && l64 >= 64 * trace, "All keeps every step: {l16} {l64}");
        let r = l64 as f64 / l16 as f64;
        assert!((3.8..=4.2).contains(&r), "All: ×4 steps gave ×{r:.2} memory");
        // Auto: √T snapshots, so ×4 the steps is about ×2 the memory.
        // ⌈T/⌈√T⌉⌉ snapshots plus per-step vectors (y: B·N floats per step).
        assert!(a16 < 6 * trace && a64 < 10 * trace && a256 < 24 * trace, "Auto: {a16} {a64} {a256} (trace {trace})");
        assert!(a256 * 10 < bytes(256, Checkpoint::All), "Auto at T = 256 should hold a tenth of All");
        for (lo, hi) in [(a16, a64), (a64, a256)] {
            let r = hi as f64 / lo as f64;
            assert!(r < 2.6, "Auto: ×4 steps gave ×{r:.2} memory");
        }
    }
}

#[test]
fn a_forward_of_another_layer_is_refused() {
    let pb = problem(LayerConfig::recurrent(Rule::Hebb, 9, 4), 2, 5, 1);
    let mut a = Engine::new(pb.cfg, Device::Cpu, Options::default()).unwrap();
    let seq = Seq::new(&pb.xs, pb.b, pb.t);
    let fwd = a.forward(&pb.p, seq, None).unwrap();
    // Same shapes, another rule: the engine refuses the Forward before the backend sees it.
    let other = problem(LayerConfig::recurrent(Rule::Retroactive, 9, 4), 2, 5, 1);
    let mut b = Engine::new(other.cfg, Device::Cpu, Options::default()).unwrap();
    let err = b.backward(&other.p, seq, &fwd, &pb.dy, None).unwrap_err();
    assert!(err.to_string().contains("another layer configuration"), "{err}");
    // The right engine still works with it.
    assert!(a.backward(&pb.p, seq, &fwd, &pb.dy, None).is_ok());
}
