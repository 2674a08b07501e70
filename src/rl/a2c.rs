//! Batched advantage actor-critic (A2C): the heads on top of the recurrent
//! layer and the loss, with their gradients, in f64.
//!
//! Legend: `B` episodes of `T` steps, `N` neurons, `A` actions, `O = A + 1`
//! head outputs (the `A` policy logits, then the value).
//!
//! ```text
//! z_{b,t} = W_π y_{b,t} + b_π        (A)       π_{b,t} = softmax(z_{b,t})
//! v_{b,t} = w_v · y_{b,t} + b_v                 (the rows of one head of O outputs)
//! R_{b,t} = r_{b,t} + γ R_{b,t+1},   R_{b,T} = 0
//! Â_{b,t} = R_{b,t} − v_{b,t}                   each episode's own baseline
//! L = 1/(B·T) Σ_b Σ_t [ −log π_{b,t}(a_{b,t}) · sg(Â_{b,t}) + c_v Â_{b,t}² − c_e 𝓗(π_{b,t}) ]
//! ```
//!
//! `sg` stops the gradient (the policy term treats the advantage as a
//! constant) and `𝓗(π) = −Σ_k π_k log π_k` is the policy's entropy. With
//! `p = π_{b,t}`, `s = 1/(B·T)`, the gradients are
//!
//! ```text
//! ∂L/∂z_k = s · [ (p_k − 1[k = a]) · Â + c_e · p_k · (log p_k + 𝓗) ]
//! ∂L/∂v   = −2 s c_v Â
//! ```
//!
//! (`∂𝓗/∂z_k = −p_k (log p_k + 𝓗)`.) The baseline of element `b` is its own
//! value estimate `v_{b,t}`, never another element's.

use crate::error::{Error, Result};

/// The loss's constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct A2cConfig {
    /// Discount γ ∈ [0, 1].
    pub gamma: f64,
    /// Value-loss coefficient `c_v` ≥ 0.
    pub value_coef: f64,
    /// Entropy-bonus coefficient `c_e` ≥ 0.
    pub entropy_coef: f64,
}

impl Default for A2cConfig {
    /// γ = 0.9, `c_v` = 0.1, `c_e` = 0.03 (the values of the backpropamine paper's experiments).
    fn default() -> Self {
        A2cConfig { gamma: 0.9, value_coef: 0.1, entropy_coef: 0.03 }
    }
}

impl A2cConfig {
    /// Checks the constants.
    pub fn validate(&self) -> Result<()> {
        crate::error::check_unit("gamma", self.gamma)?;
        for (name, v) in [("value_coef", self.value_coef), ("entropy_coef", self.entropy_coef)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Range { arg: name.into(), value: v, expected: "a finite number ≥ 0".into() });
            }
        }
        Ok(())
    }
}

/// Discounted returns `R_{b,t} = r_{b,t} + γ R_{b,t+1}` (`R_{b,T} = 0`).
/// `rewards`: `(B, T)`; returns `(B, T)`.
pub fn returns(rewards: &[f32], steps: usize, gamma: f64) -> Vec<f64> {
    let mut r = vec![0.0f64; rewards.len()];
    for (rb, eb) in r.chunks_mut(steps).zip(rewards.chunks(steps)) {
        let mut acc = 0.0f64;
        for t in (0..steps).rev() {
            acc = eb[t] as f64 + gamma * acc;
            rb[t] = acc;
        }
    }
    r
}

/// `Â_{b,t} = R_{b,t} − v_{b,t}`, each element against its own value.
/// `returns`, `values`: `(B, T)`.
pub fn advantages(returns: &[f64], values: &[f64]) -> Vec<f64> {
    returns.iter().zip(values).map(|(r, v)| r - v).collect()
}

/// The heads of `O` outputs on every row: `out[r] = bias + W · y[r]`.
/// `w`: `(O, N)`; `bias`: `(O)`; `y`: `(rows, N)`; returns `(rows, O)`.
pub fn heads_forward(w: &[f64], bias: &[f64], y: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; y.len() / n * bias.len()];
    heads_forward_into(w, bias, y, n, &mut out);
    out
}

/// [`heads_forward`] into `out` `(rows, O)`.
pub fn heads_forward_into(w: &[f64], bias: &[f64], y: &[f64], n: usize, out: &mut [f64]) {
    let o = bias.len();
    let rows = y.len() / n;
    for r in 0..rows {
        let yr = &y[r * n..(r + 1) * n];
        for q in 0..o {
            out[r * o + q] = bias[q] + w[q * n..(q + 1) * n].iter().zip(yr).map(|(a, b)| a * b).sum::<f64>();
        }
    }
}

/// The heads' backward: `(dW, db, dy)` from `dout` `(rows, O)`; `dW`
/// `(O, N)` and `db` `(O)` summed over rows, `dy` `(rows, N)`.
pub fn heads_backward(w: &[f64], y: &[f64], dout: &[f64], n: usize, o: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = y.len() / n;
    let (mut dw, mut db, mut dy) = (vec![0.0f64; o * n], vec![0.0f64; o], vec![0.0f64; rows * n]);
    for r in 0..rows {
        let (yr, dr) = (&y[r * n..(r + 1) * n], &dout[r * o..(r + 1) * o]);
        let dyr = &mut dy[r * n..(r + 1) * n];
        for q in 0..o {
            let d = dr[q];
            db[q] += d;
            let (wq, dwq) = (&w[q * n..(q + 1) * n], &mut dw[q * n..(q + 1) * n]);
            for j in 0..n {
                dwq[j] += d * yr[j];
                dyr[j] += d * wq[j];
            }
        }
    }
    (dw, db, dy)
}

/// `log softmax(z)`, stable.
pub fn log_softmax(z: &[f64], out: &mut [f64]) {
    let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
    for (o, v) in out.iter_mut().zip(z) {
        *o = v - lse;
    }
}

/// The loss of a batch of episodes and its gradient with respect to the heads' outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct A2cLoss {
    /// `L`.
    pub loss: f64,
    /// The policy term `1/(B·T) Σ −log π(a)·Â`.
    pub policy: f64,
    /// The value term `1/(B·T) Σ c_v Â²`.
    pub value: f64,
    /// The mean entropy `1/(B·T) Σ 𝓗(π)` (the loss holds `−c_e` times it).
    pub entropy: f64,
    /// The advantages `Â` `(B, T)` used by the policy term.
    pub advantages: Vec<f64>,
    /// `∂L/∂out` `(B, T, O)`.
    pub dout: Vec<f64>,
}

/// The A2C loss of a batch of `B` episodes of `steps` steps.
///
/// `out`: the heads' outputs `(B, T, A + 1)` (logits, then value);
/// `actions`, `rewards`: `(B, T)`. `detached`: the advantages the policy
/// term treats as constants (`None`: those of this call; a gradient check
/// passes the unperturbed ones, which is what `sg` means).
pub fn loss(
    cfg: &A2cConfig,
    out: &[f64],
    actions: &[usize],
    rewards: &[f32],
    steps: usize,
    detached: Option<&[f64]>,
) -> Result<A2cLoss> {
    cfg.validate()?;
    let rows = actions.len();
    if rows == 0
        || steps == 0
        || !rows.is_multiple_of(steps)
        || rewards.len() != rows
        || !out.len().is_multiple_of(rows)
    {
        return Err(Error::Config {
            arg: "a2c::loss".into(),
            message: format!(
                "need actions and rewards of B·T elements (T = {steps}) and out of B·T·O; got {} actions, {} rewards, {} outputs",
                rows,
                rewards.len(),
                out.len()
            ),
        });
    }
    let o = out.len() / rows;
    let na = o - 1;
    if na == 0 {
        return Err(Error::Empty { arg: "actions of the policy head (A)".into() });
    }
    if let Some((k, &a)) = actions.iter().enumerate().find(|(_, a)| **a >= na) {
        return Err(Error::Range {
            arg: format!("actions[{k}]"),
            value: a as f64,
            expected: format!("an action in 0..{na}"),
        });
    }
    let values: Vec<f64> = (0..rows).map(|r| out[r * o + na]).collect();
    let adv = advantages(&returns(rewards, steps, cfg.gamma), &values);
    let sg = detached.unwrap_or(&adv);
    let s = 1.0 / rows as f64;
    let (mut pol, mut val, mut ent) = (0.0f64, 0.0f64, 0.0f64);
    let mut dout = vec![0.0f64; out.len()];
    let mut lp = vec![0.0f64; na];
    for r in 0..rows {
        let z = &out[r * o..r * o + na];
        log_softmax(z, &mut lp);
        let a = actions[r];
        let h: f64 = -lp.iter().map(|l| l.exp() * l).sum::<f64>();
        pol -= lp[a] * sg[r];
        val += cfg.value_coef * adv[r] * adv[r];
        ent += h;
        let d = &mut dout[r * o..(r + 1) * o];
        for k in 0..na {
            let p = lp[k].exp();
            let onehot = (k == a) as u8 as f64;
            d[k] = s * ((p - onehot) * sg[r] + cfg.entropy_coef * p * (lp[k] + h));
        }
        d[na] = -2.0 * s * cfg.value_coef * adv[r];
    }
    let (pol, val, ent) = (pol * s, val * s, ent * s);
    Ok(A2cLoss {
        loss: pol + val - cfg.entropy_coef * ent,
        policy: pol,
        value: val,
        entropy: ent,
        advantages: adv,
        dout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_episode_has_its_own_baseline() {
        // Two episodes of two steps, γ = 0.5.
        let rewards = [1.0f32, 2.0, 0.0, -1.0];
        let values = [0.5, 1.0, -0.5, 0.25];
        let r = returns(&rewards, 2, 0.5);
        // Episode 0: R = [1 + 0.5·2, 2] = [2, 2]; episode 1: R = [0 + 0.5·(−1), −1].
        assert_eq!(r, [2.0, 2.0, -0.5, -1.0]);
        let a = advantages(&r, &values);
        // R − v of the same element. Subtracting episode 0's value from every
        // element (R − v[t][0]) would give [−1, −2] for episode 1.
        assert_eq!(a, [1.5, 1.0, 0.0, -1.25]);
        // The same through the loss, whose value column is read from `out`.
        let mut out = vec![0.0f64; 4 * 3];
        for (k, v) in values.iter().enumerate() {
            out[k * 3 + 2] = *v;
        }
        let l = loss(&A2cConfig { gamma: 0.5, ..Default::default() }, &out, &[0, 1, 1, 0], &rewards, 2, None).unwrap();
        assert_eq!(l.advantages, a);
        // ∂L/∂v = −2 s c_v Â with s = 1/4, c_v = 0.1.
        for (k, ak) in a.iter().enumerate() {
            assert!((l.dout[k * 3 + 2] - (-0.05 * ak)).abs() < 1e-15);
        }
        // Uniform policy over 2 actions: −log π(a) = ln 2, entropy ln 2.
        let ln2 = std::f64::consts::LN_2;
        assert!((l.policy - ln2 * (1.5 + 1.0 + 0.0 - 1.25) / 4.0).abs() < 1e-12);
        assert!((l.entropy - ln2).abs() < 1e-12);
        assert!((l.value - 0.1 * (1.5f64.powi(2) + 1.0 + 1.25f64.powi(2)) / 4.0).abs() < 1e-12);
    }

    fn loss_at(out: &[f64], acts: &[usize], rew: &[f32], det: &[f64]) -> f64 {
        let cfg = A2cConfig { gamma: 0.8, value_coef: 0.3, entropy_coef: 0.07 };
        loss(&cfg, out, acts, rew, 3, Some(det)).unwrap().loss
    }

    #[test]
    fn loss_gradient_matches_finite_differences() {
        // B = 2, T = 3, A = 3, O = 4.
        let out: Vec<f64> = (0..24).map(|k| ((k * 37 % 11) as f64 - 5.0) * 0.21).collect();
        let acts = [0, 2, 1, 1, 0, 2];
        let rew = [0.0f32, 1.0, -1.0, 0.5, 0.0, 2.0];
        let cfg = A2cConfig { gamma: 0.8, value_coef: 0.3, entropy_coef: 0.07 };
        let l = loss(&cfg, &out, &acts, &rew, 3, None).unwrap();
        let det = l.advantages.clone();
        for k in 0..out.len() {
            let e = 1e-6;
            let (mut p, mut m) = (out.clone(), out.clone());
            p[k] += e;
            m[k] -= e;
            let fd = (loss_at(&p, &acts, &rew, &det) - loss_at(&m, &acts, &rew, &det)) / (2.0 * e);
            assert!((fd - l.dout[k]).abs() < 1e-8, "out[{k}]: analytic {} fd {fd}", l.dout[k]);
        }
    }

    #[test]
    fn heads_backward_matches_finite_differences() {
        let (n, o, rows) = (5, 3, 4);
        let w: Vec<f64> = (0..o * n).map(|k| ((k * 7 % 13) as f64 - 6.0) * 0.1).collect();
        let b = vec![0.1, -0.2, 0.3];
        let y: Vec<f64> = (0..rows * n).map(|k| ((k * 5 % 9) as f64 - 4.0) * 0.2).collect();
        let c: Vec<f64> = (0..rows * o).map(|k| (k as f64 - 5.0) * 0.3).collect();
        let f = |w: &[f64], b: &[f64], y: &[f64]| -> f64 {
            heads_forward(w, b, y, n).iter().zip(&c).map(|(a, c)| a * c).sum()
        };
        let (dw, db, dy) = heads_backward(&w, &y, &c, n, o);
        let e = 1e-6;
        for k in 0..w.len() {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[k] += e;
            m[k] -= e;
            assert!(((f(&p, &b, &y) - f(&m, &b, &y)) / (2.0 * e) - dw[k]).abs() < 1e-8);
        }
        for k in 0..b.len() {
            let (mut p, mut m) = (b.clone(), b.clone());
            p[k] += e;
            m[k] -= e;
            assert!(((f(&w, &p, &y) - f(&w, &m, &y)) / (2.0 * e) - db[k]).abs() < 1e-8);
        }
        for k in 0..y.len() {
            let (mut p, mut m) = (y.clone(), y.clone());
            p[k] += e;
            m[k] -= e;
            assert!(((f(&w, &b, &p) - f(&w, &b, &m)) / (2.0 * e) - dy[k]).abs() < 1e-8);
        }
    }

    #[test]
    fn bad_actions_are_errors() {
        let out = vec![0.0; 2 * 3];
        let e = loss(&A2cConfig::default(), &out, &[0, 2], &[0.0, 0.0], 2, None).unwrap_err().to_string();
        assert!(e.contains("actions[1]"), "{e}");
        assert!(loss(&A2cConfig::default(), &out, &[0], &[0.0], 2, None).is_err());
        assert!(loss(&A2cConfig { gamma: 1.5, ..Default::default() }, &out, &[0, 1], &[0.0, 0.0], 2, None).is_err());
    }
}
