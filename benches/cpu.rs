//! CPU backend benchmarks: `cpu/<rule>/<fwd|bwd>/<B>x<N>`.
//!
//! Every benchmark runs a recurrent layer (α per connection, tanh, `I = N`,
//! 8 external inputs) over an episode batch of **T = 10 steps per
//! iteration**, with the default `Checkpoint::Auto` (snapshots every 4 steps).
//! `fwd` times `Engine::forward`; `bwd` times `Engine::backward` alone (the
//! forward it needs is run once outside the timing).
//!
//! The reported throughput is the traffic of the performance model
//! (DESIGN.md §6), so it reads directly as an effective bandwidth:
//!
//! - forward: `T · 2·B·N·I·4` bytes (read `H`, write `H'`), doubled with an
//!   eligibility trace;
//! - backward: `T · B·N·I·4 · (3 + 2·(1 − 1/C))` bytes (read `H`, read and
//!   write the trace adjoint, plus recomputing the traces between snapshots)
//!   for the clipped rules, `T · B·N·I·4 · (4 − 1/C)` for Hebb and Oja, whose
//!   traces are reconstructed backwards in place at this η; doubled with an
//!   eligibility trace.
//!
//! `cpu/copy/<B>x<N>` copies a buffer of one batch of traces with the same
//! threads (reads + writes counted), the machine's practical bandwidth in the
//! same run; compare each kernel's throughput with it.
//!
//! Run: `cargo bench --bench cpu` (filter e.g. `cargo bench --bench cpu -- hebb/fwd`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use neuroplastic::{Device, Engine, LayerConfig, Options, Params, Rule, Seq};
use rayon::prelude::*;

const T: usize = 10;
const X: usize = 8;

fn lcg(s: &mut u64) -> f32 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32
}

fn setup(rule: Rule, n: usize, b: usize) -> (LayerConfig, Params<f32>, Vec<f32>, Vec<f32>) {
    let cfg = LayerConfig::recurrent(rule, n, X);
    let mut s = 1;
    let mut p = Params::<f32>::zeros(&cfg);
    let scale = 1.5 / (n as f32).sqrt();
    for (_, v) in p.named_mut() {
        v.iter_mut().for_each(|e| *e = lcg(&mut s) * scale);
    }
    for e in p.eta.iter_mut().chain(p.eta_e.iter_mut()) {
        *e = 0.1;
    }
    let xs: Vec<f32> = (0..b * T * X).map(|_| lcg(&mut s)).collect();
    let dy: Vec<f32> = (0..b * T * n).map(|_| lcg(&mut s)).collect();
    (cfg, p, xs, dy)
}

fn bench(c: &mut Criterion) {
    let shapes = [(1, 256), (1, 1000), (32, 256), (32, 1000)];
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for (b, n) in shapes {
        let trace = b * n * n * 4;
        let mut src = vec![1.0f32; b * n * n];
        let mut dst = vec![0.0f32; b * n * n];
        g.throughput(Throughput::Bytes(2 * trace as u64));
        g.bench_function(BenchmarkId::new("copy", format!("{b}x{n}")), |it| {
            it.iter(|| {
                dst.par_chunks_mut(1 << 16).zip(src.par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s));
                black_box(&mut dst);
            })
        });
        src[0] = dst[0];
    }
    for rule in Rule::ALL {
        let traces = if rule.has_eligibility() { 2 } else { 1 };
        for (b, n) in shapes {
            let (cfg, p, xs, dy) = setup(rule, n, b);
            let mut eng = Engine::new(cfg, Device::Cpu, Options::default()).unwrap();
            let seq = Seq::new(&xs, b, T);
            let trace = (b * n * n * 4 * traces) as u64;
            let id = format!("{b}x{n}");
            g.throughput(Throughput::Bytes(T as u64 * 2 * trace));
            g.bench_function(BenchmarkId::new(format!("{}/fwd", rule.name()), &id), |it| {
                it.iter(|| black_box(eng.forward(&p, seq, None).unwrap()))
            });
            let fwd = eng.forward(&p, seq, None).unwrap();
            let ck = eng.options().checkpoint.interval(&cfg, &p, T) as f64;
            // Hebb and Oja at η = 0.1 with C = 4 reconstruct the traces
            // backwards (`docs/backward.md` §6.1); the others replay them.
            let per_step = match rule {
                Rule::Hebb | Rule::Oja => 4.0 - 1.0 / ck,
                _ => 3.0 + 2.0 * (1.0 - 1.0 / ck),
            };
            g.throughput(Throughput::Bytes((T as f64 * trace as f64 * per_step) as u64));
            g.bench_function(BenchmarkId::new(format!("{}/bwd", rule.name()), &id), |it| {
                it.iter(|| black_box(eng.backward(&p, seq, &fwd, &dy, None).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
