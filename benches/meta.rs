//! Meta-gradient benchmarks: `{backend}/meta_grad/{workload}`, one
//! second-order meta-gradient (mse, fixed β = 0.003) per iteration.
//!
//! - `cpu/meta_grad/sine`, `cpu/meta_grad/inner`: the two workloads of
//!   `neuroplastic bench meta` (which also measures peak memory and runs the
//!   PyTorch and JAX baselines);
//! - `cpu/meta_grad/anml-small`: RLN 11 → 64 → 64, PLN 64 → 64 → 1 gated at
//!   layer 1 by an NM 11 → 32 → 64, P = 8, S = 10, Bi = 16, Bo = 32;
//! - `reference/meta_grad/anml-small`: the same in f64 on the reference, for
//!   the ratio between the two backends.
//!
//! Throughput is counted in tasks (elements = P).
//!
//! And the product behind the dense forward, `y = x · Wᵀ` with W stored
//! `(out, in)`, at 300 × 300 for R = 16, 32, 48 rows:
//! `xwt/{R}x300x300/dense_fwd` (the CPU backend's dispatch: unpacked
//! dot-product tiles up to 24 rows, SGEMM above) against
//! `xwt/{R}x300x300/sgemm` (`matrixmultiply::sgemm` on the same operands).
//!
//! And the dense backward's two products (`dw += dyᵀ x`, `dx = dy W`) at
//! 300 × 300 for R = 16, 32, 64: `bwd/{R}x300x300/dense_bwd` (the CPU
//! backend's dispatch: broadcast form on AVX-512 builds) against
//! `bwd/{R}x300x300/sgemm` (two `matrixmultiply::sgemm` calls).
//!
//! And the R-backward's two weight products, `rdw += α (rdyᵀ x + dyᵀ rx)`,
//! at 300 × 300 for R = 16, 64: `rdw/{R}x300x300/dense_rdw` against
//! `rdw/{R}x300x300/sgemm` (two scaled `matrixmultiply::sgemm` calls).
//!
//! And an RLN layer's three products over a task's rows, 704 × 300 × 300
//! (`sine`'s S·Bi + Bo rows), with the left factor a ReLU output or its
//! adjoint (about half zeros: `relu`) or with no zeros (`dense`):
//! `rln/{fwd,dw,dx}/{relu,dense}`, each through the CPU backend's dispatch
//! (on AVX-512 builds the masked product for `relu`, `matrixmultiply` for
//! `dense`, which counts the zeros and finds too few). Throughput counts
//! the dense product's multiply-adds in both.
//!
//! Run: `cargo bench --bench meta` (filter e.g. `cargo bench --bench meta -- anml`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use neuroplastic::meta::{MetaConfig, MetaModel, Stack, Trajectory, cpu, reference};

fn lcg(s: &mut u64) -> f32 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32
}

/// (RLN widths, PLN widths, NM widths, gate_at, P, S, Bi, Bo), uniform
/// parameters U(±1/√in) and inputs/targets U(±5).
#[allow(clippy::type_complexity)]
fn make(
    (rln, pln, nm, gate_at, p, s, bi, bo): (&[usize], &[usize], &[usize], usize, usize, usize, usize, usize),
) -> (MetaModel<f32>, Trajectory<f32>) {
    let d = rln.first().copied().unwrap_or(pln[0]);
    let cfg = MetaConfig { inner_lr: 0.003, gate_at, ..MetaConfig::default() };
    let mut m = MetaModel::<f32>::zeros(cfg, d, rln, pln, nm);
    let mut seed = 1u64;
    let fill = |st: &Stack, seed: &mut u64| -> Vec<f32> {
        let mut v = Vec::new();
        for &(i, o) in &st.dims {
            let a = 1.0 / (i as f32).sqrt();
            v.extend((0..o * i + o).map(|_| a * lcg(seed)));
        }
        v
    };
    m.rln_p = fill(&m.rln, &mut seed);
    m.theta0 = fill(&m.pln, &mut seed);
    m.nm_p = fill(&m.nm, &mut seed);
    let mut u = |n: usize| (0..n).map(|_| 5.0 * lcg(&mut seed)).collect::<Vec<f32>>();
    let t = Trajectory {
        p,
        s,
        bi,
        bo,
        d,
        ycols: 1,
        inner_x: u(p * s * bi * d),
        inner_y: u(p * s * bi),
        outer_x: u(p * bo * d),
        outer_y: u(p * bo),
    };
    (m, t)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("meta");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let sine = make((&[11, 300, 300, 300, 300, 300, 300], &[300, 300, 1], &[], 0, 8, 20, 32, 64));
    let inner = make((&[], &[11, 300, 300, 1], &[], 0, 32, 50, 16, 64));
    let small = make((&[11, 64, 64], &[64, 64, 1], &[11, 32, 64], 1, 8, 10, 16, 32));
    for (name, (m, t)) in [("sine", &sine), ("inner", &inner), ("anml-small", &small)] {
        g.throughput(Throughput::Elements(t.p as u64));
        g.bench_function(format!("cpu/meta_grad/{name}"), |b| b.iter(|| black_box(cpu::meta_grad(m, t).unwrap())));
    }
    let (m64, t64) = (small.0.cast::<f64>(), small.1.cast::<f64>());
    g.throughput(Throughput::Elements(t64.p as u64));
    g.bench_function("reference/meta_grad/anml-small", |b| {
        b.iter(|| black_box(reference::meta_grad(&m64, &t64).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("xwt");
    g.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let (i, j) = (300, 300);
    let mut seed = 7u64;
    let w: Vec<f32> = (0..j * i).map(|_| lcg(&mut seed)).collect();
    let b = vec![0.0f32; j];
    for r in [16, 32, 48] {
        let x: Vec<f32> = (0..r * i).map(|_| lcg(&mut seed)).collect();
        let mut y = vec![0.0f32; r * j];
        g.throughput(Throughput::Elements((r * i * j) as u64));
        g.bench_function(format!("{r}x{i}x{j}/dense_fwd"), |bch| {
            bch.iter(|| cpu::dense_fwd(black_box(&x), &w, &b, &mut y, r, i, j))
        });
        g.bench_function(format!("{r}x{i}x{j}/sgemm"), |bch| {
            bch.iter(|| {
                // SAFETY: x is r×i, w is j×i (read as its transpose, i×j), y is r×j; the strides stay inside them.
                unsafe {
                    matrixmultiply::sgemm(
                        r,
                        i,
                        j,
                        1.0,
                        black_box(&x).as_ptr(),
                        i as isize,
                        1,
                        w.as_ptr(),
                        1,
                        i as isize,
                        0.0,
                        y.as_mut_ptr(),
                        j as isize,
                        1,
                    )
                }
            })
        });
    }
    g.finish();

    // The dense backward's two products, `dw += dyᵀ x` and `dx = dy W`: the
    // CPU backend's dispatch (broadcast form on AVX-512 builds) against two
    // `matrixmultiply::sgemm` calls on the same operands.
    let mut g = c.benchmark_group("bwd");
    g.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for r in [16, 32, 64] {
        let x: Vec<f32> = (0..r * i).map(|_| lcg(&mut seed)).collect();
        let dy: Vec<f32> = (0..r * j).map(|_| lcg(&mut seed)).collect();
        let (mut dx, mut dw, mut db) = (vec![0.0f32; r * i], vec![0.0f32; j * i], vec![0.0f32; j]);
        g.throughput(Throughput::Elements((2 * r * i * j) as u64));
        g.bench_function(format!("{r}x{i}x{j}/dense_bwd"), |bch| {
            bch.iter(|| cpu::dense_bwd(black_box(&x), &w, &dy, Some(&mut dx), &mut dw, &mut db, r, i, j))
        });
        g.bench_function(format!("{r}x{i}x{j}/sgemm"), |bch| {
            bch.iter(|| {
                sgemm_dw(black_box(&x), &dy, &mut dw, 1.0, r, i, j);
                // SAFETY: dy is r×j, w is j×i, dx is r×i; the strides stay
                // inside them.
                unsafe {
                    matrixmultiply::sgemm(
                        r,
                        j,
                        i,
                        1.0,
                        dy.as_ptr(),
                        j as isize,
                        1,
                        w.as_ptr(),
                        i as isize,
                        1,
                        0.0,
                        dx.as_mut_ptr(),
                        i as isize,
                        1,
                    );
                }
            })
        });
    }
    g.finish();

    // The R-backward's weight products, `rdw += α (rdyᵀ x + dyᵀ rx)` with
    // α = −β as the reverse sweep calls them: the CPU backend's dispatch
    // (one broadcast pass over both pairs on AVX-512 builds) against two
    // scaled `matrixmultiply::sgemm` calls.
    let mut g = c.benchmark_group("rdw");
    g.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for r in [16, 64] {
        let mut vals = |n: usize| (0..n).map(|_| lcg(&mut seed)).collect::<Vec<f32>>();
        let (x, rx, dy, rdy) = (vals(r * i), vals(r * i), vals(r * j), vals(r * j));
        let (mut rdw, mut rdb) = (vec![0.0f32; j * i], vec![0.0f32; j]);
        g.throughput(Throughput::Elements((4 * r * i * j) as u64));
        g.bench_function(format!("{r}x{i}x{j}/dense_rdw"), |bch| {
            bch.iter(|| cpu::dense_rdw(black_box(&x), Some(&rx), &dy, &rdy, &mut rdw, &mut rdb, -0.003, r, i, j))
        });
        g.bench_function(format!("{r}x{i}x{j}/sgemm"), |bch| {
            bch.iter(|| {
                sgemm_dw(black_box(&x), &rdy, &mut rdw, -0.003, r, i, j);
                sgemm_dw(&rx, &dy, &mut rdw, -0.003, r, i, j);
            })
        });
    }
    g.finish();
}

/// An RLN layer's forward, weight gradient and input adjoint over 704 rows,
/// with a ReLU-sparse left factor and with a dense one.
fn rln_products(c: &mut Criterion) {
    let mut g = c.benchmark_group("rln");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let (r, i, j) = (704, 300, 300);
    let mut seed = 11u64;
    let w: Vec<f32> = (0..j * i).map(|_| lcg(&mut seed) / (i as f32).sqrt()).collect();
    let b = vec![0.0f32; j];
    g.throughput(Throughput::Elements((r * i * j) as u64));
    for kind in ["relu", "dense"] {
        // A ReLU output (about half zeros), or values kept away from zero.
        let mut vals = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    let v = lcg(&mut seed);
                    if kind == "relu" { v.max(0.0) } else { 0.5 + v.abs() }
                })
                .collect()
        };
        let (x, da) = (vals(r * i), vals(r * j));
        let (mut y, mut dx, mut dw, mut db) =
            (vec![0.0f32; r * j], vec![0.0f32; r * i], vec![0.0f32; j * i], vec![0.0f32; j]);
        g.bench_function(format!("fwd/{kind}"), |bch| {
            bch.iter(|| cpu::dense_fwd(black_box(&x), &w, &b, &mut y, r, i, j))
        });
        g.bench_function(format!("dw/{kind}"), |bch| {
            bch.iter(|| cpu::dense_dw(black_box(&x), &da, &mut dw, &mut db, 1.0, r, i, j))
        });
        g.bench_function(format!("dx/{kind}"), |bch| bch.iter(|| cpu::dense_dx(&w, black_box(&da), &mut dx, r, i, j)));
    }
    g.finish();
}

/// `dw (j×i) += alpha · dyᵀ x` by `matrixmultiply::sgemm`, `dy: (r, j)`, `x: (r, i)`.
fn sgemm_dw(x: &[f32], dy: &[f32], dw: &mut [f32], alpha: f32, r: usize, i: usize, j: usize) {
    assert!(x.len() >= r * i && dy.len() >= r * j && dw.len() >= j * i);
    // SAFETY: the lengths asserted above bound every index the strides form.
    unsafe {
        matrixmultiply::sgemm(
            j,
            r,
            i,
            alpha,
            dy.as_ptr(),
            1,
            j as isize,
            x.as_ptr(),
            i as isize,
            1,
            1.0,
            dw.as_mut_ptr(),
            i as isize,
            1,
        );
    }
}

criterion_group!(benches, bench, rln_products);
criterion_main!(benches);
