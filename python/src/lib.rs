//! `neuroplastic._native`: the Python face of the crate.
//!
//! numpy arrays in and out, one class per Rust type the user handles
//! (`LayerConfig`, `Engine`, `ForwardHandle`), and every `neuroplastic::Error`
//! turned into a Python exception with the same message (input errors are
//! `ValueError`, a missing backend `RuntimeError`). The kernels run with the
//! GIL released.
//!
//! Two element types reach the kernels: `float32` through [`Engine`] on any
//! device, and `float64` through the f64 reference functions
//! (`neuroplastic::reference::{plastic_fwd, plastic_bwd}`) on the reference device,
//! which is what `torch.autograd.gradcheck` needs. A new device is a new
//! spelling in [`parse_device`]; a new op is a new method next to
//! [`PyEngine::forward`] that reuses the readers and writers below.
#![warn(missing_docs)]

use neuroplastic::params::PARAM_NAMES;
use neuroplastic::{
    Activation, AlphaShape, Checkpoint, Device, Engine, EtaMode, Forward, Gradients, InputMap, LayerConfig,
    ModActivation, ModulatorConfig, Options, Params, Rule, Seq, Shape, State, StepperF64, StepperOwned, Topology,
    Truncation, param_shapes, reference, state_shapes,
};
use numpy::{Element, PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::sync::{Arc, Mutex};

mod meta;

/// A crate error as the Python exception a user expects, message unchanged.
fn py_err(e: neuroplastic::Error) -> PyErr {
    let msg = e.to_string();
    match e {
        neuroplastic::Error::Unavailable { .. } => PyRuntimeError::new_err(msg),
        neuroplastic::Error::Io { .. } => PyOSError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// Parses one of `names` (the Rust `name()` spellings) or says which are accepted.
fn parse_name<T>(arg: &str, value: &str, parse: impl Fn(&str) -> Option<T>, names: &[&str]) -> PyResult<T> {
    parse(value).ok_or_else(|| {
        PyValueError::new_err(format!("{arg}: unknown value {value:?}; expected one of {}", names.join(", ")))
    })
}

fn parse_topology(s: &str) -> Option<Topology> {
    match s {
        "recurrent" => Some(Topology::Recurrent),
        "feed_forward" => Some(Topology::FeedForward),
        _ => None,
    }
}

fn topology_name(t: Topology) -> &'static str {
    match t {
        Topology::Recurrent => "recurrent",
        Topology::FeedForward => "feed_forward",
    }
}

fn parse_input_map(s: &str) -> Option<InputMap> {
    match s {
        "linear" => Some(InputMap::Linear),
        "direct" => Some(InputMap::Direct),
        _ => None,
    }
}

fn input_map_name(m: InputMap) -> &'static str {
    match m {
        InputMap::Linear => "linear",
        InputMap::Direct => "direct",
    }
}

fn parse_eta(s: &str) -> Option<EtaMode> {
    match s {
        "learned" => Some(EtaMode::Learned),
        "fixed" => Some(EtaMode::Fixed),
        _ => None,
    }
}

fn eta_name(e: EtaMode) -> &'static str {
    match e {
        EtaMode::Learned => "learned",
        EtaMode::Fixed => "fixed",
    }
}

/// `"reference"`, `"cpu"`, `"cuda"` or `"cuda:K"`. A CUDA device parses here
/// and is refused (or, once the backend exists, accepted) by `Engine::new`.
fn parse_device(s: &str) -> PyResult<Device> {
    match s {
        "reference" => Ok(Device::Reference),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s.strip_prefix("cuda:").and_then(|k| k.parse().ok()).map(Device::Cuda).ok_or_else(|| {
            PyValueError::new_err(format!(
                "device: unknown value {s:?}; expected one of reference, cpu, cuda, cuda:K (K = the GPU's ordinal)"
            ))
        }),
    }
}

/// `"auto"`, `"all"` or an interval `C ≥ 1`.
fn parse_checkpoint(obj: &Bound<'_, PyAny>) -> PyResult<Checkpoint> {
    if let Ok(s) = obj.cast::<PyString>() {
        return match s.to_cow()?.as_ref() {
            "auto" => Ok(Checkpoint::Auto),
            "all" => Ok(Checkpoint::All),
            other => Err(PyValueError::new_err(format!(
                "checkpoint: unknown value {other:?}; expected \"auto\", \"all\" or an interval C >= 1"
            ))),
        };
    }
    let c: i64 = obj.extract().map_err(|_| {
        PyTypeError::new_err(format!("checkpoint: expected \"auto\", \"all\" or an interval C >= 1, got {obj}"))
    })?;
    if c < 1 {
        return Err(PyValueError::new_err(format!("checkpoint: the interval C must be at least 1, got {c}")));
    }
    Ok(Checkpoint::Every(c as usize))
}

fn checkpoint_object<'py>(py: Python<'py>, c: Checkpoint) -> PyResult<Bound<'py, PyAny>> {
    Ok(match c {
        Checkpoint::Auto => "auto".into_pyobject(py)?.into_any(),
        Checkpoint::All => "all".into_pyobject(py)?.into_any(),
        Checkpoint::Every(k) => k.into_pyobject(py)?.into_any(),
    })
}

/// `None`, `("last", K)` or `("windows", K)`.
fn parse_truncate(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Truncation> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(Truncation::None) };
    let (kind, k): (String, i64) = obj.extract().map_err(|_| {
        PyTypeError::new_err(format!("truncate: expected None, (\"last\", K) or (\"windows\", K), got {obj}"))
    })?;
    if k < 0 {
        return Err(PyValueError::new_err(format!("truncate: K must be at least 1, got {k}")));
    }
    match kind.as_str() {
        "last" => Ok(Truncation::Last(k as usize)),
        "windows" => Ok(Truncation::Windows(k as usize)),
        other => Err(PyValueError::new_err(format!(
            "truncate: unknown kind {other:?}; expected (\"last\", K) or (\"windows\", K)"
        ))),
    }
}

fn truncate_object<'py>(py: Python<'py>, t: Truncation) -> PyResult<Bound<'py, PyAny>> {
    Ok(match t {
        Truncation::None => py.None().into_bound(py),
        Truncation::Last(k) => ("last", k).into_pyobject(py)?.into_any(),
        Truncation::Windows(k) => ("windows", k).into_pyobject(py)?.into_any(),
    })
}

/// A plastic layer's configuration (Rust `neuroplastic::LayerConfig`):
/// it fixes the shape of every parameter and state tensor.
#[pyclass(name = "LayerConfig", module = "neuroplastic", frozen, eq)]
#[derive(Clone, PartialEq)]
struct PyLayerConfig {
    cfg: LayerConfig,
}

#[pymethods]
impl PyLayerConfig {
    #[new]
    #[pyo3(signature = (
        rule, n, inputs, *, topology = "recurrent", input_map = "linear", alpha = "connection",
        activation = "tanh", bias = false, eta = "learned", modulators = 1, modulator = "tanh",
        modulator_bias = true, fanout = false, fanout_bias = false, clip = 1.0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        rule: &str,
        n: usize,
        inputs: usize,
        topology: &str,
        input_map: &str,
        alpha: &str,
        activation: &str,
        bias: bool,
        eta: &str,
        modulators: usize,
        modulator: &str,
        modulator_bias: bool,
        fanout: bool,
        fanout_bias: bool,
        clip: f64,
    ) -> PyResult<Self> {
        let cfg = LayerConfig {
            topology: parse_name("topology", topology, parse_topology, &["recurrent", "feed_forward"])?,
            rule: parse_name("rule", rule, Rule::parse, &Rule::ALL.map(Rule::name))?,
            n,
            inputs,
            input_map: parse_name("input_map", input_map, parse_input_map, &["linear", "direct"])?,
            alpha: parse_name("alpha", alpha, AlphaShape::parse, &AlphaShape::ALL.map(AlphaShape::name))?,
            activation: parse_name(
                "activation",
                activation,
                Activation::parse,
                &Activation::ALL.map(Activation::name),
            )?,
            bias,
            eta: parse_name("eta", eta, parse_eta, &["learned", "fixed"])?,
            modulator: ModulatorConfig {
                k: modulators,
                activation: parse_name(
                    "modulator",
                    modulator,
                    ModActivation::parse,
                    &ModActivation::ALL.map(ModActivation::name),
                )?,
                bias: modulator_bias,
                fanout,
                fanout_bias,
            },
            clip,
        };
        cfg.validate().map_err(py_err)?;
        Ok(PyLayerConfig { cfg })
    }

    /// `"hebb"`, `"oja"`, `"modulated"` or `"retroactive"`.
    #[getter]
    fn rule(&self) -> &'static str {
        self.cfg.rule.name()
    }
    /// Post-synaptic size `N`.
    #[getter]
    fn n(&self) -> usize {
        self.cfg.n
    }
    /// Input features per step `X`.
    #[getter]
    fn inputs(&self) -> usize {
        self.cfg.inputs
    }
    /// Pre-synaptic size `I` (`N` for a recurrent layer, `X` for a feed-forward one).
    #[getter]
    fn pre(&self) -> usize {
        self.cfg.pre()
    }
    /// `"recurrent"` or `"feed_forward"`.
    #[getter]
    fn topology(&self) -> &'static str {
        topology_name(self.cfg.topology)
    }
    /// `"linear"` (learned `U`) or `"direct"`.
    #[getter]
    fn input_map(&self) -> &'static str {
        input_map_name(self.cfg.input_map)
    }
    /// `"connection"`, `"neuron"` or `"scalar"`.
    #[getter]
    fn alpha(&self) -> &'static str {
        self.cfg.alpha.name()
    }
    /// `"tanh"` or `"identity"`.
    #[getter]
    fn activation(&self) -> &'static str {
        self.cfg.activation.name()
    }
    /// Whether the layer has a bias `b`.
    #[getter]
    fn bias(&self) -> bool {
        self.cfg.bias
    }
    /// `"learned"` or `"fixed"` (η, or η_e of the retroactive rule).
    #[getter]
    fn eta(&self) -> &'static str {
        eta_name(self.cfg.eta)
    }
    /// Modulator outputs `K` (0 for an unmodulated rule).
    #[getter]
    fn modulators(&self) -> usize {
        self.cfg.k()
    }
    /// The modulator's non-linearity `μ`: `"tanh"`, `"sigmoid"` or `"identity"`.
    #[getter]
    fn modulator(&self) -> &'static str {
        self.cfg.modulator.activation.name()
    }
    /// Whether the modulator has the bias `c`.
    #[getter]
    fn modulator_bias(&self) -> bool {
        self.cfg.modulator.bias
    }
    /// Whether the fan-out `F` is learned (else all ones).
    #[getter]
    fn fanout(&self) -> bool {
        self.cfg.modulator.fanout
    }
    /// Whether the fan-out has the per-neuron bias `g`.
    #[getter]
    fn fanout_bias(&self) -> bool {
        self.cfg.modulator.fanout_bias
    }
    /// `c_max` of the clipped rules.
    #[getter]
    fn clip(&self) -> f64 {
        self.cfg.clip
    }

    /// `{name: shape}` of every parameter tensor the configuration uses, in
    /// the order of the file format (`w`, `alpha`, `eta`, `eta_e`, `u`, `b`,
    /// `mod.v`, `mod.c`, `mod.fanout`, `mod.fanout_bias`).
    fn param_shapes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, shape) in param_shapes(&self.cfg) {
            if shape != [0] {
                d.set_item(name, PyTuple::new(py, shape)?)?;
            }
        }
        Ok(d)
    }

    /// `{name: shape}` of the state of `batch` episodes (`h`, `hebb`, `elig`; those used).
    fn state_shapes<'py>(&self, py: Python<'py>, batch: usize) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, shape) in STATE_NAMES.iter().zip(state_shapes(&self.cfg, batch)) {
            if shape != [0] {
                d.set_item(*name, PyTuple::new(py, shape)?)?;
            }
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let c = &self.cfg;
        let mut s = format!(
            "LayerConfig({:?}, n={}, inputs={}, topology={:?}, input_map={:?}, alpha={:?}, activation={:?}, bias={}, eta={:?}",
            c.rule.name(),
            c.n,
            c.inputs,
            topology_name(c.topology),
            input_map_name(c.input_map),
            c.alpha.name(),
            c.activation.name(),
            if c.bias { "True" } else { "False" },
            eta_name(c.eta),
        );
        if c.rule.is_modulated() {
            let m = &c.modulator;
            let b = |v: bool| if v { "True" } else { "False" };
            s += &format!(
                ", modulators={}, modulator={:?}, modulator_bias={}, fanout={}, fanout_bias={}, clip={:?}",
                m.k,
                m.activation.name(),
                b(m.bias),
                b(m.fanout),
                b(m.fanout_bias),
                c.clip
            );
        }
        s + ")"
    }
}

const STATE_NAMES: [&str; 3] = ["h", "hebb", "elig"];

/// Pools of threads kept between calls (starting threads on every call
/// would cost more than a small model's meta-gradient): the few sizes used
/// last, with the process that made them. A child made by `fork` inherits
/// the pools but not their threads, so it makes its own (the parent's are
/// forgotten, never joined); rayon's global pool has the same problem and
/// is never used.
struct Pools {
    pid: u32,
    lru: Vec<(usize, Arc<rayon::ThreadPool>)>,
}

/// Sizes of pool kept at once.
const POOLS_KEPT: usize = 2;

/// Runs `f` on a pool of `threads` threads (`None`: one per core, or
/// `RAYON_NUM_THREADS`).
pub(crate) fn on_threads<R: Send>(threads: Option<usize>, f: impl FnOnce() -> R + Send) -> PyResult<R> {
    static POOLS: Mutex<Option<Pools>> = Mutex::new(None);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = match threads {
        Some(n) => n,
        None => {
            std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(cores)
        }
    };
    let cap = 4 * cores.max(16);
    if n == 0 || n > cap {
        return Err(PyValueError::new_err(format!(
            "threads = {n}: expected 1 … {cap} (this machine has {cores} cores; None = one per core)"
        )));
    }
    let pool = {
        let mut guard = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        if guard.as_ref().is_some_and(|p| p.pid != pid) {
            std::mem::forget(guard.take());
        }
        let pools = guard.get_or_insert_with(|| Pools { pid, lru: Vec::new() });
        let pool = match pools.lru.iter().position(|(k, _)| *k == n) {
            Some(i) => pools.lru.remove(i).1,
            None => Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| PyValueError::new_err(format!("threads: cannot start {n} threads: {e}")))?,
            ),
        };
        pools.lru.insert(0, (n, pool.clone()));
        pools.lru.truncate(POOLS_KEPT);
        pool
    };
    Ok(pool.install(f))
}

/// Runs `f` without the GIL: on this process's pool ([`on_threads`]) when
/// the engine has no private pool (`threads` None), which replaces rayon's
/// global pool so that a forked child does not wait on its parent's threads;
/// or on this thread when the call is `inline`
/// ([`neuroplastic::cpu::runs_inline`]: it uses no pool, and handing it to
/// one would cost more than it does).
fn detach<R: Send>(py: Python<'_>, threads: Option<usize>, inline: bool, f: impl FnOnce() -> R + Send) -> PyResult<R> {
    py.detach(|| match threads {
        Some(_) => Ok(f()),
        None if inline => Ok(f()),
        None => on_threads(None, f),
    })
}

/// Whether a CPU engine's call on `b` episodes of `t` steps runs inline.
fn inline(device: Device, cfg: &LayerConfig, b: usize, t: usize) -> bool {
    device == Device::Cpu && neuroplastic::cpu::runs_inline(cfg, b, t)
}

/// A float element type the bindings accept: its numpy name.
trait Float: Element + Copy + Default + Into<f64> + Send + Sync + 'static {
    const NAME: &'static str;
}
impl Float for f32 {
    const NAME: &'static str = "float32";
}
impl Float for f64 {
    const NAME: &'static str = "float64";
}

/// The numpy dtype name of `obj`, or `None` when it is not an ndarray.
fn dtype_of(obj: &Bound<'_, PyAny>) -> Option<String> {
    obj.cast::<PyUntypedArray>().ok().map(|a| a.dtype().to_string())
}

/// Copies a numpy array of element type `T` (any strides) into a row-major
/// vector, with its shape. A non-array or another dtype is a `TypeError`
/// naming `arg`: nothing is converted silently. A copy too large for the
/// memory is a `MemoryError` naming `arg`, not an abort.
fn read_any<T: Float>(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<(Vec<T>, Vec<usize>)> {
    let Ok(arr) = obj.cast::<PyArrayDyn<T>>() else {
        return Err(match dtype_of(obj) {
            // numpy spells a native dtype by name, another byte order by code (`>f4`).
            Some(d) if d.starts_with(['>', '<', '=']) => PyTypeError::new_err(format!(
                "{arg}: expected a {} array in this machine's byte order, got {d}; convert it with .astype(np.{})",
                T::NAME,
                T::NAME
            )),
            Some(d) => PyTypeError::new_err(format!(
                "{arg}: expected a {} array, got {d} (every array of one call has the dtype of the inputs: `inputs`, \
                 or `trajectory[\"inner.x\"]` for `meta_grad`)",
                T::NAME
            )),
            None if obj.hasattr("dtype").unwrap_or(false) => PyTypeError::new_err(format!(
                "{arg}: expected a numpy array of {}, got a numpy scalar ({}); wrap it with np.asarray",
                T::NAME,
                type_name(obj)
            )),
            None => {
                PyTypeError::new_err(format!("{arg}: expected a numpy array of {}, got {}", T::NAME, type_name(obj)))
            }
        });
    };
    // numpy allows byte strides that are not a multiple of the element size
    // (a field of a packed record array), which an element-strided view
    // cannot express: numpy copies such an array into C order first.
    let item = std::mem::size_of::<T>() as isize;
    if arr.strides().iter().any(|s| s % item != 0) {
        let copy = obj.py().import("numpy")?.getattr("ascontiguousarray")?.call1((obj,))?;
        return read_any::<T>(&copy, arg);
    }
    let ro = arr.readonly();
    let shape = ro.shape().to_vec();
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
    let mut data = Vec::new();
    data.try_reserve_exact(n).map_err(|_| {
        PyMemoryError::new_err(format!(
            "{arg}: a copy of this array (shape {}, {}) does not fit in memory",
            Shape(shape.clone()),
            neuroplastic::limits::human((n as u128).saturating_mul(item as u128))
        ))
    })?;
    // `as_slice` also accepts Fortran order (memory order, not row-major),
    // so only a C-contiguous array is copied as a block.
    match ro.as_slice() {
        Ok(s) if arr.is_c_contiguous() => data.extend_from_slice(s),
        _ => data.extend(ro.as_array().iter().copied()),
    }
    Ok((data, shape))
}

/// [`read_any`] with an exact shape check: the message says what was expected.
fn read<T: Float>(obj: &Bound<'_, PyAny>, arg: &str, shape: &[usize]) -> PyResult<Vec<T>> {
    let (data, got) = read_any::<T>(obj, arg)?;
    if got != shape {
        return Err(py_err(neuroplastic::Error::ShapeMismatch {
            arg: arg.into(),
            expected: Shape(shape.to_vec()),
            got: Shape(got),
        }));
    }
    Ok(data)
}

/// A row-major vector as a numpy array of `shape` (no copy).
fn write<'py, T: Float>(py: Python<'py>, data: Vec<T>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, data).reshape(shape.to_vec())?.into_any())
}

/// Reads `{name: array}` into [`Params`]: every tensor the configuration
/// uses must be there with its exact shape; an unused one may be left out.
fn read_params<T: Float>(cfg: &LayerConfig, dict: &Bound<'_, PyAny>) -> PyResult<Params<T>> {
    let dict = dict.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!("params: expected a dict {{name: array}}, got {}", type_name(dict)))
    })?;
    let shapes = param_shapes(cfg);
    for key in dict.keys() {
        let key: String = key.extract().map_err(|_| PyTypeError::new_err("params: keys must be strings"))?;
        if !PARAM_NAMES.contains(&key.as_str()) {
            return Err(PyValueError::new_err(format!(
                "params: unknown tensor {key:?}; this configuration uses {}",
                used_names(cfg).join(", ")
            )));
        }
    }
    let mut p = Params::<T>::default();
    for ((name, slot), (_, shape)) in p.named_mut().into_iter().zip(shapes) {
        let arg = format!("params.{name}");
        match dict.get_item(name)? {
            // An unused tensor goes through as given: the crate's own check
            // then says it must be empty and why.
            Some(obj) if shape == [0] => *slot = read_any::<T>(&obj, &arg)?.0,
            Some(obj) => *slot = read::<T>(&obj, &arg, &shape)?,
            None if shape == [0] => {}
            None => {
                return Err(PyValueError::new_err(format!(
                    "params: missing {name:?}, expected shape {} (rule {}, N = {}, I = {}, X = {}, K = {})",
                    Shape(shape),
                    cfg.rule.name(),
                    cfg.n,
                    cfg.pre(),
                    cfg.inputs,
                    cfg.k()
                )));
            }
        }
    }
    Ok(p)
}

fn used_names(cfg: &LayerConfig) -> Vec<&'static str> {
    param_shapes(cfg).into_iter().filter(|(_, s)| s != &[0]).map(|(n, _)| n).collect()
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "an object".into())
}

/// Reads a state `{"h", "hebb", "elig"}` of `batch` episodes (the keys the
/// configuration uses, all of them).
fn read_state<T: Float>(cfg: &LayerConfig, obj: &Bound<'_, PyAny>, arg: &str, batch: usize) -> PyResult<State<T>> {
    let dict = obj.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{arg}: expected a dict with keys h, hebb, elig (those used), got {}",
            type_name(obj)
        ))
    })?;
    let shapes = state_shapes(cfg, batch);
    for key in dict.keys() {
        let key: String = key.extract().map_err(|_| PyTypeError::new_err(format!("{arg}: keys must be strings")))?;
        let known = STATE_NAMES.iter().zip(&shapes).any(|(n, s)| *n == key && s != &[0]);
        if !known {
            let used: Vec<_> = STATE_NAMES.iter().zip(&shapes).filter(|(_, s)| *s != &[0]).map(|(n, _)| *n).collect();
            return Err(PyValueError::new_err(format!(
                "{arg}: unknown or unused entry {key:?}; this configuration's state is {}",
                used.join(", ")
            )));
        }
    }
    let mut s = State::<T>::default();
    for ((name, slot), shape) in STATE_NAMES.into_iter().zip([&mut s.h, &mut s.hebb, &mut s.elig]).zip(shapes) {
        if shape == [0] {
            continue;
        }
        let obj = dict.get_item(name)?.ok_or_else(|| {
            PyValueError::new_err(format!("{arg}: missing {name:?}, expected shape {}", Shape(shape.clone())))
        })?;
        *slot = read::<T>(&obj, &format!("{arg}.{name}"), &shape)?;
    }
    Ok(s)
}

fn write_state<'py, T: Float>(
    py: Python<'py>,
    cfg: &LayerConfig,
    s: State<T>,
    batch: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for ((name, v), shape) in STATE_NAMES.into_iter().zip([s.h, s.hebb, s.elig]).zip(state_shapes(cfg, batch)) {
        if shape != [0] {
            d.set_item(name, write(py, v, &shape)?)?;
        }
    }
    Ok(d)
}

fn write_grads<'py, T: Float>(
    py: Python<'py>,
    cfg: &LayerConfig,
    g: Gradients<T>,
    dims: (usize, usize),
) -> PyResult<Bound<'py, PyDict>> {
    let params = PyDict::new(py);
    let Gradients { params: gp, inputs, init } = g;
    let shapes = param_shapes(cfg);
    let mut gp = gp;
    for ((name, v), (_, shape)) in gp.named_mut().into_iter().zip(shapes) {
        if shape != [0] {
            params.set_item(name, write(py, std::mem::take(v), &shape)?)?;
        }
    }
    let out = PyDict::new(py);
    out.set_item("params", params)?;
    out.set_item("inputs", write(py, inputs, &[dims.0, dims.1, cfg.inputs])?)?;
    out.set_item("init", write_state(py, cfg, init, dims.0)?)?;
    Ok(out)
}

/// What the backward pass needs from a forward pass: the parameters and
/// inputs it ran with (copied, so that changing the caller's arrays in
/// between cannot change the gradients) and the backend's saved state.
enum Saved {
    F32 { fwd: Box<Forward>, params: Params<f32>, inputs: Vec<f32> },
    F64 { params: Params<f64>, inputs: Vec<f64>, init: State<f64> },
}

/// The opaque result of `Engine.forward` that `Engine.backward` consumes.
/// It may be used for several backward passes (as `retain_graph=True`
/// needs); its memory is freed when it is dropped.
#[pyclass(name = "ForwardHandle", module = "neuroplastic", frozen)]
struct Handle {
    saved: Saved,
    cfg: LayerConfig,
    device: Device,
    dims: (usize, usize),
}

#[pymethods]
impl Handle {
    /// Bytes the backend keeps for the backward pass (trace checkpoints and
    /// per-step vectors; the copied parameters and inputs not counted).
    #[getter]
    fn saved_bytes(&self) -> usize {
        match &self.saved {
            Saved::F32 { fwd, .. } => fwd.saved_bytes(),
            Saved::F64 { init, .. } => 8 * (init.h.len() + init.hebb.len() + init.elig.len()),
        }
    }
    /// `"float32"` or `"float64"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.saved {
            Saved::F32 { .. } => f32::NAME,
            Saved::F64 { .. } => f64::NAME,
        }
    }
    /// `(B, T)` of the forward pass.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        self.dims
    }
    fn __repr__(&self) -> String {
        format!(
            "ForwardHandle(device={:?}, dtype={:?}, B={}, T={}, saved_bytes={})",
            self.device.name(),
            self.dtype(),
            self.dims.0,
            self.dims.1,
            self.saved_bytes()
        )
    }
}

/// A plastic layer bound to a device (Rust `neuroplastic::Engine`), with its
/// workspace. Use one engine per thread.
#[pyclass(name = "Engine", module = "neuroplastic")]
struct PyEngine {
    engine: Engine,
    cfg: LayerConfig,
}

/// `(inputs, B, T)` read from `(B, T, X)`.
fn read_inputs<T: Float>(cfg: &LayerConfig, obj: &Bound<'_, PyAny>) -> PyResult<(Vec<T>, usize, usize)> {
    let (data, shape) = read_any::<T>(obj, "inputs")?;
    match shape[..] {
        [b, t, x] if x == cfg.inputs => Ok((data, b, t)),
        _ => Err(PyValueError::new_err(format!(
            "inputs: expected shape (B, T, {x}) (batch, steps, X = {x} input features), got shape {}",
            Shape(shape),
            x = cfg.inputs
        ))),
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (config, device = "cpu", *, threads = None, checkpoint = None, truncate = None, check_finite = false))]
    fn new(
        config: &PyLayerConfig,
        device: &str,
        threads: Option<usize>,
        checkpoint: Option<&Bound<'_, PyAny>>,
        truncate: Option<&Bound<'_, PyAny>>,
        check_finite: bool,
    ) -> PyResult<Self> {
        let checkpoint = match checkpoint.filter(|c| !c.is_none()) {
            Some(c) => parse_checkpoint(c)?,
            None => Checkpoint::Auto,
        };
        let opts = Options { threads, checkpoint, truncate: parse_truncate(truncate)?, check_finite };
        let engine = Engine::new(config.cfg, parse_device(device)?, opts).map_err(py_err)?;
        Ok(PyEngine { engine, cfg: config.cfg })
    }

    /// The layer configuration.
    #[getter]
    fn config(&self) -> PyLayerConfig {
        PyLayerConfig { cfg: self.cfg }
    }
    /// `"reference"`, `"cpu"` or `"cuda:K"`.
    #[getter]
    fn device(&self) -> String {
        self.engine.device().name()
    }
    /// Threads of a private pool, or `None` (the binding's per-process pool, one thread per core).
    #[getter]
    fn threads(&self) -> Option<usize> {
        self.engine.options().threads
    }
    /// `"auto"`, `"all"` or the interval `C`.
    #[getter]
    fn checkpoint<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        checkpoint_object(py, self.engine.options().checkpoint)
    }
    /// `None`, `("last", K)` or `("windows", K)`.
    #[getter]
    fn truncate<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        truncate_object(py, self.engine.options().truncate)
    }
    /// Whether every tensor is checked for NaN/inf.
    #[getter]
    fn check_finite(&self) -> bool {
        self.engine.options().check_finite
    }

    /// Runs the layer over a batch of episodes.
    ///
    /// `params`: `{name: array}` (see `LayerConfig.param_shapes`); `inputs`:
    /// `(B, T, X)`; `state`: the state before the first step (`None` = zeros).
    /// Every array has the dtype of `inputs`: `float32`, or `float64` on the
    /// reference device. Returns `(y, state, handle)`: `y` `(B, T, N)`, the
    /// final state, and the handle for `backward`.
    #[pyo3(signature = (params, inputs, state = None))]
    fn forward<'py>(
        &mut self,
        py: Python<'py>,
        params: &Bound<'py, PyAny>,
        inputs: &Bound<'py, PyAny>,
        state: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let cfg = self.cfg;
        let state = state.filter(|s| !s.is_none());
        let device = self.engine.device();
        match dtype_of(inputs).as_deref() {
            Some("float64") if device == Device::Reference => {
                let (x, b, t) = read_inputs::<f64>(&cfg, inputs)?;
                let p = read_params::<f64>(&cfg, params)?;
                let init = match state {
                    Some(s) => read_state::<f64>(&cfg, s, "state", b)?,
                    None => State::zeros(&cfg, b),
                };
                // `Engine` checks finiteness when asked; the f64 functions do
                // not, so the option is honoured here.
                if self.engine.options().check_finite {
                    p.validate(&cfg, true).map_err(py_err)?;
                    Seq::new(&x, b, t).validate(&cfg, true).map_err(py_err)?;
                    init.validate(&cfg, b, "state", true).map_err(py_err)?;
                }
                let (y, last) =
                    detach(py, None, false, || reference::plastic_fwd(&cfg, &p, Seq::new(&x, b, t), Some(&init)))?
                        .map_err(py_err)?;
                let handle = Handle { saved: Saved::F64 { params: p, inputs: x, init }, cfg, device, dims: (b, t) };
                let out: [Bound<'py, PyAny>; 3] = [
                    write(py, y, &[b, t, cfg.n])?,
                    write_state(py, &cfg, last, b)?.into_any(),
                    Bound::new(py, handle)?.into_any(),
                ];
                PyTuple::new(py, out)
            }
            Some("float64") => Err(PyTypeError::new_err(format!(
                "inputs: float64 runs on the reference device only (Engine(config, \"reference\")); this engine runs on {} in float32, so pass float32 arrays",
                device.name()
            ))),
            _ => {
                let (x, b, t) = read_inputs::<f32>(&cfg, inputs)?;
                let p = read_params::<f32>(&cfg, params)?;
                let init = state.map(|s| read_state::<f32>(&cfg, s, "state", b)).transpose()?;
                let engine = &mut self.engine;
                let threads = engine.options().threads;
                let mut fwd = detach(py, threads, inline(device, &cfg, b, t), || {
                    engine.forward(&p, Seq::new(&x, b, t), init.as_ref())
                })?
                .map_err(py_err)?;
                // The outputs go to Python; the backward pass reads only what `fwd` saved.
                let (y, last) = (std::mem::take(&mut fwd.y), std::mem::take(&mut fwd.last));
                let handle = Handle {
                    saved: Saved::F32 { fwd: Box::new(fwd), params: p, inputs: x },
                    cfg,
                    device,
                    dims: (b, t),
                };
                let out: [Bound<'py, PyAny>; 3] = [
                    write(py, y, &[b, t, cfg.n])?,
                    write_state(py, &cfg, last, b)?.into_any(),
                    Bound::new(py, handle)?.into_any(),
                ];
                PyTuple::new(py, out)
            }
        }
    }

    /// Back-propagates through the episode of `handle`.
    ///
    /// `dy`: dL/dy `(B, T, N)`; `dlast`: dL/d(final state), a state dict or
    /// `None` (zero). Returns `{"params": {name: grad}, "inputs": (B, T, X),
    /// "init": {state grads}}`, honouring the engine's truncation.
    #[pyo3(signature = (handle, dy, dlast = None))]
    fn backward<'py>(
        &mut self,
        py: Python<'py>,
        handle: &Bound<'py, Handle>,
        dy: &Bound<'py, PyAny>,
        dlast: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let h = handle.get();
        let cfg = self.cfg;
        if h.cfg != cfg {
            return Err(PyValueError::new_err(format!(
                "handle: it was made by an engine with another layer configuration ({:?}) than this engine's ({cfg:?})",
                h.cfg
            )));
        }
        let (b, t) = h.dims;
        let dlast = dlast.filter(|s| !s.is_none());
        match &h.saved {
            Saved::F64 { params, inputs, init } => {
                if self.engine.device() != Device::Reference {
                    return Err(PyValueError::new_err(format!(
                        "handle: it was made by a reference engine in float64, but this engine runs on {}",
                        self.engine.device().name()
                    )));
                }
                let dy = read::<f64>(dy, "dy", &[b, t, cfg.n])?;
                let dlast = dlast.map(|s| read_state::<f64>(&cfg, s, "dlast", b)).transpose()?;
                let truncate = self.engine.options().truncate;
                let g = detach(py, None, false, || {
                    reference::plastic_bwd(
                        &cfg,
                        params,
                        Seq::new(inputs, b, t),
                        Some(init),
                        &dy,
                        dlast.as_ref(),
                        truncate,
                    )
                })?
                .map_err(py_err)?;
                write_grads(py, &cfg, g, h.dims)
            }
            Saved::F32 { fwd, params, inputs } => {
                let dy = read::<f32>(dy, "dy", &[b, t, cfg.n])?;
                let dlast = dlast.map(|s| read_state::<f32>(&cfg, s, "dlast", b)).transpose()?;
                let engine = &mut self.engine;
                let threads = engine.options().threads;
                let g = detach(py, threads, inline(h.device, &cfg, b, t), || {
                    engine.backward(params, Seq::new(inputs, b, t), fwd, &dy, dlast.as_ref())
                })?
                .map_err(py_err)?;
                write_grads(py, &cfg, g, h.dims)
            }
        }
    }

    /// Starts `batch` episodes of `steps` steps to be run one step at a
    /// time (Rust `Engine::stepper`), for closed loops where each step's
    /// input depends on the previous output.
    ///
    /// `params` and `state` (`None` = zeros) as in `forward`; their dtype
    /// (`float32`, or `float64` on the reference device) is the stepper's.
    /// The parameters are copied: changing the arrays in between does not
    /// change the episode. Returns a `Stepper`.
    #[pyo3(signature = (params, batch, steps, state = None))]
    fn stepper<'py>(
        slf: &Bound<'py, PyEngine>,
        params: &Bound<'py, PyAny>,
        batch: usize,
        steps: usize,
        state: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<PyStepper> {
        let mut this = slf.try_borrow_mut()?;
        let cfg = this.cfg;
        let state = state.filter(|s| !s.is_none());
        let device = this.engine.device();
        let f64_params = params
            .cast::<PyDict>()
            .ok()
            .and_then(|d| d.get_item("w").ok().flatten())
            .and_then(|w| dtype_of(&w))
            .is_some_and(|d| d == "float64");
        let run = if f64_params && device == Device::Reference {
            let p = read_params::<f64>(&cfg, params)?;
            let init = state.map(|s| read_state::<f64>(&cfg, s, "state", batch)).transpose()?;
            if this.engine.options().check_finite {
                p.validate(&cfg, true).map_err(py_err)?;
                if let Some(s) = &init {
                    s.validate(&cfg, batch, "state", true).map_err(py_err)?;
                }
            }
            let s = StepperF64::new(cfg, p.clone(), batch, steps, init.as_ref()).map_err(py_err)?;
            let init = init.unwrap_or_else(|| State::zeros(&cfg, batch));
            Run::F64(Box::new(F64Run { s, params: p, init }))
        } else if f64_params {
            return Err(PyTypeError::new_err(format!(
                "params: float64 runs on the reference device only (Engine(config, \"reference\")); this engine runs on {} in float32, so pass float32 arrays",
                device.name()
            )));
        } else {
            let p = read_params::<f32>(&cfg, params)?;
            let init = state.map(|s| read_state::<f32>(&cfg, s, "state", batch)).transpose()?;
            Run::F32(Box::new(this.engine.stepper_owned(p, batch, steps, init.as_ref()).map_err(py_err)?))
        };
        drop(this);
        Ok(PyStepper { engine: slf.clone().unbind(), run, cfg, device, dims: (batch, steps) })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let o = self.engine.options();
        let threads = match o.threads {
            Some(n) => n.to_string(),
            None => "None".into(),
        };
        Ok(format!(
            "Engine({}, {:?}, threads={threads}, checkpoint={}, truncate={}, check_finite={})",
            PyLayerConfig { cfg: self.cfg }.__repr__(),
            self.engine.device().name(),
            checkpoint_object(py, o.checkpoint)?.repr()?,
            truncate_object(py, o.truncate)?.repr()?,
            if o.check_finite { "True" } else { "False" }
        ))
    }
}

/// The episode of a `Stepper`: running, or finished (its data moved into
/// the `ForwardHandle`).
enum Run {
    F32(Box<StepperOwned>),
    F64(Box<F64Run>),
    Finished,
}

/// A float64 episode on the reference device, with what its handle keeps.
struct F64Run {
    s: StepperF64,
    params: Params<f64>,
    init: State<f64>,
}

/// A batch of episodes run one step at a time (Rust `neuroplastic::Stepper`),
/// made by `Engine.stepper`. `step(x)` runs the next step, `finish()` ends
/// the episode with what `Engine.forward` returns for the recorded inputs.
#[pyclass(name = "Stepper", module = "neuroplastic")]
struct PyStepper {
    engine: Py<PyEngine>,
    run: Run,
    cfg: LayerConfig,
    device: Device,
    dims: (usize, usize),
}

impl PyStepper {
    fn finished_err(&self) -> PyErr {
        PyValueError::new_err(format!(
            "this stepper's episode (T = {} steps) is finished; start another with Engine.stepper",
            self.dims.1
        ))
    }
}

#[pymethods]
impl PyStepper {
    /// `(B, T)` of the episode batch.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        self.dims
    }
    /// Steps run so far (`T` once finished).
    #[getter]
    fn done(&self) -> usize {
        match &self.run {
            Run::F32(s) => s.done(),
            Run::F64(r) => r.s.done(),
            Run::Finished => self.dims.1,
        }
    }
    /// `"float32"` or `"float64"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.run {
            Run::F64(_) => f64::NAME,
            _ => f32::NAME,
        }
    }

    /// Runs the next step on `x` `(B, X)` (the stepper's dtype) and returns
    /// its outputs `(B, N)`.
    fn step<'py>(&mut self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let (b, n) = (self.dims.0, self.cfg.n);
        let shape = [b, self.cfg.inputs];
        let engine = self.engine.bind(py);
        match &mut self.run {
            Run::F32(s) => {
                let x = read::<f32>(x, "x", &shape)?;
                let mut e = engine.try_borrow_mut()?;
                let engine = &mut e.engine;
                let threads = engine.options().threads;
                let one = inline(self.device, &self.cfg, b, 1);
                let y = detach(py, threads, one, || s.step(engine, &x).map(<[f32]>::to_vec))?.map_err(py_err)?;
                write(py, y, &[b, n])
            }
            Run::F64(r) => {
                let s = &mut r.s;
                let x = read::<f64>(x, "x", &shape)?;
                if engine.try_borrow()?.engine.options().check_finite {
                    Seq::new(&x, b, 1).validate(&self.cfg, true).map_err(py_err)?;
                }
                let y = detach(py, None, false, || s.step(&x).map(<[f64]>::to_vec))?.map_err(py_err)?;
                write(py, y, &[b, n])
            }
            Run::Finished => Err(self.finished_err()),
        }
    }

    /// Ends the episode once all `T` steps have run: `(y, state, handle)` as
    /// `Engine.forward` returns them for the recorded inputs (`y` `(B, T, N)`,
    /// the final state, the handle for `Engine.backward`).
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let (b, t) = self.dims;
        let cfg = self.cfg;
        let done = self.done();
        if !matches!(self.run, Run::Finished) && done != t {
            return Err(PyValueError::new_err(format!(
                "finish: the episode has T = {t} steps but only {done} have run"
            )));
        }
        let (y, last, saved) = match std::mem::replace(&mut self.run, Run::Finished) {
            Run::F32(s) => {
                let engine = self.engine.bind(py).try_borrow()?;
                let (stepped, params) = s.finish(&engine.engine).map_err(py_err)?;
                let (mut fwd, inputs) = (stepped.fwd, stepped.inputs);
                let (y, last) = (std::mem::take(&mut fwd.y), std::mem::take(&mut fwd.last));
                (
                    write(py, y, &[b, t, cfg.n])?,
                    write_state(py, &cfg, last, b)?,
                    Saved::F32 { fwd: Box::new(fwd), params, inputs },
                )
            }
            Run::F64(r) => {
                let F64Run { s, params, init } = *r;
                let e = s.finish().map_err(py_err)?;
                (
                    write(py, e.y, &[b, t, cfg.n])?,
                    write_state(py, &cfg, e.last, b)?,
                    Saved::F64 { params, inputs: e.inputs, init },
                )
            }
            Run::Finished => return Err(self.finished_err()),
        };
        let handle = Handle { saved, cfg, device: self.device, dims: self.dims };
        let out: [Bound<'py, PyAny>; 3] = [y, last.into_any(), Bound::new(py, handle)?.into_any()];
        PyTuple::new(py, out)
    }

    fn __repr__(&self) -> String {
        format!(
            "Stepper(device={:?}, dtype={:?}, B={}, T={}, done={})",
            self.device.name(),
            self.dtype(),
            self.dims.0,
            self.dims.1,
            self.done()
        )
    }
}

/// The SIMD instruction sets the extension was compiled with.
#[pyfunction]
fn simd_features() -> Vec<&'static str> {
    neuroplastic::simd_features()
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLayerConfig>()?;
    m.add_class::<PyEngine>()?;
    m.add_class::<Handle>()?;
    m.add_class::<PyStepper>()?;
    m.add_function(wrap_pyfunction!(simd_features, m)?)?;
    m.add_function(wrap_pyfunction!(meta::meta_grad, m)?)?;
    m.add_function(wrap_pyfunction!(meta::meta_loss, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
