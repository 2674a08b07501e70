//! `neuroplastic._native.meta_grad`: the meta-gradient through an inner SGD
//! loop (OML, ANML, MAML-style) on numpy arrays; `meta_loss`: the meta-loss
//! alone, from the same arguments.
//!
//! The tensors keep the names of the crate's meta-learning files
//! (`rln.{l}.weight`, `pln.{l}.bias`, `nm.{l}.weight`, `inner_lr`;
//! `inner.x`, `inner.y`, `outer.x`, `outer.y`) and the options are those of
//! its `neuroplastic.meta.*` metadata, passed as keyword arguments.
//! `float32` arrays run on the CPU backend (or, on `"reference"`, through
//! the f64 reference and back); `float64` arrays on the reference.

use std::collections::HashSet;

use neuroplastic::Shape;
use neuroplastic::error::number;
use neuroplastic::meta::{Loss, MetaConfig, MetaGrads, MetaModel, Order, Real, Stack, Trajectory, cpu, reference};
use numpy::PyUntypedArrayMethods;
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyTuple};

use crate::{Float, dtype_of, on_threads, parse_device, py_err, read_any, type_name, write};

/// The three stacks, in the order the files and the gradient dict list them.
const STACKS: [&str; 3] = ["rln", "pln", "nm"];
/// The trajectory's tensors.
const TRAJECTORY: [&str; 4] = ["inner.x", "inner.y", "outer.x", "outer.y"];

fn as_dict<'a, 'py>(obj: &'a Bound<'py, PyAny>, arg: &str, what: &str) -> PyResult<&'a Bound<'py, PyDict>> {
    obj.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!("{arg}: expected a dict {{name: array}} {what}, got {}", type_name(obj)))
    })
}

/// The keys of `dict` as strings, each checked against `known`.
fn keys(
    dict: &Bound<'_, PyDict>,
    arg: &str,
    known: impl Fn(&str) -> bool,
    expected: &str,
) -> PyResult<HashSet<String>> {
    let mut out = HashSet::new();
    for key in dict.keys() {
        let key: String = key.extract().map_err(|_| {
            PyTypeError::new_err(format!("{arg}: keys must be strings, got {key:?} ({})", type_name(&key)))
        })?;
        if !known(&key) {
            return Err(PyValueError::new_err(format!("{arg}: unknown tensor {key:?}; expected {expected}")));
        }
        out.insert(key);
    }
    Ok(out)
}

/// Whether `name` is `{stack}.{l}.weight` or `{stack}.{l}.bias`.
fn is_layer_tensor(name: &str) -> bool {
    let mut parts = name.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(s), Some(l), Some("weight" | "bias"), None)
            if STACKS.contains(&s) && !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())
                && (l == "0" || !l.starts_with('0'))
    )
}

/// Reads stack `prefix` from `params`: `{prefix}.0.weight (out, in)` and
/// `{prefix}.0.bias (out)`, then layer 1, … while the weight is there; adds
/// the names read to `read`.
fn read_stack<T: Float>(
    params: &Bound<'_, PyDict>,
    prefix: &str,
    read: &mut HashSet<String>,
) -> PyResult<(Stack, Vec<T>)> {
    let mut st = Stack::default();
    let mut p = Vec::new();
    for l in 0.. {
        let wn = format!("{prefix}.{l}.weight");
        let Some(obj) = params.get_item(&wn)? else { break };
        let (w, shape) = read_any::<T>(&obj, &format!("params[{wn:?}]"))?;
        if shape.len() != 2 || shape.contains(&0) {
            return Err(PyValueError::new_err(format!(
                "params[{wn:?}]: has shape {}, expected (out, in) with both at least 1",
                Shape(shape)
            )));
        }
        let (o, i) = (shape[0], shape[1]);
        let bn = format!("{prefix}.{l}.bias");
        let Some(obj) = params.get_item(&bn)? else {
            return Err(PyValueError::new_err(format!("params: missing {bn:?} (shape ({o},)) next to {wn:?}")));
        };
        let (b, bs) = read_any::<T>(&obj, &format!("params[{bn:?}]"))?;
        if bs != [o] {
            return Err(py_err(neuroplastic::Error::ShapeMismatch {
                arg: format!("params[{bn:?}]"),
                expected: Shape(vec![o]),
                got: Shape(bs),
            }));
        }
        st.dims.push((i, o));
        p.extend(w);
        p.extend(b);
        read.insert(wn);
        read.insert(bn);
    }
    Ok((st, p))
}

/// The options of one call, as the `neuroplastic.meta.*` keys spell them.
struct Options {
    loss: String,
    inner_lr: Option<f64>,
    order: String,
    truncate: usize,
    clamp: f64,
    gate_at: usize,
}

/// A keyword's whole number ≥ 0 (`None`: absent), refused by name when it
/// is anything else (a bool, a float, negative, beyond 64 bits).
fn count(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<usize>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(None) };
    let what = || format!("{name}: expected a whole number ≥ 0, got {} ({})", obj, type_name(obj));
    if obj.is_instance_of::<PyBool>() || !(obj.is_instance_of::<PyInt>() || obj.hasattr("__index__")?) {
        return Err(PyTypeError::new_err(what()));
    }
    let v: i128 = obj.call_method0("__index__")?.extract().map_err(|_| PyValueError::new_err(what()))?;
    usize::try_from(v).map(Some).map_err(|_| PyValueError::new_err(what()))
}

/// A keyword's number (`None`: absent), refused by name when it is not one.
fn real(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<f64>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(None) };
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!("{name}: expected a number, got a bool ({obj})")));
    }
    obj.extract::<f64>()
        .map(Some)
        .map_err(|_| PyTypeError::new_err(format!("{name}: expected a number, got {}", type_name(obj))))
}

/// A keyword's string (`None`: `default`).
fn word(obj: Option<&Bound<'_, PyAny>>, name: &str, default: &str, expected: &str) -> PyResult<String> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(default.into()) };
    obj.extract::<String>()
        .map_err(|_| PyTypeError::new_err(format!("{name}: expected {expected}, got {} ({})", obj, type_name(obj))))
}

/// Builds and validates the meta-learner from `params` and the options.
/// Also returns the shape of a learned β as given (`(1,)` or `()`), which
/// its gradient takes.
fn read_model<T: Float + Real>(params: &Bound<'_, PyDict>, o: &Options) -> PyResult<(MetaModel<T>, Vec<usize>)> {
    let names = keys(params, "params", |k| k == "inner_lr" || is_layer_tensor(k), LAYER_NAMES)?;
    let mut read = HashSet::from(["inner_lr".to_string()]);
    let (rln, rln_p) = read_stack::<T>(params, "rln", &mut read)?;
    let (pln, theta0) = read_stack::<T>(params, "pln", &mut read)?;
    let (nm, nm_p) = read_stack::<T>(params, "nm", &mut read)?;
    if pln.is_empty() {
        return Err(PyValueError::new_err(
            "params: missing \"pln.0.weight\" (the prediction network: at least one layer, weight (out, in) and bias (out,))",
        ));
    }
    if let Some(stray) = names.difference(&read).min() {
        return Err(PyValueError::new_err(format!(
            "params: {stray:?} does not follow the layers before it (a stack's layers are numbered 0, 1, … without gaps, \
             and each weight needs its bias)"
        )));
    }
    let loss = match o.loss.as_str() {
        "mse" => Loss::Mse,
        "xent" => Loss::Xent,
        s => return Err(PyValueError::new_err(format!("loss: unknown value {s:?}; expected \"mse\" or \"xent\""))),
    };
    let order = match o.order.as_str() {
        "second" => Order::Second,
        "first" => Order::First,
        s => {
            return Err(PyValueError::new_err(format!("order: unknown value {s:?}; expected \"second\" or \"first\"")));
        }
    };
    if order == Order::First && o.truncate > 0 {
        return Err(PyValueError::new_err(format!(
            "truncate = {} with order = \"first\": truncation chooses which inner steps are differentiated to second \
             order, and first order differentiates none; use order=\"second\" or truncate=0",
            o.truncate
        )));
    }
    if o.gate_at >= pln.len() {
        let unused =
            if nm.is_empty() { "; without an NM (no \"nm.0.weight\") it is unused: leave it at 0" } else { "" };
        return Err(PyValueError::new_err(format!(
            "gate_at = {} but the PLN has {} layers (expected 0 … {}){unused}",
            o.gate_at,
            pln.len(),
            pln.len() - 1
        )));
    }
    if !(o.clamp >= 0.0 && o.clamp.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "clamp = {}: expected a finite number ≥ 0 (each inner-gradient element clamped to ±clamp; 0 = no clamp)",
            number(o.clamp)
        )));
    }
    let mut lr_shape = vec![1];
    let learned = match params.get_item("inner_lr")? {
        Some(obj) => {
            let (v, shape) = read_any::<T>(&obj, "params[\"inner_lr\"]")?;
            if shape.len() > 1 || v.len() != 1 {
                return Err(PyValueError::new_err(format!(
                    "params[\"inner_lr\"]: has shape {}, expected (1,) or () (a learned β)",
                    Shape(shape)
                )));
            }
            lr_shape = shape;
            Some(v[0].into())
        }
        None => None,
    };
    let (learn_lr, lr) = match (learned, o.inner_lr) {
        (Some(v), None) => (true, v),
        (None, Some(v)) => (false, v),
        (Some(v), Some(f)) => {
            return Err(PyValueError::new_err(format!(
                "β is given twice: params[\"inner_lr\"] = {} (learned) and inner_lr = {} (fixed); keep the array \
                 for a learned β or the keyword for a fixed one",
                number(v),
                number(f)
            )));
        }
        (None, None) => {
            return Err(PyValueError::new_err(
                "β is missing: pass inner_lr=… (a fixed inner learning rate) or params[\"inner_lr\"] (a learned one)",
            ));
        }
    };
    let held = T::from_f64(lr).to_f64();
    if !(lr.is_finite() && held.is_finite() && (lr == 0.0 || held != 0.0)) {
        let arg = if learn_lr { "params[\"inner_lr\"]" } else { "inner_lr" };
        return Err(PyValueError::new_err(format!(
            "{arg} = {}: expected a finite number that {} can hold",
            number(lr),
            T::NAME
        )));
    }
    let input = rln.dims.first().or(pln.dims.first()).map_or(0, |d| d.0);
    let cfg =
        MetaConfig { loss, inner_lr: lr, learn_lr, order, truncate: o.truncate, clamp: o.clamp, gate_at: o.gate_at };
    let m = MetaModel { cfg, input, rln, rln_p, pln, theta0, nm, nm_p, inner_lr: T::from_f64(lr) };
    m.validate().map_err(py_err)?;
    Ok((m, lr_shape))
}

const LAYER_NAMES: &str = "\"rln.{l}.weight\", \"rln.{l}.bias\", \"pln.{l}.…\", \"nm.{l}.…\" (l = 0, 1, … without leading zeros) or \"inner_lr\"";

/// Reads the trajectory for `m`: `inner.x (P, S, Bi, D)`, `inner.y
/// (P, S, Bi, O)` (`mse`) or `(P, S, Bi)` class indices (`xent`),
/// `outer.x (P, Bo, D)`, `outer.y (P, Bo, O)` or `(P, Bo)`.
fn read_trajectory<T: Float + Real>(traj: &Bound<'_, PyDict>, m: &MetaModel<T>) -> PyResult<Trajectory<T>> {
    keys(traj, "trajectory", |k| TRAJECTORY.contains(&k), "\"inner.x\", \"inner.y\", \"outer.x\" or \"outer.y\"")?;
    let get = |name: &str| -> PyResult<(Vec<T>, Vec<usize>)> {
        let obj = traj.get_item(name)?.ok_or_else(|| {
            PyValueError::new_err(format!("trajectory: missing {name:?} (it needs inner.x, inner.y, outer.x, outer.y)"))
        })?;
        read_any::<T>(&obj, &format!("trajectory[{name:?}]"))
    };
    let (inner_x, sx) = get("inner.x")?;
    if sx.len() != 4 || sx[0] == 0 || sx[2] == 0 || sx[3] == 0 {
        return Err(PyValueError::new_err(format!(
            "trajectory[\"inner.x\"]: has shape {}, expected (P, S, Bi, D) with P, Bi, D ≥ 1 (S ≥ 0)",
            Shape(sx)
        )));
    }
    let (p, s, bi, d) = (sx[0], sx[1], sx[2], sx[3]);
    let (outer_x, sox) = get("outer.x")?;
    if sox.len() != 3 || sox[0] != p || sox[2] != d || sox[1] == 0 {
        return Err(PyValueError::new_err(format!(
            "trajectory[\"outer.x\"]: has shape {}, expected ({p}, Bo, {d}) with Bo ≥ 1 (P and D from inner.x)",
            Shape(sox)
        )));
    }
    let bo = sox[1];
    let o = m.outputs();
    let mse = m.cfg.loss == Loss::Mse;
    let (iy, oy): (Vec<usize>, Vec<usize>) =
        if mse { (vec![p, s, bi, o], vec![p, bo, o]) } else { (vec![p, s, bi], vec![p, bo]) };
    let mut targets = Vec::with_capacity(2);
    for (name, want) in [("inner.y", iy), ("outer.y", oy)] {
        let (v, got) = get(name)?;
        if got != want {
            let kind = if mse { "mse: one value per output" } else { "xent: one class index per row" };
            return Err(py_err(neuroplastic::Error::ShapeMismatch {
                arg: format!("trajectory[{name:?}] ({kind})"),
                expected: Shape(want),
                got: Shape(got),
            }));
        }
        targets.push(v);
    }
    let outer_y = targets.pop().unwrap_or_default();
    let inner_y = targets.pop().unwrap_or_default();
    let t = Trajectory { p, s, bi, bo, d, ycols: if mse { o } else { 1 }, inner_x, inner_y, outer_x, outer_y };
    t.validate(m).map_err(py_err)?;
    Ok(t)
}

/// `{name: gradient}` shaped like the parameters the user gave.
fn grads_dict<'py, T: Float + Real>(
    py: Python<'py>,
    m: &MetaModel<T>,
    lr_shape: &[usize],
    g: MetaGrads<T>,
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for (prefix, st, v) in [("rln", &m.rln, g.rln), ("pln", &m.pln, g.pln), ("nm", &m.nm, g.nm)] {
        for (l, &(i, o)) in st.dims.iter().enumerate() {
            let (wr, br) = st.ranges(l);
            out.set_item(format!("{prefix}.{l}.weight"), write(py, v[wr].to_vec(), &[o, i])?)?;
            out.set_item(format!("{prefix}.{l}.bias"), write(py, v[br].to_vec(), &[o])?)?;
        }
    }
    if m.cfg.learn_lr {
        out.set_item("inner_lr", write(py, vec![g.inner_lr], lr_shape)?)?;
    }
    Ok(out)
}

/// Refuses, before anything is copied, arrays whose copies (and, on the
/// reference, their f64 twins) do not fit in the memory available: a
/// broadcast view costs numpy nothing but is copied in full. `what`: the
/// computation they are copied for.
fn check_copies<T: Float>(
    params: &Bound<'_, PyDict>,
    traj: &Bound<'_, PyDict>,
    reference: bool,
    what: &str,
) -> PyResult<()> {
    let per = std::mem::size_of::<T>() as u128 + if reference { 8 } else { 0 };
    let mut e = neuroplastic::limits::Estimate::new();
    let (mut largest, mut big) = (String::new(), 0u128);
    for (arg, d) in [("params", params), ("trajectory", traj)] {
        for (k, v) in d.iter() {
            if let Ok(a) = v.cast::<numpy::PyUntypedArray>() {
                let n = a.shape().iter().fold(1u128, |acc, &x| acc.saturating_mul(x as u128));
                let bytes = n.saturating_mul(per);
                if bytes > big {
                    (largest, big) = (format!("{arg}[{:?}]", k.to_string()), bytes);
                }
                e.add(format!("{arg}[{:?}]", k.to_string()), bytes);
            }
        }
    }
    e.check(
        &largest,
        &format!("copying the arrays for {what}"),
        "pass smaller arrays (a broadcast view is copied in full)",
    )
    .map_err(|err| PyMemoryError::new_err(err.to_string()))
}

/// What a computation hands back to Python.
trait Output<T>: Send {
    fn into_py<'py>(self, py: Python<'py>, m: &MetaModel<T>, lr_shape: &[usize]) -> PyResult<Bound<'py, PyAny>>;
}

/// [`meta_grad`]'s `(loss, {name: gradient})`.
impl<T: Float + Real> Output<T> for MetaGrads<T> {
    fn into_py<'py>(self, py: Python<'py>, m: &MetaModel<T>, lr_shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
        let loss = self.loss;
        let grads = grads_dict(py, m, lr_shape, self)?;
        Ok(PyTuple::new(py, [loss.into_pyobject(py)?.into_any(), grads.into_any()])?.into_any())
    }
}

/// [`meta_loss`]'s float.
impl<T> Output<T> for f64 {
    fn into_py<'py>(self, py: Python<'py>, _: &MetaModel<T>, _: &[usize]) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.into_pyobject(py)?.into_any())
    }
}

/// A computation on the model and trajectory read from Python.
type Compute<T, R> = fn(&MetaModel<T>, &Trajectory<T>) -> neuroplastic::Result<R>;

/// One computation on each element type and device: float32 on the CPU
/// backend, float32 through the f64 reference, float64 on the reference;
/// `what` names it in messages.
struct Backends<R32, R64> {
    what: &'static str,
    cpu: Compute<f32, R32>,
    reference_f32: Compute<f32, R32>,
    reference: Compute<f64, R64>,
}

#[allow(clippy::too_many_arguments)]
fn run<'py, T: Float + Real, R: Output<T>>(
    py: Python<'py>,
    params: &Bound<'py, PyDict>,
    traj: &Bound<'py, PyDict>,
    o: &Options,
    threads: Option<usize>,
    reference: bool,
    what: &str,
    compute: Compute<T, R>,
) -> PyResult<Bound<'py, PyAny>> {
    check_copies::<T>(params, traj, reference, what)?;
    let (m, lr_shape) = read_model::<T>(params, o)?;
    let t = read_trajectory::<T>(traj, &m)?;
    let r = py.detach(|| on_threads(threads, || compute(&m, &t)))?.map_err(py_err)?;
    r.into_py(py, &m, &lr_shape)
}

/// The keyword arguments of [`meta_grad`] and [`meta_loss`], as given.
struct Keywords<'a, 'py> {
    inner_lr: Option<&'a Bound<'py, PyAny>>,
    loss: Option<&'a Bound<'py, PyAny>>,
    order: Option<&'a Bound<'py, PyAny>>,
    truncate: Option<&'a Bound<'py, PyAny>>,
    clamp: Option<&'a Bound<'py, PyAny>>,
    gate_at: Option<&'a Bound<'py, PyAny>>,
    device: Option<&'a Bound<'py, PyAny>>,
    threads: Option<&'a Bound<'py, PyAny>>,
}

/// Reads the arguments of [`meta_grad`] or [`meta_loss`], picks the backend
/// from the trajectory's element type and the device, and runs `b` there.
fn call<'py, R32: Output<f32>, R64: Output<f64>>(
    py: Python<'py>,
    params: &Bound<'py, PyAny>,
    trajectory: &Bound<'py, PyAny>,
    kw: Keywords<'_, 'py>,
    b: Backends<R32, R64>,
) -> PyResult<Bound<'py, PyAny>> {
    let params = as_dict(params, "params", "of the meta-learner's tensors")?;
    let traj = as_dict(trajectory, "trajectory", "of inner.x, inner.y, outer.x, outer.y")?;
    let o = Options {
        loss: word(kw.loss, "loss", "mse", "\"mse\" or \"xent\"")?,
        inner_lr: real(kw.inner_lr, "inner_lr")?,
        order: word(kw.order, "order", "second", "\"second\" or \"first\"")?,
        truncate: count(kw.truncate, "truncate")?.unwrap_or(0),
        clamp: real(kw.clamp, "clamp")?.unwrap_or(0.0),
        gate_at: count(kw.gate_at, "gate_at")?.unwrap_or(0),
    };
    let threads = count(kw.threads, "threads")?;
    let device = parse_device(&word(kw.device, "device", "cpu", "\"cpu\" or \"reference\"")?)?;
    // The element type is the trajectory's inputs'; every other array must match.
    let x = traj.get_item("inner.x")?.ok_or_else(|| {
        PyValueError::new_err("trajectory: missing \"inner.x\" (it needs inner.x, inner.y, outer.x, outer.y)")
    })?;
    let what = b.what;
    match (dtype_of(&x).as_deref(), device) {
        (Some("float32"), neuroplastic::Device::Cpu) => run(py, params, traj, &o, threads, false, what, b.cpu),
        (Some("float32"), neuroplastic::Device::Reference) => {
            run(py, params, traj, &o, threads, true, what, b.reference_f32)
        }
        (Some("float64"), neuroplastic::Device::Reference) => {
            run(py, params, traj, &o, threads, false, what, b.reference)
        }
        (Some("float64"), neuroplastic::Device::Cpu) => Err(PyTypeError::new_err(
            "trajectory[\"inner.x\"]: float64 arrays run on device=\"reference\" (the f64 reference); the \"cpu\" \
             backend takes float32",
        )),
        (Some("float32" | "float64"), neuroplastic::Device::Cuda(_)) => Err(py_err(neuroplastic::Error::Unavailable {
            backend: "cuda".into(),
            reason: format!("{what} has no CUDA backend yet; use device=\"cpu\""),
        })),
        (Some(d), _) => Err(PyTypeError::new_err(format!(
            "trajectory[\"inner.x\"]: expected a numpy array of float32 or float64 (in this machine's byte order), got {d}"
        ))),
        (None, _) if x.hasattr("dtype").unwrap_or(false) => Err(PyTypeError::new_err(format!(
            "trajectory[\"inner.x\"]: expected a numpy array of float32 or float64, got a numpy scalar ({}); wrap it \
             with np.asarray",
            type_name(&x)
        ))),
        (None, _) => Err(PyTypeError::new_err(format!(
            "trajectory[\"inner.x\"]: expected a numpy array of float32 or float64, got {}",
            type_name(&x)
        ))),
    }
}

/// The meta-loss `L = (1/P) Σ_p ℓ(θ_S^p; outer_p)` after S inner SGD steps
/// `θ ← θ − β·clamp(∇_θ ℓ(θ; inner_k))` from θ₀ (the PLN's parameters) for
/// each of the P tasks, and `dL/d(every tensor of params)`.
///
/// `params`: `{name: array}` with the crate's names (`rln.{l}.weight (out, in)`,
/// `rln.{l}.bias (out,)`, the same for `pln` (required) and `nm` (optional,
/// gates PLN layer `gate_at`'s input), and `inner_lr` for a learned β).
/// `trajectory`: `inner.x (P, S, Bi, D)`, `inner.y (P, S, Bi, O)` or
/// `(P, S, Bi)` class indices for `xent`, `outer.x (P, Bo, D)`, `outer.y
/// (P, Bo, O)` or `(P, Bo)`. Returns `(loss, {name: gradient})`.
#[pyfunction]
#[pyo3(signature = (
    params, trajectory, *, inner_lr = None, loss = None, order = None, truncate = None, clamp = None,
    gate_at = None, device = None, threads = None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn meta_grad<'py>(
    py: Python<'py>,
    params: &Bound<'py, PyAny>,
    trajectory: &Bound<'py, PyAny>,
    inner_lr: Option<&Bound<'py, PyAny>>,
    loss: Option<&Bound<'py, PyAny>>,
    order: Option<&Bound<'py, PyAny>>,
    truncate: Option<&Bound<'py, PyAny>>,
    clamp: Option<&Bound<'py, PyAny>>,
    gate_at: Option<&Bound<'py, PyAny>>,
    device: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let kw = Keywords { inner_lr, loss, order, truncate, clamp, gate_at, device, threads };
    let b = Backends {
        what: "the meta-gradient",
        cpu: cpu::meta_grad,
        reference_f32: reference::meta_grad_f32,
        reference: reference::meta_grad,
    };
    call(py, params, trajectory, kw, b)
}

/// The meta-loss alone: what `meta_grad` returns as its `loss`, bit for bit
/// on the same device, without the gradient, for a fraction of its time and
/// memory (the inner steps run forward; nothing is kept for a backward).
///
/// Arguments as for `meta_grad`, checked the same way, with the same errors
/// (but for a gradient that would overflow while the loss fits: none is
/// computed, so the loss is returned). `order` and `truncate` are accepted
/// so that one set of options serves both functions; they are checked but
/// do not change the value (they only choose how the gradient is taken).
/// The clamp and β do change it. Returns the loss, a float.
#[pyfunction]
#[pyo3(signature = (
    params, trajectory, *, inner_lr = None, loss = None, order = None, truncate = None, clamp = None,
    gate_at = None, device = None, threads = None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn meta_loss<'py>(
    py: Python<'py>,
    params: &Bound<'py, PyAny>,
    trajectory: &Bound<'py, PyAny>,
    inner_lr: Option<&Bound<'py, PyAny>>,
    loss: Option<&Bound<'py, PyAny>>,
    order: Option<&Bound<'py, PyAny>>,
    truncate: Option<&Bound<'py, PyAny>>,
    clamp: Option<&Bound<'py, PyAny>>,
    gate_at: Option<&Bound<'py, PyAny>>,
    device: Option<&Bound<'py, PyAny>>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let kw = Keywords { inner_lr, loss, order, truncate, clamp, gate_at, device, threads };
    let b = Backends {
        what: "the meta-loss",
        cpu: cpu::meta_loss,
        reference_f32: reference::meta_loss_f32,
        reference: reference::meta_loss,
    };
    call(py, params, trajectory, kw, b)
}
