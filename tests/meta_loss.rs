//! The loss-only pass (`meta::meta_loss`): bit for bit the `loss` that
//! `meta_grad` returns, on the f64 reference, the f32 CPU backend and the
//! reference on f32 data, for every option (mse/xent, gate position, clamp,
//! learned β, no RLN, no NM, S = 0, first order, truncation), at widths and
//! row counts that take each product kernel; close to an independent
//! simulation; and refused with the same errors as `meta_grad`.

mod meta_support;

use meta_support::{Case, random_wide};
use neuroplastic::meta::cpu::Cpu;
use neuroplastic::meta::reference::{self as r, Reference};
use neuroplastic::meta::{Loss, MetaModel, Order, Trajectory, cpu};

/// The configurations, each on a small trajectory (26 rows per task: every
/// product of few rows) and a longer one (112 rows: the RLN and NM through
/// the packed SGEMM).
fn cases() -> Vec<(String, Case)> {
    let mut out = Vec::new();
    for base in [Case::oml(3, 4, 5, 6), Case::oml(2, 12, 8, 16)] {
        let rows = base.s * base.bi + base.bo;
        let list = [
            ("OML, mse", base.clone()),
            ("xent", Case { loss: Loss::Xent, ..base.clone() }),
            ("ANML, gate 0", Case { nm: true, gate_at: 0, ..base.clone() }),
            ("ANML, gate 1 of 3 layers", Case { nm: true, gate_at: 1, pln_layers: 3, ..base.clone() }),
            ("clamp", Case { clamp: 0.05, ..base.clone() }),
            ("learned β", Case { learn_lr: true, ..base.clone() }),
            (
                "xent, clamp, learned β, gate 1",
                Case { loss: Loss::Xent, clamp: 0.1, learn_lr: true, nm: true, gate_at: 1, ..base.clone() },
            ),
            ("no RLN (MAML)", Case { rln: false, ..base.clone() }),
            ("no RLN, NM at 0", Case { rln: false, nm: true, gate_at: 0, ..base.clone() }),
            ("no NM, one PLN layer", Case { pln_layers: 1, ..base.clone() }),
            ("S = 0", Case { s: 0, ..base.clone() }),
            ("first order", Case { order: Order::First, ..base.clone() }),
            ("truncated", Case { truncate: 2, ..base.clone() }),
        ];
        out.extend(list.into_iter().map(|(what, c)| (format!("{what} ({rows} rows per task)"), c)));
    }
    out
}

/// Every case at hidden widths 3 … 5 (the products' narrow paths) and
/// 70 … 72 (the vector kernels, which need at least 64 inputs), two seeds.
fn models() -> Vec<(String, MetaModel<f64>, Trajectory<f64>)> {
    let mut out = Vec::new();
    for (what, c) in cases() {
        for narrowest in [3, 70] {
            for seed in 0..2 {
                let (mut m, t) = random_wide(&c, seed, narrowest);
                if narrowest > 3 || c.s > 4 {
                    // Keep many or wide inner steps from diverging.
                    m.inner_lr *= 0.1;
                    m.cfg.inner_lr = m.inner_lr;
                }
                out.push((format!("{what}, widths ≥ {narrowest}, seed {seed}"), m, t));
            }
        }
    }
    out
}

#[test]
fn the_loss_only_pass_is_meta_grads_loss_bit_for_bit_on_every_backend() {
    for (what, m, t) in models() {
        let want = r::meta_grad(&m, &t).unwrap().loss;
        let got = r::meta_loss(&m, &t).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "reference, {what}: {got:e} vs meta_grad's {want:e}");
        assert_eq!(neuroplastic::meta::meta_loss::<Reference>(&m, &t).unwrap().to_bits(), want.to_bits(), "{what}");

        let (mf, tf) = (m.cast::<f32>(), t.cast::<f32>());
        let want = cpu::meta_grad(&mf, &tf).unwrap().loss;
        let got = cpu::meta_loss(&mf, &tf).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "cpu, {what}: {got:e} vs meta_grad's {want:e}");
        assert_eq!(neuroplastic::meta::meta_loss::<Cpu>(&mf, &tf).unwrap().to_bits(), want.to_bits(), "{what}");

        let want = r::meta_grad_f32(&mf, &tf).unwrap().loss;
        let got = r::meta_loss_f32(&mf, &tf).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "reference on f32, {what}: {got:e} vs meta_grad_f32's {want:e}");
    }
}

/// Bitwise on any number of threads (tasks in parallel, summed in order).
#[test]
fn the_cpu_loss_does_not_depend_on_the_threads() {
    let (m, t) = random_wide(&Case { nm: true, clamp: 0.1, ..Case::oml(5, 6, 8, 12) }, 4, 70);
    let (m, t) = (m.cast::<f32>(), t.cast::<f32>());
    let on = |n: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        pool.install(|| cpu::meta_loss(&m, &t).unwrap())
    };
    let one = on(1);
    assert_eq!(one.to_bits(), on(3).to_bits());
    assert_eq!(one.to_bits(), cpu::meta_grad(&m, &t).unwrap().loss.to_bits());
}

/// The value is the meta-loss as a plain simulation computes it (inner
/// steps, then the outer loss), and the options behave as documented: the
/// order and the truncation leave it unchanged, the clamp changes it, S = 0
/// gives the outer loss at θ₀.
#[test]
fn the_loss_is_the_simulated_meta_loss_and_only_the_inner_update_changes_it() {
    for (what, m, t) in models().into_iter().filter(|(w, ..)| w.contains("widths ≥ 3")) {
        let got = r::meta_loss(&m, &t).unwrap();
        let want = meta_support::meta_loss(&m, &t, None);
        assert!((got - want).abs() <= 1e-12 * (1.0 + want.abs()), "{what}: {got:e} vs simulated {want:e}");
    }
    let (m, t) = random_wide(&Case::oml(3, 6, 5, 6), 7, 3);
    let base = r::meta_loss(&m, &t).unwrap();
    let with = |f: &dyn Fn(&mut MetaModel<f64>)| {
        let mut m = m.clone();
        f(&mut m);
        r::meta_loss(&m, &t).unwrap()
    };
    assert_eq!(with(&|m| m.cfg.order = Order::First).to_bits(), base.to_bits());
    assert_eq!(with(&|m| m.cfg.truncate = 2).to_bits(), base.to_bits());
    assert_ne!(with(&|m| m.cfg.clamp = 0.01), base, "a clamp that binds changes the inner steps");
    assert_ne!(with(&|m| m.inner_lr *= 0.5), base, "β changes the inner steps");
    let mut t0 = t.clone();
    (t0.s, t0.inner_x, t0.inner_y) = (0, vec![], vec![]);
    let mut still = m.clone();
    still.inner_lr = 0.0;
    assert_eq!(r::meta_loss(&m, &t0).unwrap().to_bits(), r::meta_loss(&still, &t).unwrap().to_bits());
}

/// A broken model or trajectory, or a result out of range, is refused by
/// `meta_loss` with the error `meta_grad` gives, word for word.
#[test]
fn errors_are_meta_grads() {
    let (m, t) = random_wide(&Case { loss: Loss::Xent, nm: true, ..Case::oml(3, 4, 5, 6) }, 1, 3);
    type Edit = Box<dyn Fn(&mut MetaModel<f64>, &mut Trajectory<f64>)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("gate_at beyond the PLN", Box::new(|m, _| m.cfg.gate_at = 5)),
        ("a NaN weight", Box::new(|m, _| m.theta0[3] = f64::NAN)),
        ("an infinite NM bias", Box::new(|m, _| *m.nm_p.last_mut().unwrap() = f64::INFINITY)),
        ("a negative clamp", Box::new(|m, _| m.cfg.clamp = -1.0)),
        ("a non-finite β", Box::new(|m, _| m.inner_lr = f64::NAN)),
        ("parameters of the wrong size", Box::new(|m, _| m.rln_p.push(0.0))),
        ("inputs of the wrong width", Box::new(|_, t| t.d += 1)),
        (
            "inner inputs of the wrong size",
            Box::new(|_, t| {
                t.inner_x.pop();
            }),
        ),
        ("no tasks", Box::new(|_, t| t.p = 0)),
        ("a class index out of range", Box::new(|_, t| t.outer_y[2] = 3.0)),
        ("a fractional class index", Box::new(|_, t| t.inner_y[7] = 0.5)),
        ("a NaN input", Box::new(|_, t| t.inner_x[11] = f64::NAN)),
        ("target columns that do not fit the loss", Box::new(|m, _| m.cfg.loss = Loss::Mse)),
    ];
    let err = |r: Result<f64, neuroplastic::Error>| r.expect_err("refused").to_string();
    for (what, edit) in &edits {
        let (mut m, mut t) = (m.clone(), t.clone());
        edit(&mut m, &mut t);
        let want = r::meta_grad(&m, &t).expect_err(what).to_string();
        assert_eq!(err(r::meta_loss(&m, &t)), want, "reference: {what}");
        let (mf, tf) = (m.cast::<f32>(), t.cast::<f32>());
        let want = cpu::meta_grad(&mf, &tf).expect_err(what).to_string();
        assert_eq!(err(cpu::meta_loss(&mf, &tf)), want, "cpu: {what}");
        let want = r::meta_grad_f32(&mf, &tf).expect_err(what).to_string();
        assert_eq!(err(r::meta_loss_f32(&mf, &tf)), want, "reference on f32: {what}");
    }
    // The inner SGD diverges: a task's loss is not finite (β = 1e100 is
    // beyond f32, where the CPU backend and the f32 reference refuse it as β,
    // also alike; β = 1e10 diverges in f32).
    let (m, t) = random_wide(&Case::oml(2, 3, 4, 5), 3, 3);
    for beta in [1e100, 1e10] {
        let mut m = m.clone();
        m.inner_lr = beta;
        let want = r::meta_grad(&m, &t).map(|g| g.loss);
        assert_eq!(r::meta_loss(&m, &t).map_err(|e| e.to_string()), want.map_err(|e| e.to_string()), "β {beta}");
        let (mf, tf) = (m.cast::<f32>(), t.cast::<f32>());
        let want = cpu::meta_grad(&mf, &tf).expect_err("diverges").to_string();
        assert!(want.contains("meta-loss of task") || want.contains("β"), "{want}");
        assert_eq!(err(cpu::meta_loss(&mf, &tf)), want, "cpu, β {beta}");
        let want = r::meta_grad_f32(&mf, &tf).expect_err("diverges").to_string();
        assert_eq!(err(r::meta_loss_f32(&mf, &tf)), want, "reference on f32, β {beta}");
    }
    // Finite outputs whose loss leaves the f32 range (β = 0: no inner
    // update, so only the meta-loss's own check can refuse it).
    let (mut m, t) = random_wide(&Case::oml(2, 3, 4, 5), 2, 3);
    m.inner_lr = 0.0;
    let last = m.pln.len() - 1;
    let (_, br) = m.pln.ranges(last);
    m.theta0[br].iter_mut().for_each(|b| *b = 1e25);
    let (mf, tf) = (m.cast::<f32>(), t.cast::<f32>());
    let want = cpu::meta_grad(&mf, &tf).expect_err("beyond f32").to_string();
    assert!(want.contains("beyond the range of f32"), "{want}");
    assert_eq!(err(cpu::meta_loss(&mf, &tf)), want);
    let want = r::meta_grad_f32(&mf, &tf).expect_err("beyond f32").to_string();
    assert_eq!(err(r::meta_loss_f32(&mf, &tf)), want);
    // f64 holds it: the reference takes it.
    assert_eq!(r::meta_loss(&m, &t).unwrap().to_bits(), r::meta_grad(&m, &t).unwrap().loss.to_bits());
}
