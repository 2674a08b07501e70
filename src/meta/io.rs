//! Safetensors files of meta-learning (format in `docs/meta.md`): the
//! meta-learner ([`load_model`], [`save_model`]), a trajectory of P tasks
//! ([`load_trajectory`], [`save_trajectory`]) and the meta-gradient
//! ([`save_grads`], [`load_grads`]). Every error names the file and the
//! tensor or metadata key.

use std::path::Path;

use super::{Loss, MetaConfig, MetaGrads, MetaModel, Order, Stack, Trajectory};
use crate::error::{Error, Result, Shape};
use crate::io::TensorFile;

const KEY_LOSS: &str = "neuroplastic.meta.loss";
const KEY_LR: &str = "neuroplastic.meta.inner_lr";
const KEY_ORDER: &str = "neuroplastic.meta.order";
const KEY_TRUNC: &str = "neuroplastic.meta.truncate";
const KEY_CLAMP: &str = "neuroplastic.meta.clamp";
const KEY_GATE: &str = "neuroplastic.meta.gate_at";
/// Every metadata key a meta-learner file may hold: any other
/// `neuroplastic.*` key is an error (a misspelt `truncate` or `clamp` would
/// otherwise silently change the meta-gradient). Keys outside the
/// `neuroplastic.` prefix (written by other tools) are ignored.
pub const META_KEYS: [&str; 6] = [KEY_LOSS, KEY_LR, KEY_ORDER, KEY_TRUNC, KEY_CLAMP, KEY_GATE];

fn fmt_err(f: &TensorFile, message: String) -> Error {
    Error::Format { path: f.path.clone(), message }
}

/// Takes `{prefix}.0.weight`, `{prefix}.0.bias`, … while they exist.
fn take_stack(f: &mut TensorFile, prefix: &str) -> Result<(Stack, Vec<f32>)> {
    let mut st = Stack::default();
    let mut p = Vec::new();
    for l in 0.. {
        let wn = format!("{prefix}.{l}.weight");
        if !f.has(&wn) {
            break;
        }
        let (shape, w) = f.take_f32(&wn, None)?;
        if shape.len() != 2 || shape.contains(&0) {
            return Err(fmt_err(f, format!("tensor `{wn}` has shape {}, expected (out, in)", Shape(shape))));
        }
        let (o, i) = (shape[0], shape[1]);
        let bn = format!("{prefix}.{l}.bias");
        if !f.has(&bn) {
            return Err(fmt_err(f, format!("missing required tensor `{bn}` (shape ({o},)) next to `{wn}`")));
        }
        let (_, b) = f.take_f32(&bn, Some(&[o]))?;
        st.dims.push((i, o));
        p.extend(w);
        p.extend(b);
    }
    Ok((st, p))
}

/// Errors on a `neuroplastic.*` metadata key that is not in `known`,
/// naming it and listing the accepted ones.
pub fn check_keys(f: &TensorFile, known: &[&str]) -> Result<()> {
    let Some(k) = f.metadata.keys().find(|k| k.starts_with("neuroplastic.") && !known.contains(&k.as_str())) else {
        return Ok(());
    };
    // Files of the crate's other kinds, named as such.
    let what = if k == "neuroplastic.oml_sine" {
        " — this is a `train oml-sine` checkpoint (the run's optimizer and random state); give the model file \
         written beside it, or continue the run with --resume"
            .to_string()
    } else if !k.starts_with("neuroplastic.meta.") {
        " — this looks like a plastic-layer model file (for grad/train), not a meta-learner".to_string()
    } else {
        String::new()
    };
    let accepted = known.join(", ");
    Err(fmt_err(f, format!("unknown metadata key `{k}`{what}; a meta-learner file takes {accepted}")))
}

fn parse_meta<T: std::str::FromStr>(f: &TensorFile, key: &str, default: T, expected: &str) -> Result<T> {
    match f.metadata.get(key) {
        None => Ok(default),
        Some(s) => s.trim().parse().map_err(|_| fmt_err(f, format!("metadata `{key}` = `{s}`: expected {expected}"))),
    }
}

/// Reads a meta-learner from a safetensors file. Absent metadata keys take
/// their defaults (`mse`, `second`, truncate 0, clamp 0, gate_at 0); β comes
/// from the `inner_lr` tensor (learned) or the `neuroplastic.meta.inner_lr`
/// key (fixed), one of which must be present.
pub fn take_model(f: &mut TensorFile) -> Result<MetaModel<f32>> {
    let (rln, rln_p) = take_stack(f, "rln")?;
    let (pln, theta0) = take_stack(f, "pln")?;
    let (nm, nm_p) = take_stack(f, "nm")?;
    if pln.is_empty() {
        return Err(fmt_err(f, "missing required tensor `pln.0.weight` (the prediction network)".into()));
    }
    let loss = match f.metadata.get(KEY_LOSS).map(|s| s.as_str()) {
        None | Some("mse") => Loss::Mse,
        Some("xent") => Loss::Xent,
        Some(s) => return Err(fmt_err(f, format!("metadata `{KEY_LOSS}` = `{s}`: expected `mse` or `xent`"))),
    };
    let order = match f.metadata.get(KEY_ORDER).map(|s| s.as_str()) {
        None | Some("second") => Order::Second,
        Some("first") => Order::First,
        Some(s) => return Err(fmt_err(f, format!("metadata `{KEY_ORDER}` = `{s}`: expected `second` or `first`"))),
    };
    let truncate = parse_meta(f, KEY_TRUNC, 0usize, "a whole number ≥ 0")?;
    let clamp = parse_meta(f, KEY_CLAMP, 0.0f64, "a number ≥ 0")?;
    let gate_at = parse_meta(f, KEY_GATE, 0usize, "a PLN layer index")?;
    let tensor_lr = f.take_f32_opt("inner_lr", None)?;
    let (learn_lr, lr) = match tensor_lr {
        Some((shape, v)) => {
            if shape.len() > 1 || v.len() != 1 {
                return Err(fmt_err(f, format!("tensor `inner_lr` has shape {}, expected (1,) or ()", Shape(shape))));
            }
            if let Some(s) = f.metadata.get(KEY_LR) {
                return Err(fmt_err(
                    f,
                    format!(
                        "β is given twice: the tensor `inner_lr` ({}, learned) and the metadata `{KEY_LR}` = `{s}` \
                         (fixed); keep the tensor for a learned β or the key for a fixed one",
                        v[0]
                    ),
                ));
            }
            (true, v[0] as f64)
        }
        None => {
            let Some(text) = f.metadata.get(KEY_LR) else {
                let hint = if f.has("loss") {
                    " (this file has a `loss` tensor: is it a gradient written by meta-grad, not the model?)"
                } else {
                    ""
                };
                return Err(fmt_err(
                    f,
                    format!(
                        "β is missing: give either the tensor `inner_lr` (learned) or the metadata `{KEY_LR}` \
                         (fixed){hint}"
                    ),
                ));
            };
            let lr = parse_meta(f, KEY_LR, 0.0f64, "a number")?;
            // Kept as f64 in the config, used as f32 by the kernels: both must hold it.
            let as_f32 = lr as f32;
            if !(lr.is_finite() && as_f32.is_finite() && (lr == 0.0 || as_f32 != 0.0)) {
                return Err(fmt_err(
                    f,
                    format!(
                        "metadata `{KEY_LR}` = `{text}`: expected a finite number that f32 can hold \
                         (0 or 1.4e-45 ≤ |β| ≤ 3.4e38)"
                    ),
                ));
            }
            (false, lr)
        }
    };
    // With an NM, `validate` checks the gate against the PLN; without one
    // the key is unused, but a layer the PLN does not have is still a mistake.
    if nm.is_empty() && gate_at >= pln.len() {
        return Err(fmt_err(
            f,
            format!(
                "metadata `{KEY_GATE}` = {gate_at}, but the PLN has {} layers (expected 0 … {}); the model has no \
                 neuromodulatory network (no `nm.0.weight`), so the key is not used: remove it",
                pln.len(),
                pln.len() - 1
            ),
        ));
    }
    if order == Order::First && truncate > 0 {
        return Err(fmt_err(
            f,
            format!(
                "metadata `{KEY_TRUNC}` = {truncate} with `{KEY_ORDER}` = first: truncation chooses which inner steps \
                 are differentiated to second order, and first order differentiates none; use `second` or drop the key"
            ),
        ));
    }
    let input = rln.dims.first().or(pln.dims.first()).map(|d| d.0).unwrap_or(0);
    let cfg = MetaConfig { loss, inner_lr: lr, learn_lr, order, truncate, clamp, gate_at };
    let m = MetaModel { cfg, input, rln, rln_p, pln, theta0, nm, nm_p, inner_lr: lr as f32 };
    m.validate().map_err(|e| fmt_err(f, e.to_string()))?;
    Ok(m)
}

/// Reads a meta-learner file (see [`take_model`]); unknown tensors are errors.
pub fn load_model(path: impl AsRef<Path>) -> Result<MetaModel<f32>> {
    let mut f = TensorFile::read(path)?;
    check_keys(&f, &META_KEYS)?;
    let m = take_model(&mut f)?;
    f.finish("meta-learner")?;
    Ok(m)
}

fn put_stack(f: &mut TensorFile, prefix: &str, st: &Stack, p: &[f32]) {
    for (l, &(i, o)) in st.dims.iter().enumerate() {
        let (wr, br) = st.ranges(l);
        f.put_f32(&format!("{prefix}.{l}.weight"), &[o, i], p[wr].to_vec());
        f.put_f32(&format!("{prefix}.{l}.bias"), &[o], p[br].to_vec());
    }
}

/// Adds a meta-learner's tensors and metadata to `f`.
pub fn put_model(f: &mut TensorFile, m: &MetaModel<f32>) {
    put_stack(f, "rln", &m.rln, &m.rln_p);
    put_stack(f, "pln", &m.pln, &m.theta0);
    put_stack(f, "nm", &m.nm, &m.nm_p);
    let c = &m.cfg;
    if c.learn_lr {
        f.put_f32("inner_lr", &[1], vec![m.inner_lr]);
    } else {
        f.metadata.insert(KEY_LR.into(), format!("{}", c.inner_lr));
    }
    let loss = if c.loss == Loss::Mse { "mse" } else { "xent" };
    let order = if c.order == Order::Second { "second" } else { "first" };
    f.metadata.insert(KEY_LOSS.into(), loss.into());
    f.metadata.insert(KEY_ORDER.into(), order.into());
    f.metadata.insert(KEY_TRUNC.into(), c.truncate.to_string());
    f.metadata.insert(KEY_CLAMP.into(), format!("{}", c.clamp));
    f.metadata.insert(KEY_GATE.into(), c.gate_at.to_string());
}

/// Writes a meta-learner file atomically.
pub fn save_model(m: &MetaModel<f32>, path: impl AsRef<Path>) -> Result<()> {
    let mut f = TensorFile::new();
    put_model(&mut f, m);
    f.write(path)
}

/// Reads a trajectory for model `m`: `inner.x (P, S, Bi, D)`,
/// `inner.y (P, S, Bi, O)` (`mse`) or `(P, S, Bi)` (`xent`, class indices as
/// f32), `outer.x (P, Bo, D)`, `outer.y (P, Bo, O)` or `(P, Bo)`.
pub fn load_trajectory(path: impl AsRef<Path>, m: &MetaModel<f32>) -> Result<Trajectory<f32>> {
    let mut f = TensorFile::read(path)?;
    let (sx, inner_x) = f.take_f32("inner.x", None)?;
    // S = 0 is allowed (the meta-loss is the outer loss at θ₀); the others are not.
    if sx.len() != 4 || sx[0] == 0 || sx[2] == 0 || sx[3] == 0 {
        return Err(fmt_err(
            &f,
            format!("tensor `inner.x` has shape {}, expected (P, S, Bi, D) with P, Bi, D ≥ 1 (S ≥ 0)", Shape(sx)),
        ));
    }
    let (p, s, bi, d) = (sx[0], sx[1], sx[2], sx[3]);
    if d != m.input {
        return Err(fmt_err(
            &f,
            format!("tensor `inner.x` has shape {}: D = {d} but the model's first layers take {}", Shape(sx), m.input),
        ));
    }
    let (sox, outer_x) = f.take_f32("outer.x", None)?;
    if sox.len() != 3 || sox[0] != p || sox[2] != d || sox[1] == 0 {
        return Err(fmt_err(&f, format!("tensor `outer.x`: expected shape ({p}, Bo, {d}), got {}", Shape(sox))));
    }
    let bo = sox[1];
    let o = m.outputs();
    let mse = m.cfg.loss == Loss::Mse;
    let (iy, oy): (Vec<usize>, Vec<usize>) =
        if mse { (vec![p, s, bi, o], vec![p, bo, o]) } else { (vec![p, s, bi], vec![p, bo]) };
    let (_, inner_y) = f.take_f32("inner.y", Some(&iy))?;
    let (_, outer_y) = f.take_f32("outer.y", Some(&oy))?;
    f.finish("trajectory")?;
    let t = Trajectory { p, s, bi, bo, d, ycols: if mse { o } else { 1 }, inner_x, inner_y, outer_x, outer_y };
    t.validate(m).map_err(|e| fmt_err(&f, e.to_string()))?;
    Ok(t)
}

/// Writes a trajectory file atomically.
/// The targets are `(…, O)` for a model with the `mse` loss, `(…)` for `xent`.
pub fn save_trajectory(t: &Trajectory<f32>, m: &MetaModel<f32>, path: impl AsRef<Path>) -> Result<()> {
    let mut f = TensorFile::new();
    let y = |lead: &[usize]| -> Vec<usize> {
        let mut s = lead.to_vec();
        if m.cfg.loss == Loss::Mse {
            s.push(t.ycols);
        }
        s
    };
    f.put_f32("inner.x", &[t.p, t.s, t.bi, t.d], t.inner_x.clone());
    f.put_f32("outer.x", &[t.p, t.bo, t.d], t.outer_x.clone());
    f.put_f32("inner.y", &y(&[t.p, t.s, t.bi]), t.inner_y.clone());
    f.put_f32("outer.y", &y(&[t.p, t.bo]), t.outer_y.clone());
    f.write(path)
}

/// Writes the meta-loss (`loss`, shape (1,)) and dL/d(every tensor of `m`),
/// under the tensors' names, atomically.
pub fn save_grads(path: impl AsRef<Path>, m: &MetaModel<f32>, g: &MetaGrads<f32>) -> Result<()> {
    let mut f = TensorFile::new();
    f.put_f32("loss", &[1], vec![g.loss as f32]);
    put_stack(&mut f, "rln", &m.rln, &g.rln);
    put_stack(&mut f, "pln", &m.pln, &g.pln);
    put_stack(&mut f, "nm", &m.nm, &g.nm);
    if m.cfg.learn_lr {
        f.put_f32("inner_lr", &[1], vec![g.inner_lr]);
    }
    f.write(path)
}

/// Reads a gradient file written for model `m`.
pub fn load_grads(path: impl AsRef<Path>, m: &MetaModel<f32>) -> Result<MetaGrads<f32>> {
    let mut f = TensorFile::read(path)?;
    let (_, loss) = f.take_f32("loss", Some(&[1]))?;
    let mut g = MetaGrads::zeros(m);
    g.loss = loss[0] as f64;
    for (prefix, st, dst) in [("rln", &m.rln, &mut g.rln), ("pln", &m.pln, &mut g.pln), ("nm", &m.nm, &mut g.nm)] {
        for (l, &(i, o)) in st.dims.iter().enumerate() {
            let (wr, br) = st.ranges(l);
            dst[wr].copy_from_slice(&f.take_f32(&format!("{prefix}.{l}.weight"), Some(&[o, i]))?.1);
            dst[br].copy_from_slice(&f.take_f32(&format!("{prefix}.{l}.bias"), Some(&[o]))?.1);
        }
    }
    if m.cfg.learn_lr {
        g.inner_lr = f.take_f32("inner_lr", Some(&[1]))?.1[0];
    }
    f.finish("meta-gradient")?;
    Ok(g)
}
