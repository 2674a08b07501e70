//! Outputs and gradients of the CPU backend are bitwise the same on one and
//! on two threads: the work is split into fixed row blocks and every sum is
//! combined in a fixed order, whatever the thread count. The shapes are big
//! enough for the rows to be split into many blocks (B = 3 with N = 210, and
//! B = 1 with N = 400, where only splitting rows can keep two threads busy),
//! and B = 6 runs episode-parallel (one task per episode, `dα` and `dη`
//! summed over episodes in a fixed order). Each step's pass is above the
//! size (B·N·I ≥ 2^17) below which the CPU backend runs a pass on the
//! calling thread alone, so the threads really share the work.

use neuroplastic::*;

fn lcg(s: &mut u64) -> f32 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32
}

fn fill(len: usize, scale: f32, s: &mut u64) -> Vec<f32> {
    (0..len).map(|_| lcg(s) * scale).collect()
}

/// Everything the engine returns for one forward + backward, flattened.
fn run(cfg: &LayerConfig, b: usize, t: usize, threads: usize, seed: u64) -> Vec<(String, Vec<f32>)> {
    let mut s = seed;
    let mut p = Params::<f32>::zeros(cfg);
    let i = cfg.pre() as f32;
    for (name, v) in p.named_mut() {
        let scale = if name == "w" || name == "alpha" { 1.5 / i.sqrt() } else { 0.5 };
        *v = fill(v.len(), scale, &mut s);
    }
    for e in p.eta.iter_mut().chain(p.eta_e.iter_mut()) {
        *e = 0.3;
    }
    let xs = fill(b * t * cfg.inputs, 1.0, &mut s);
    let mut init = State::<f32>::zeros(cfg, b);
    init.h = fill(init.h.len(), 0.5, &mut s);
    init.hebb = fill(init.hebb.len(), 0.3, &mut s);
    init.elig = fill(init.elig.len(), 0.3, &mut s);
    let dy = fill(b * t * cfg.n, 1.0, &mut s);
    let opts = Options { threads: Some(threads), checkpoint: Checkpoint::Every(2), ..Options::default() };
    let mut eng = Engine::new(*cfg, Device::Cpu, opts).unwrap();
    let fwd = eng.forward(&p, Seq::new(&xs, b, t), Some(&init)).unwrap();
    let g = eng.backward(&p, Seq::new(&xs, b, t), &fwd, &dy, None).unwrap();
    let mut out = vec![
        ("y".to_string(), fwd.y.clone()),
        ("last.h".into(), fwd.last.h.clone()),
        ("last.hebb".into(), fwd.last.hebb.clone()),
        ("last.elig".into(), fwd.last.elig.clone()),
        ("grad inputs".into(), g.inputs.clone()),
        ("grad init.h".into(), g.init.h.clone()),
        ("grad init.hebb".into(), g.init.hebb.clone()),
        ("grad init.elig".into(), g.init.elig.clone()),
    ];
    for (name, v) in g.params.named() {
        out.push((format!("grad {name}"), v.clone()));
    }
    out
}

fn assert_bitwise(cfg: &LayerConfig, b: usize, t: usize) {
    assert_bitwise_on(cfg, b, t, 2);
}

/// 1 thread against `threads` threads.
fn assert_bitwise_on(cfg: &LayerConfig, b: usize, t: usize, threads: usize) {
    let one = run(cfg, b, t, 1, 42);
    let two = run(cfg, b, t, threads, 42);
    for ((name, a), (_, c)) in one.iter().zip(&two) {
        assert_eq!(a.len(), c.len(), "{name}");
        if let Some(k) = a.iter().zip(c).position(|(x, y)| x.to_bits() != y.to_bits()) {
            panic!(
                "{} {:?} B = {b} N = {}: {name}[{k}] differs: 1 thread {:e}, {threads} threads {:e}",
                cfg.rule.name(),
                cfg.alpha,
                cfg.n,
                a[k],
                c[k]
            );
        }
    }
    // Not vacuous: the run produced non-zero gradients.
    assert!(one.iter().any(|(n, v)| n == "grad w" && v.iter().any(|x| *x != 0.0)));
}

#[test]
fn one_and_two_threads_agree_bitwise_batched() {
    for rule in Rule::ALL {
        for alpha in AlphaShape::ALL {
            let mut cfg = LayerConfig::recurrent(rule, 210, 5);
            cfg.alpha = alpha;
            cfg.clip = 0.5;
            assert_bitwise(&cfg, 3, 5);
            assert_bitwise(&cfg, 6, 5);
        }
        let cfg = LayerConfig::feed_forward(rule, 160, 300);
        assert_bitwise(&cfg, 3, 4);
        assert_bitwise(&cfg, 7, 4);
    }
}

/// Fewer episodes than threads: an episode-parallel call then also splits
/// each episode's passes into blocks across the idle threads (nested), which
/// must not change a bit either.
#[test]
fn more_threads_than_episodes_agree_bitwise() {
    for rule in Rule::ALL {
        let mut cfg = LayerConfig::recurrent(rule, 210, 5);
        cfg.clip = 0.5;
        assert_bitwise_on(&cfg, 5, 5, 8);
    }
}

#[test]
fn one_and_two_threads_agree_bitwise_single_episode() {
    for rule in Rule::ALL {
        let mut cfg = LayerConfig::recurrent(rule, 400, 7);
        cfg.clip = 0.5;
        assert_bitwise(&cfg, 1, 4);
    }
}
