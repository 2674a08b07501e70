//! Per-step cost of the step-at-a-time API against a step inside a
//! whole-episode forward: `cpu/stepper/{rule}/B32_N200_T50` runs an episode of
//! T steps through `Engine::stepper` + `finish`, `cpu/forward/…` the same
//! episode through one `Engine::forward`. The ratio of the two medians is
//! the stepper's overhead per step.
//!
//! `call/forward/hebb/B1_N32_T1` is one `Engine::forward` of a single step
//! of a small layer: the fixed cost of a call (argument checks, the memory
//! check, dispatch), which a step-at-a-time agent pays on every step;
//! `call/stepper/modulated/B1_N200_T100` an episode of batch size 1 (the
//! papers' agents) run step by step through `Engine::stepper` and
//! back-propagated.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use neuroplastic::{Device, Engine, LayerConfig, Options, Params, Rule, Seq};

fn bench(c: &mut Criterion) {
    let (b, n, x, t) = (32, 200, 16, 50);
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10);
    for rule in [Rule::Hebb, Rule::Modulated, Rule::Retroactive] {
        let mut cfg = LayerConfig::recurrent(rule, n, x);
        cfg.modulator.fanout = true;
        let mut p = Params::<f32>::zeros(&cfg);
        for (k, w) in p.w.iter_mut().enumerate() {
            *w = ((k * 7919 % 97) as f32 / 97.0 - 0.5) * 0.1;
        }
        p.u.iter_mut().enumerate().for_each(|(k, u)| *u = ((k % 13) as f32 - 6.0) * 0.05);
        p.alpha.iter_mut().for_each(|a| *a = 0.01);
        p.mod_v.iter_mut().for_each(|v| *v = 0.05);
        p.fanout.iter_mut().for_each(|f| *f = 1.0);
        p.eta.iter_mut().for_each(|e| *e = 0.05);
        p.eta_e.iter_mut().for_each(|e| *e = 0.1);
        let inputs: Vec<f32> = (0..b * t * x).map(|k| ((k % 11) as f32 - 5.0) * 0.1).collect();
        let mut engine = Engine::new(cfg, Device::Cpu, Options::default()).unwrap();
        let shape = format!("{}/B{b}_N{n}_T{t}", rule.name());
        g.bench_function(BenchmarkId::new("forward", &shape), |bn| {
            bn.iter(|| engine.forward(&p, Seq::new(&inputs, b, t), None).unwrap().y.len())
        });
        let mut step_in = vec![0.0f32; b * x];
        g.bench_function(BenchmarkId::new("stepper", &shape), |bn| {
            bn.iter(|| {
                let mut st = engine.stepper(&p, b, t, None).unwrap();
                for k in 0..t {
                    for e in 0..b {
                        let row = (e * t + k) * x;
                        step_in[e * x..(e + 1) * x].copy_from_slice(&inputs[row..row + x]);
                    }
                    st.step(&step_in).unwrap();
                }
                st.finish().unwrap().fwd.y.len()
            })
        });
    }
    g.finish();

    let (n, x) = (32, 4);
    let cfg = LayerConfig::recurrent(Rule::Hebb, n, x);
    let mut p = Params::<f32>::zeros(&cfg);
    p.w.iter_mut().enumerate().for_each(|(k, w)| *w = ((k % 17) as f32 - 8.0) * 0.01);
    p.alpha.iter_mut().for_each(|a| *a = 0.01);
    p.eta.iter_mut().for_each(|e| *e = 0.05);
    let inputs: Vec<f32> = (0..x).map(|k| k as f32 * 0.1).collect();
    let mut engine = Engine::new(cfg, Device::Cpu, Options::default()).unwrap();
    let mut g = c.benchmark_group("call");
    g.bench_function(BenchmarkId::new("forward", format!("hebb/B1_N{n}_T1")), |bn| {
        bn.iter(|| engine.forward(&p, Seq::new(&inputs, 1, 1), None).unwrap().y.len())
    });

    let (n, x, t) = (200, 8, 100);
    let mut cfg = LayerConfig::recurrent(Rule::Modulated, n, x);
    cfg.modulator.fanout = true;
    let mut p = Params::<f32>::zeros(&cfg);
    p.w.iter_mut().enumerate().for_each(|(k, w)| *w = ((k * 7919 % 97) as f32 / 97.0 - 0.5) * 0.1);
    p.u.iter_mut().enumerate().for_each(|(k, u)| *u = ((k % 13) as f32 - 6.0) * 0.05);
    p.alpha.iter_mut().for_each(|a| *a = 0.01);
    p.mod_v.iter_mut().for_each(|v| *v = 0.05);
    p.fanout.iter_mut().for_each(|f| *f = 1.0);
    let mut engine = Engine::new(cfg, Device::Cpu, Options::default()).unwrap();
    let dy = vec![0.01f32; t * n];
    g.bench_function(BenchmarkId::new("stepper", format!("modulated/B1_N{n}_T{t}")), |bn| {
        bn.iter(|| {
            let mut st = engine.stepper(&p, 1, t, None).unwrap();
            let mut input = vec![0.5f32; x];
            for _ in 0..t {
                let y = st.step(&input).unwrap();
                input.iter_mut().zip(y).for_each(|(i, &y)| *i = 0.5 * y);
            }
            st.backward(&dy, None).unwrap().1.params.w.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
