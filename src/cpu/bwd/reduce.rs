//! The parameter gradients that are sums over steps of small vectors,
//! reduced after the time sweep from the per-step vectors it stored
//! (`dL/da`, `dL/ds`, `dL/dM`) as blocked sums of outer products.

use rayon::prelude::*;

use super::tasks::x_of;
use crate::config::{AlphaShape, InputMap, LayerConfig};
use crate::cpu::simd::{add_assign, axpy, outer_acc};
use crate::cpu::{Plan, Saved, grow};
use crate::params::{Gradients, Params, eta_learned};

/// The parameter gradients that are sums over steps of small vectors, after
/// the sweep: `dW`, `dU`, `db`, the input gradient of the input map, the
/// modulator's parameters, `dη`, and `dα` of per-neuron or scalar `α`.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_params(
    cfg: &LayerConfig,
    p: &Plan,
    prm: &Params<f32>,
    inputs: &[f32],
    saved: &Saved,
    ga: &[f32],
    gmm: &[f32],
    gs: &[f32],
    gat: &mut Vec<f32>,
    eta_acc: &[f64],
    alpha_acc: &[f64],
    first: usize,
    out: &mut Gradients<f32>,
) {
    let (n, i, x, k) = (p.n, p.i, p.x, p.k);
    // The steps that took part, episode by episode, in time order.
    let steps: Vec<(usize, usize)> = (0..p.b).flat_map(|b| (first..p.t).map(move |t| (b, t))).collect();
    let ga_rows: Vec<&[f32]> = steps.iter().map(|&(b, t)| &ga[(b * p.t + t) * n..(b * p.t + t + 1) * n]).collect();
    let x_rows: Vec<&[f32]> = steps.iter().map(|&(b, t)| x_of(p, inputs, &saved.h0, &saved.y, b, t)).collect();
    let g = &mut out.params;
    let kk = steps.len();
    // dW, dU: each block of rows takes its columns of ga, transposed.
    let gat = grow(gat, n * kk);
    let transpose = |at: &mut [f32], j0: usize| {
        for (r, row) in at.chunks_mut(kk).enumerate() {
            for (v, g) in row.iter_mut().zip(&ga_rows) {
                *v = g[j0 + r];
            }
        }
    };
    let min = crate::cpu::min_len(n.saturating_mul(i).saturating_mul(kk));
    g.w.par_chunks_mut(p.rows * i).zip(gat.par_chunks_mut(p.rows * kk)).with_min_len(min).enumerate().for_each(
        |(blk, (c, at))| {
            transpose(at, blk * p.rows);
            outer_acc(c, i, &x_rows, at);
        },
    );
    if cfg.bias {
        for r in &ga_rows {
            add_assign(&mut g.b, r);
        }
    }
    if p.recurrent {
        let in_rows: Vec<&[f32]> =
            steps.iter().map(|&(b, t)| &inputs[(b * p.t + t) * x..(b * p.t + t + 1) * x]).collect();
        match cfg.input_map {
            InputMap::Linear => {
                if x > 0 {
                    // gat still holds ga transposed, block by block.
                    let min = crate::cpu::min_len(n.saturating_mul(x).saturating_mul(kk));
                    g.u.par_chunks_mut(p.rows * x)
                        .zip(gat.par_chunks(p.rows * kk))
                        .with_min_len(min)
                        .for_each(|(c, at)| outer_acc(c, x, &in_rows, at));
                    let u = &prm.u;
                    out.inputs.par_chunks_mut(p.t * x).with_min_len(min).enumerate().for_each(|(b, gin)| {
                        for t in first..p.t {
                            let gi = &mut gin[t * x..(t + 1) * x];
                            let gar = &ga[(b * p.t + t) * n..(b * p.t + t + 1) * n];
                            for (j, &a) in gar.iter().enumerate() {
                                axpy(gi, a, &u[j * x..(j + 1) * x]);
                            }
                        }
                    });
                }
            }
            InputMap::Direct => {
                for &(b, t) in &steps {
                    let o = (b * p.t + t) * n;
                    out.inputs[o..o + n].copy_from_slice(&ga[o..o + n]);
                }
            }
        }
    }
    if p.lazy() {
        let mc = &cfg.modulator;
        let gs_rows: Vec<&[f32]> = steps.iter().map(|&(b, t)| &gs[(b * p.t + t) * k..(b * p.t + t + 1) * k]).collect();
        let y_rows: Vec<&[f32]> =
            steps.iter().map(|&(b, t)| &saved.y[(b * p.t + t) * n..(b * p.t + t + 1) * n]).collect();
        let gmm_rows: Vec<&[f32]> =
            steps.iter().map(|&(b, t)| &gmm[(b * p.t + t) * n..(b * p.t + t + 1) * n]).collect();
        let tr = |rows: &[&[f32]], width: usize| -> Vec<f32> {
            (0..width).flat_map(|q| rows.iter().map(move |r| r[q])).collect()
        };
        outer_acc(&mut g.mod_v, n, &y_rows, &tr(&gs_rows, k));
        if mc.bias {
            for r in &gs_rows {
                add_assign(&mut g.mod_c, r);
            }
        }
        if mc.fanout {
            let m_rows: Vec<&[f32]> =
                steps.iter().map(|&(b, t)| &saved.m[(b * p.t + t) * k..(b * p.t + t + 1) * k]).collect();
            outer_acc(&mut g.fanout, n, &gmm_rows, &tr(&m_rows, k));
        }
        if mc.fanout_bias {
            for r in &gmm_rows {
                add_assign(&mut g.fanout_bias, r);
            }
        }
    }
    if eta_learned(cfg) {
        let s = eta_acc.iter().sum::<f64>() as f32;
        if let Some(e) = g.eta.first_mut() {
            *e = s;
        }
        if let Some(e) = g.eta_e.first_mut() {
            *e = s;
        }
    }
    match cfg.alpha {
        AlphaShape::Connection => {}
        AlphaShape::Neuron => {
            for (a, &s) in g.alpha.iter_mut().zip(alpha_acc) {
                *a = s as f32;
            }
        }
        AlphaShape::Scalar => g.alpha[0] = alpha_acc.iter().sum::<f64>() as f32,
    }
}
