//! Helpers for the meta-learning tests: a seeded generator, random small
//! meta-learners and trajectories, and an independent f64 simulator of the
//! meta-loss (forward only; inner gradients from the reference's first-order
//! backward) whose finite differences are the meta-gradient's definition.
#![allow(dead_code)]

use neuroplastic::meta::reference as r;
use neuroplastic::meta::{Loss, MetaConfig, MetaModel, Order, Stack, Trajectory};

// The same seeded generator as every other integration test, so one seed
// means one stream everywhere.
#[path = "../common/mod.rs"]
mod common;
pub use common::Rng;

/// What a random case varies.
#[derive(Clone, Debug)]
pub struct Case {
    pub loss: Loss,
    pub order: Order,
    pub truncate: usize,
    pub clamp: f64,
    pub learn_lr: bool,
    pub rln: bool,
    pub nm: bool,
    pub gate_at: usize,
    pub pln_layers: usize,
    pub p: usize,
    pub s: usize,
    pub bi: usize,
    pub bo: usize,
}

impl Case {
    /// OML with two PLN layers, mse, second order, fixed β, no clamp, no NM:
    /// the plain case that tests vary with struct update syntax.
    pub fn oml(p: usize, s: usize, bi: usize, bo: usize) -> Self {
        Case {
            loss: Loss::Mse,
            order: Order::Second,
            truncate: 0,
            clamp: 0.0,
            learn_lr: false,
            rln: true,
            nm: false,
            gate_at: 0,
            pln_layers: 2,
            p,
            s,
            bi,
            bo,
        }
    }
}

pub fn init(st: &Stack, rng: &mut Rng) -> Vec<f64> {
    let mut v = Vec::with_capacity(st.params());
    for &(i, o) in &st.dims {
        let a = 1.6 / (i as f64).sqrt();
        v.extend(rng.vec(o * i, -a, a));
        v.extend(rng.vec(o, -0.3, 0.3));
    }
    v
}

/// A random meta-learner and trajectory for `c` (D = 3, widths 3 … 5).
pub fn random(c: &Case, seed: u64) -> (MetaModel<f64>, Trajectory<f64>) {
    random_wide(c, seed, 3)
}

/// As [`random`], with hidden widths `narrowest` … `narrowest + 2`.
pub fn random_wide(c: &Case, seed: u64, narrowest: usize) -> (MetaModel<f64>, Trajectory<f64>) {
    let mut rng = Rng::new(seed);
    let d = 3;
    let o = if c.loss == Loss::Xent { 3 } else { 2 };
    let w = |rng: &mut Rng| narrowest + rng.below(3);
    let rln: Vec<usize> = if c.rln { vec![d, w(&mut rng), w(&mut rng)] } else { vec![] };
    let pin = *rln.last().unwrap_or(&d);
    let mut pln = vec![pin];
    for _ in 1..c.pln_layers {
        pln.push(w(&mut rng));
    }
    pln.push(o);
    let gate_at = c.gate_at.min(c.pln_layers - 1);
    let nm: Vec<usize> = if c.nm { vec![d, w(&mut rng), pln[gate_at]] } else { vec![] };
    let cfg = MetaConfig {
        loss: c.loss,
        inner_lr: rng.uniform(0.2, 0.6),
        learn_lr: c.learn_lr,
        order: c.order,
        truncate: c.truncate,
        clamp: c.clamp,
        gate_at,
    };
    let mut m = MetaModel::<f64>::zeros(cfg, d, &rln, &pln, &nm);
    m.rln_p = init(&m.rln, &mut rng);
    m.theta0 = init(&m.pln, &mut rng);
    m.nm_p = init(&m.nm, &mut rng);
    let yc = if c.loss == Loss::Mse { o } else { 1 };
    let (p, s, bi, bo) = (c.p, c.s, c.bi, c.bo);
    let ys = |rng: &mut Rng, n: usize| -> Vec<f64> {
        if c.loss == Loss::Mse { rng.vec(n * o, -1.5, 1.5) } else { (0..n).map(|_| rng.below(o) as f64).collect() }
    };
    let t = Trajectory {
        p,
        s,
        bi,
        bo,
        d,
        ycols: yc,
        inner_x: rng.vec(p * s * bi * d, -1.5, 1.5),
        inner_y: ys(&mut rng, p * s * bi),
        outer_x: rng.vec(p * bo * d, -1.5, 1.5),
        outer_y: ys(&mut rng, p * bo),
    };
    (m, t)
}

fn stack_fwd(st: &Stack, p: &[f64], x: &[f64], n: usize, relu_last: bool) -> Vec<f64> {
    let mut cur = x.to_vec();
    for (l, &(i, j)) in st.dims.iter().enumerate() {
        let (wr, br) = st.ranges(l);
        let mut y = vec![0.0; n * j];
        r::dense_fwd(&cur, &p[wr], &p[br], &mut y, n, i, j);
        if l + 1 < st.len() || relu_last {
            let a = y.clone();
            r::relu_fwd(&a, &mut y);
        }
        cur = y;
    }
    cur
}

/// PLN loss and (clamped) gradient at θ for inputs h, gate g (empty: none).
fn pln_loss_grad(m: &MetaModel<f64>, th: &[f64], h: &[f64], g: &[f64], y: &[f64], n: usize) -> (f64, Vec<f64>) {
    let st = &m.pln;
    let gate = (!m.nm.is_empty()).then_some(m.cfg.gate_at);
    let mut xs = Vec::new();
    let mut rs = Vec::new();
    let mut a_s = Vec::new();
    let mut cur = h.to_vec();
    for (l, &(i, j)) in st.dims.iter().enumerate() {
        rs.push(cur.clone());
        let xin = if gate == Some(l) {
            let mut z = vec![0.0; n * i];
            r::gate_fwd(&cur, g, &mut z);
            z
        } else {
            cur.clone()
        };
        let (wr, br) = st.ranges(l);
        let mut a = vec![0.0; n * j];
        r::dense_fwd(&xin, &th[wr], &th[br], &mut a, n, i, j);
        xs.push(xin);
        let mut nx = vec![0.0; n * j];
        r::relu_fwd(&a, &mut nx);
        a_s.push(a);
        cur = nx;
    }
    let o = m.outputs();
    let last = st.len() - 1;
    let (loss, mut da) = match m.cfg.loss {
        Loss::Mse => {
            let mut d = vec![0.0; n * o];
            r::mse_bwd(&a_s[last], y, &mut d, n, o);
            (r::mse_fwd(&a_s[last], y, n, o), d)
        }
        Loss::Xent => {
            let mut d = vec![0.0; n * o];
            r::xent_bwd(&a_s[last], y, &mut d, n, o);
            (r::xent_fwd(&a_s[last], y, n, o), d)
        }
    };
    let mut grad = vec![0.0; st.params()];
    for l in (0..st.len()).rev() {
        let (i, j) = st.dims[l];
        let (wr, br) = st.ranges(l);
        let mut dx = vec![0.0; n * i];
        let (gw, gb) = grad.split_at_mut(br.start);
        r::dense_bwd(&xs[l], &th[wr.clone()], &da, Some(&mut dx), &mut gw[wr], &mut gb[..j], n, i, j);
        if l == 0 {
            break;
        }
        let dr = if gate == Some(l) {
            let mut dr = vec![0.0; n * i];
            let mut dg = vec![0.0; n * i];
            r::gate_bwd(&rs[l], g, &dx, &mut dr, &mut dg);
            dr
        } else {
            dx
        };
        let mut nda = vec![0.0; n * i];
        r::relu_bwd(&a_s[l - 1], &dr, &mut nda);
        da = nda;
    }
    if m.cfg.clamp > 0.0 {
        let c = m.cfg.clamp;
        grad.iter_mut().for_each(|g| *g = g.clamp(-c, c));
    }
    (loss, grad)
}

/// The meta-loss by plain simulation. `frozen[p][k]`, when given, replaces
/// the (clamped) inner gradient of step k of task p for every k < k0(order,
/// truncation): the definition of the first-order and truncated gradients.
pub fn meta_loss(m: &MetaModel<f64>, t: &Trajectory<f64>, frozen: Option<&[Vec<Vec<f64>>]>) -> f64 {
    let (s, bi, bo, d, yc) = (t.s, t.bi, t.bo, t.d, t.ycols);
    let k0 = match (m.cfg.order, m.cfg.truncate) {
        (Order::First, _) => s,
        (Order::Second, 0) => 0,
        (Order::Second, k) => s.saturating_sub(k),
    };
    let mut total = 0.0;
    for p in 0..t.p {
        let feats = |x: &[f64], n: usize| {
            let h = if m.rln.is_empty() { x.to_vec() } else { stack_fwd(&m.rln, &m.rln_p, x, n, true) };
            let g = if m.nm.is_empty() { vec![] } else { stack_fwd(&m.nm, &m.nm_p, x, n, false) };
            (h, g)
        };
        let mut th = m.theta0.clone();
        for k in 0..s {
            let xr = &t.inner_x[((p * s + k) * bi) * d..((p * s + k + 1) * bi) * d];
            let yr = &t.inner_y[((p * s + k) * bi) * yc..((p * s + k + 1) * bi) * yc];
            let g = match frozen {
                Some(f) if k < k0 => f[p][k].clone(),
                _ => {
                    let (h, gg) = feats(xr, bi);
                    pln_loss_grad(m, &th, &h, &gg, yr, bi).1
                }
            };
            th.iter_mut().zip(&g).for_each(|(t, g)| *t -= m.inner_lr * g);
        }
        let (h, gg) = feats(&t.outer_x[p * bo * d..(p + 1) * bo * d], bo);
        total += pln_loss_grad(m, &th, &h, &gg, &t.outer_y[p * bo * yc..(p + 1) * bo * yc], bo).0;
    }
    total / t.p as f64
}

/// The (clamped) inner gradients of every step of every task at the model's point.
pub fn inner_grads(m: &MetaModel<f64>, t: &Trajectory<f64>) -> Vec<Vec<Vec<f64>>> {
    let (s, bi, d, yc) = (t.s, t.bi, t.d, t.ycols);
    (0..t.p)
        .map(|p| {
            let mut th = m.theta0.clone();
            (0..s)
                .map(|k| {
                    let xr = &t.inner_x[((p * s + k) * bi) * d..((p * s + k + 1) * bi) * d];
                    let yr = &t.inner_y[((p * s + k) * bi) * yc..((p * s + k + 1) * bi) * yc];
                    let h = if m.rln.is_empty() { xr.to_vec() } else { stack_fwd(&m.rln, &m.rln_p, xr, bi, true) };
                    let g = if m.nm.is_empty() { vec![] } else { stack_fwd(&m.nm, &m.nm_p, xr, bi, false) };
                    let gr = pln_loss_grad(m, &th, &h, &g, yr, bi).1;
                    th.iter_mut().zip(&gr).for_each(|(t, g)| *t -= m.inner_lr * g);
                    gr
                })
                .collect()
        })
        .collect()
}

/// Mutable views of every parameter of `m` as (name, slice) pairs.
pub fn params_mut(m: &mut MetaModel<f64>) -> Vec<(&'static str, &mut [f64])> {
    let learn = m.cfg.learn_lr;
    let mut v: Vec<(&'static str, &mut [f64])> =
        vec![("rln", &mut m.rln_p[..]), ("pln", &mut m.theta0[..]), ("nm", &mut m.nm_p[..])];
    if learn {
        v.push(("inner_lr", std::slice::from_mut(&mut m.inner_lr)));
    }
    v
}

/// The gradient laid out as `params_mut`'s pairs.
pub fn grads_flat(m: &MetaModel<f64>, g: &neuroplastic::meta::MetaGrads<f64>) -> Vec<(&'static str, Vec<f64>)> {
    let mut v = vec![("rln", g.rln.clone()), ("pln", g.pln.clone()), ("nm", g.nm.clone())];
    if m.cfg.learn_lr {
        v.push(("inner_lr", vec![g.inner_lr]));
    }
    v
}

/// Central finite differences of `f` with respect to every parameter.
pub fn fd_grads(m: &MetaModel<f64>, eps: f64, f: impl Fn(&MetaModel<f64>) -> f64) -> Vec<(&'static str, Vec<f64>)> {
    let mut mm = m.clone();
    let counts: Vec<(&'static str, usize)> = params_mut(&mut mm).iter().map(|(n, s)| (*n, s.len())).collect();
    let mut out = Vec::new();
    for (t, (name, len)) in counts.into_iter().enumerate() {
        let mut g = vec![0.0; len];
        for (e, gv) in g.iter_mut().enumerate() {
            let mut a = m.clone();
            params_mut(&mut a)[t].1[e] += eps;
            let mut b = m.clone();
            params_mut(&mut b)[t].1[e] -= eps;
            *gv = (f(&a) - f(&b)) / (2.0 * eps);
        }
        out.push((name, g));
    }
    out
}
