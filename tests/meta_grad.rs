//! Meta-gradients: the layers' R-operators against finite differences, the
//! f64 engine against finite differences of the simulated meta-loss for every
//! option (second order, first order, truncated, clamp, learned β, gate
//! position, absent RLN/NM, mse/xent), first vs second order, and the f32 CPU
//! backend against the reference (and its determinism over thread counts).

mod meta_support;

use meta_support::{Case, Rng, fd_grads, grads_flat, inner_grads, meta_loss, random, random_wide};
use neuroplastic::meta::reference as r;
use neuroplastic::meta::{Loss, MetaModel, Order, Trajectory, cpu};
use proptest::prelude::*;

/// Asserts `got ≈ want` elementwise: `|got − want| ≤ tol · (1 + |want|)`,
/// printing the first mismatches and the largest error.
fn close(what: &str, got: &[f64], want: &[f64], tol: f64) -> Result<(), String> {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0.0f64, 0usize);
    let mut bad = Vec::new();
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs() / (1.0 + w.abs());
        if e > worst.0 {
            worst = (e, k);
        }
        if (e.is_nan() || e > tol) && bad.len() < 5 {
            bad.push(format!("[{k}] got {g:.9e} want {w:.9e}"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {} (largest relative error {:.3e} at {})", bad.join("; "), worst.0, worst.1))
    }
}

// ---------------------------------------------------------------- layers

/// R-forward is the directional derivative of the forward, R-backward that
/// of the backward (dense, relu, gate, mse, xent), by central differences.
#[test]
fn layer_r_operators_match_finite_differences() {
    let eps = 1e-6;
    for seed in 0..20u64 {
        let mut g = Rng::new(seed);
        let (n, i, j) = (1 + g.below(4), 1 + g.below(5), 1 + g.below(5));
        let (x, rx) = (g.vec(n * i, -1.0, 1.0), g.vec(n * i, -1.0, 1.0));
        let (w, vw) = (g.vec(j * i, -1.0, 1.0), g.vec(j * i, -1.0, 1.0));
        let (b, vb) = (g.vec(j, -1.0, 1.0), g.vec(j, -1.0, 1.0));
        let dy = g.vec(n * j, -1.0, 1.0);
        let rdy = g.vec(n * j, -1.0, 1.0);
        let at = |e: f64| {
            let xe: Vec<f64> = x.iter().zip(&rx).map(|(a, v)| a + e * v).collect();
            let we: Vec<f64> = w.iter().zip(&vw).map(|(a, v)| a + e * v).collect();
            let be: Vec<f64> = b.iter().zip(&vb).map(|(a, v)| a + e * v).collect();
            let dye: Vec<f64> = dy.iter().zip(&rdy).map(|(a, v)| a + e * v).collect();
            let mut y = vec![0.0; n * j];
            r::dense_fwd(&xe, &we, &be, &mut y, n, i, j);
            let (mut dx, mut dw, mut db) = (vec![0.0; n * i], vec![0.0; j * i], vec![0.0; j]);
            r::dense_bwd(&xe, &we, &dye, Some(&mut dx), &mut dw, &mut db, n, i, j);
            (y, dx, dw, db)
        };
        let (p, m) = (at(eps), at(-eps));
        let fd = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| (a - b) / (2.0 * eps)).collect::<Vec<_>>();
        let mut ry = vec![0.0; n * j];
        r::dense_rfwd(&x, Some(&rx), &w, &vw, &vb, &mut ry, n, i, j);
        close("dense R{y}", &ry, &fd(&p.0, &m.0), 1e-7).unwrap();
        let (mut rdx, mut rdw, mut rdb) = (vec![0.0; n * i], vec![0.0; j * i], vec![0.0; j]);
        r::dense_rbwd(&x, Some(&rx), &w, &vw, &dy, &rdy, Some(&mut rdx), &mut rdw, &mut rdb, n, i, j);
        close("dense R{dx}", &rdx, &fd(&p.1, &m.1), 1e-7).unwrap();
        close("dense R{dW}", &rdw, &fd(&p.2, &m.2), 1e-7).unwrap();
        close("dense R{db}", &rdb, &fd(&p.3, &m.3), 1e-7).unwrap();

        // Gate z = r ⊙ σ(g), with directions on both r and g.
        let len = n * i;
        let (gr, gg, rr, rg, dz, rdz) = (
            g.vec(len, -2.0, 2.0),
            g.vec(len, -2.0, 2.0),
            g.vec(len, -1.0, 1.0),
            g.vec(len, -1.0, 1.0),
            g.vec(len, -1.0, 1.0),
            g.vec(len, -1.0, 1.0),
        );
        let gat = |e: f64| {
            let re: Vec<f64> = gr.iter().zip(&rr).map(|(a, v)| a + e * v).collect();
            let ge: Vec<f64> = gg.iter().zip(&rg).map(|(a, v)| a + e * v).collect();
            let dze: Vec<f64> = dz.iter().zip(&rdz).map(|(a, v)| a + e * v).collect();
            let mut z = vec![0.0; len];
            r::gate_fwd(&re, &ge, &mut z);
            let (mut dr, mut dg) = (vec![0.0; len], vec![0.0; len]);
            r::gate_bwd(&re, &ge, &dze, &mut dr, &mut dg);
            (z, dr, dg)
        };
        let (p, m) = (gat(eps), gat(-eps));
        let mut rz = vec![0.0; len];
        r::gate_rfwd(&gr, &gg, Some(&rr), Some(&rg), &mut rz);
        close("gate R{z}", &rz, &fd(&p.0, &m.0), 1e-7).unwrap();
        let (mut rdr, mut rdg) = (vec![0.0; len], vec![0.0; len]);
        r::gate_rbwd(&gr, &gg, Some(&rr), Some(&rg), &dz, &rdz, &mut rdr, &mut rdg);
        close("gate R{dr}", &rdr, &fd(&p.1, &m.1), 1e-7).unwrap();
        close("gate R{dg}", &rdg, &fd(&p.2, &m.2), 1e-7).unwrap();

        // ReLU away from its kink.
        let a: Vec<f64> = g.vec(len, -1.0, 1.0).into_iter().map(|v| if v.abs() < 0.05 { 0.5 } else { v }).collect();
        let ra = g.vec(len, -1.0, 1.0);
        let rat = |e: f64| {
            let ae: Vec<f64> = a.iter().zip(&ra).map(|(a, v)| a + e * v).collect();
            let mut y = vec![0.0; len];
            r::relu_fwd(&ae, &mut y);
            y
        };
        let mut rya = vec![0.0; len];
        r::relu_rfwd(&a, &ra, &mut rya);
        close("relu R{y}", &rya, &fd(&rat(eps), &rat(-eps)), 1e-7).unwrap();
        let mut rda = vec![0.0; len];
        r::relu_rbwd(&a, &rdz, &mut rda);
        let mut want = vec![0.0; len];
        r::relu_bwd(&a, &rdz, &mut want);
        assert_eq!(rda, want, "relu R-backward is the backward of R{{dy}} (dy's mask is locally constant)");

        // Losses: R{dŷ} is the derivative of dŷ along R{ŷ}.
        let o = 2 + g.below(3);
        let (yh, ryh, ym) = (g.vec(n * o, -2.0, 2.0), g.vec(n * o, -1.0, 1.0), g.vec(n * o, -2.0, 2.0));
        let yc: Vec<f64> = (0..n).map(|_| g.below(o) as f64).collect();
        for loss in [Loss::Mse, Loss::Xent] {
            let lat = |e: f64| {
                let ye: Vec<f64> = yh.iter().zip(&ryh).map(|(a, v)| a + e * v).collect();
                let mut d = vec![0.0; n * o];
                let l = match loss {
                    Loss::Mse => {
                        r::mse_bwd(&ye, &ym, &mut d, n, o);
                        r::mse_fwd(&ye, &ym, n, o)
                    }
                    Loss::Xent => {
                        r::xent_bwd(&ye, &yc, &mut d, n, o);
                        r::xent_fwd(&ye, &yc, n, o)
                    }
                };
                (l, d)
            };
            let (p, m) = (lat(eps), lat(-eps));
            let mut rd = vec![0.0; n * o];
            match loss {
                Loss::Mse => r::mse_rbwd(&ryh, &mut rd, n, o),
                Loss::Xent => r::xent_rbwd(&yh, &ryh, &mut rd, n, o),
            }
            close(&format!("{loss:?} R{{dŷ}}"), &rd, &fd(&p.1, &m.1), 1e-7).unwrap();
            // And the backward is the gradient of the loss: ⟨dŷ, R{ŷ}⟩ = dℓ along R{ŷ}.
            let d0 = lat(0.0).1;
            let dir: f64 = d0.iter().zip(&ryh).map(|(a, b)| a * b).sum();
            close(&format!("{loss:?} dŷ"), &[dir], &[(p.0 - m.0) / (2.0 * eps)], 1e-7).unwrap();
        }
    }
}

// ---------------------------------------------------------------- engine vs finite differences

fn case_strategy(order: Order, truncating: bool) -> impl Strategy<Value = (Case, u64)> {
    (
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (0usize..3, 1usize..4, 1usize..3, 1usize..6, 1usize..4, 1usize..4),
        any::<u64>(),
    )
        .prop_map(move |((xent, clamp, learn, rln, nm), (gate_at, layers, p, s, bi, bo), seed)| {
            let truncate = if truncating { 1 + (seed as usize % s) } else { 0 };
            (
                Case {
                    loss: if xent { Loss::Xent } else { Loss::Mse },
                    order,
                    truncate,
                    clamp: if clamp { 0.4 } else { 0.0 },
                    learn_lr: learn,
                    rln,
                    nm,
                    gate_at,
                    pln_layers: layers,
                    p,
                    s,
                    bi,
                    bo,
                },
                seed,
            )
        })
}

fn check_fd(c: &Case, seed: u64) -> Result<(), TestCaseError> {
    let (m, t) = random(c, seed);
    let g = r::meta_grad(&m, &t).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // The inner gradients of the steps the option treats as constants are
    // frozen at their values at this point: that is the definition.
    let frozen = inner_grads(&m, &t);
    let loss = meta_loss(&m, &t, Some(&frozen));
    prop_assert!((g.loss - loss).abs() <= 1e-10 * (1.0 + loss.abs()), "loss {} vs simulated {}", g.loss, loss);
    let fd = fd_grads(&m, 1e-5, |mm| meta_loss(mm, &t, Some(&frozen)));
    // A ReLU kink within the step of this point makes the central difference
    // meaningless there: it then depends on the step (a CI run found one where
    // steps 1e-3, 1e-5 and 1e-7 gave three different answers and 1e-7 agreed
    // with the engine). Such points are rejected, not compared: steps 1e-5
    // and 1e-7 must agree, well inside the tolerance the engine is held to,
    // first. (Both steps straddle a kink closer than 1e-7 too, but see
    // different mixes of its two slopes; steps 1e-5 and 1e-6 against the
    // tolerance itself let through a point 5e-7 from a kink, whose 1e-5
    // difference was 60% off in an element of 2e-4 and 1e-7's agreed with
    // the engine.)
    let fine = fd_grads(&m, 1e-7, |mm| meta_loss(mm, &t, Some(&frozen)));
    for ((name, a), (_, b)) in fd.iter().zip(&fine) {
        prop_assume!(close(name, a, b, 5e-6).is_ok(), "a ReLU kink within 1e-5 of this point");
    }
    for ((name, got), (_, want)) in grads_flat(&m, &g).iter().zip(&fd) {
        close(&format!("{name} ({c:?}, seed {seed})"), got, want, 2e-5).map_err(TestCaseError::fail)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Exact second order: the whole gradient of the meta-loss.
    #[test]
    fn second_order_matches_finite_differences((c, seed) in case_strategy(Order::Second, false)) {
        check_fd(&c, seed)?;
    }

    /// First order: the gradient with every inner gradient held constant.
    #[test]
    fn first_order_matches_finite_differences((c, seed) in case_strategy(Order::First, false)) {
        check_fd(&c, seed)?;
    }

    /// Truncated to the last K steps: earlier inner gradients held constant.
    #[test]
    fn truncated_matches_finite_differences((c, seed) in case_strategy(Order::Second, true)) {
        check_fd(&c, seed)?;
    }
}

// ---------------------------------------------------------------- first vs second order

/// With one inner step and no clamp, second − first order for θ₀ is exactly
/// the dropped term −β H(θ₀) θ̄₁, where θ̄₁ = ∂ℓ_outer/∂θ₁ is what first order
/// returns; H v is taken here by central differences of the inner gradient.
/// The dropped term is also non-zero for the RLN and NM (mixed products).
#[test]
fn first_order_differs_from_second_by_the_dropped_term() {
    for seed in 0..6u64 {
        let c = Case {
            loss: if seed % 2 == 0 { Loss::Mse } else { Loss::Xent },
            order: Order::Second,
            truncate: 0,
            clamp: 0.0,
            learn_lr: false,
            rln: true,
            nm: true,
            gate_at: (seed % 3) as usize,
            pln_layers: 2,
            p: 1,
            s: 1,
            bi: 3,
            bo: 2,
        };
        let (mut m, t) = random(&c, seed);
        let second = r::meta_grad(&m, &t).unwrap();
        m.cfg.order = Order::First;
        let first = r::meta_grad(&m, &t).unwrap();
        assert_eq!(first.loss, second.loss);
        let v = &first.pln; // θ̄₁
        let eps = 1e-5;
        let grad_at = |e: f64| {
            let mut mm = m.clone();
            mm.theta0.iter_mut().zip(v).for_each(|(t, v)| *t += e * v);
            // The inner gradient at θ₀ + e v: one inner step's update divided by −β.
            let g = inner_grads(&mm, &t);
            g[0][0].clone()
        };
        let (gp, gm) = (grad_at(eps), grad_at(-eps));
        let dropped: Vec<f64> = gp.iter().zip(&gm).map(|(a, b)| -m.inner_lr * (a - b) / (2.0 * eps)).collect();
        let diff: Vec<f64> = second.pln.iter().zip(&first.pln).map(|(s, f)| s - f).collect();
        let norm = diff.iter().map(|d| d * d).sum::<f64>().sqrt();
        assert!(norm > 1e-3, "seed {seed}: second and first order agree on θ₀ (|diff| = {norm:e})");
        close(&format!("second − first (seed {seed})"), &diff, &dropped, 1e-6).unwrap();
        let rn: f64 = second.rln.iter().zip(&first.rln).map(|(a, b)| (a - b).abs()).sum();
        let nn: f64 = second.nm.iter().zip(&first.nm).map(|(a, b)| (a - b).abs()).sum();
        assert!(rn > 1e-4 && nn > 1e-4, "seed {seed}: RLN/NM dropped terms {rn:e}, {nn:e} should be non-zero");
    }
}

// ---------------------------------------------------------------- CPU f32 vs reference

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// The f32 CPU backend agrees with the f64 reference for every option.
    #[test]
    fn cpu_matches_reference((c, seed) in (any::<bool>(), any::<bool>()).prop_flat_map(|(first, trunc)| {
        case_strategy(if first { Order::First } else { Order::Second }, trunc && !first)
    })) {
        let (m, t) = random(&c, seed);
        cpu_vs_reference(&m, &t, &format!("{c:?}, seed {seed}")).map_err(TestCaseError::fail)?;
    }
}

/// The f32 CPU meta-gradient of `m` on `t` against the f64 reference: loss
/// to 1e-4 relative, every gradient (β's too) to 2e-4 of the largest.
fn cpu_vs_reference(m: &MetaModel<f64>, t: &Trajectory<f64>, label: &str) -> Result<(), String> {
    let want = r::meta_grad(m, t).unwrap();
    let got = cpu::meta_grad(&m.cast::<f32>(), &t.cast::<f32>()).unwrap();
    if (got.loss - want.loss).abs() > 1e-4 * (1.0 + want.loss.abs()) {
        return Err(format!("{label}: loss {} vs {}", got.loss, want.loss));
    }
    let scale =
        [&want.rln, &want.pln, &want.nm].iter().flat_map(|v| v.iter()).fold(want.inner_lr.abs(), |a, b| a.max(b.abs()));
    for (name, g, w) in [("rln", &got.rln, &want.rln), ("pln", &got.pln, &want.pln), ("nm", &got.nm, &want.nm)] {
        let g: Vec<f64> = g.iter().map(|&x| x as f64 / (1.0 + scale)).collect();
        let w: Vec<f64> = w.iter().map(|&x| x / (1.0 + scale)).collect();
        close(&format!("cpu {name} ({label})"), &g, &w, 2e-4)?;
    }
    close("cpu inner_lr", &[got.inner_lr as f64 / (1.0 + scale)], &[want.inner_lr / (1.0 + scale)], 2e-4)
}

/// The CPU backend's products change kernels with their shapes (a few rows
/// against wide layers go to unpacked dot-product tiles): at hidden widths
/// 70 … 72 and batches of 5 and 6 rows, with and without a clamp and a gate
/// at the PLN's input, it still agrees with the reference.
#[test]
fn cpu_matches_reference_at_wide_layers_and_few_rows() {
    for (clamp, gate_at, seed) in [(0.0, 1, 21), (0.05, 0, 22)] {
        let c = Case {
            loss: Loss::Mse,
            order: Order::Second,
            truncate: 0,
            clamp,
            learn_lr: true,
            rln: true,
            nm: true,
            gate_at,
            pln_layers: 2,
            p: 2,
            s: 4,
            bi: 5,
            bo: 6,
        };
        let (m, t) = random_wide(&c, seed, 70);
        cpu_vs_reference(&m, &t, &format!("wide, clamp {clamp}, gate {gate_at}")).unwrap();
    }
}

/// The RLN's and NM's products over all of a task's rows skip the zeros of
/// their ReLU-sparse left factor on AVX-512 builds (`meta::sparse`): with
/// widths and rows past the few-row kernels' (≥ 97), the forward, the input
/// adjoint and the weight gradient of every hidden layer go there, and the
/// meta-gradient still agrees with the reference, first and second order.
#[test]
fn cpu_matches_reference_where_the_outer_networks_are_sparse() {
    for (order, seed) in [(Order::Second, 31), (Order::First, 32)] {
        let c = Case {
            loss: Loss::Mse,
            order,
            truncate: 0,
            clamp: 0.0,
            learn_lr: false,
            rln: true,
            nm: true,
            gate_at: 1,
            pln_layers: 2,
            p: 2,
            s: 4,
            bi: 24,
            bo: 40,
        };
        let (m, t) = random_wide(&c, seed, 100);
        cpu_vs_reference(&m, &t, &format!("sparse outer networks, {order:?}")).unwrap();
    }
}

/// Same result, bit for bit, on 1 and 3 threads.
#[test]
fn cpu_is_deterministic_over_thread_counts() {
    let c = Case {
        loss: Loss::Mse,
        order: Order::Second,
        truncate: 0,
        clamp: 0.0,
        learn_lr: true,
        rln: true,
        nm: true,
        gate_at: 1,
        pln_layers: 2,
        p: 7,
        s: 5,
        bi: 3,
        bo: 4,
    };
    let (m, t) = random(&c, 11);
    let (m, t) = (m.cast::<f32>(), t.cast::<f32>());
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| cpu::meta_grad(&m, &t).unwrap())
    };
    assert_eq!(run(1), run(3));
}

/// The point 5e-7 from a ReLU kink that the kink check once let through
/// (found by the truncated proptest): rejected now, not failed.
#[test]
fn a_point_next_to_a_kink_is_rejected_not_failed() {
    let c = Case {
        loss: Loss::Xent,
        order: Order::Second,
        truncate: 1,
        clamp: 0.0,
        learn_lr: false,
        rln: true,
        nm: true,
        gate_at: 2,
        pln_layers: 3,
        p: 2,
        s: 1,
        bi: 1,
        bo: 1,
    };
    match check_fd(&c, 13277710197083594587) {
        Err(TestCaseError::Reject(_)) => {}
        other => panic!("expected the kink check to reject this point, got {other:?}"),
    }
}
