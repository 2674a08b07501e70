//! The C interface of neuroplastic.
//!
//! A small, stable surface: an opaque layer handle ([`NpLayer`]: a layer
//! configuration bound to a device, holding its parameters) and an opaque
//! forward result ([`NpForward`]), created, used and freed through `np_*`
//! functions that return a status code ([`NpStatus`]). On any status other
//! than `NP_OK`, [`np_last_error`] returns a sentence naming the offending
//! argument (its shape, what was expected), kept per thread until the next
//! failing call on that thread. No panic crosses the boundary: one is caught
//! and reported as `NP_ERR_PANIC` (this needs the default `panic = "unwind"`
//! strategy, which this crate's profiles keep).
//!
//! Tensors are flat, row-major `float` arrays, always passed with their
//! length in elements; the legend of dimensions is the crate's (`B` batch,
//! `T` steps, `N` neurons, `I` pre-synaptic size, `X` input features, `K`
//! modulator outputs):
//!
//! - parameters: the ten tensors `w (N, I)`, `alpha`, `eta`, `eta_e`, `u`,
//!   `b`, `mod.v`, `mod.c`, `mod.fanout`, `mod.fanout_bias` concatenated in
//!   that order (a tensor the configuration does not use has length 0);
//!   [`np_layer_param_len`] gives the total and [`np_layer_param_tensor`]
//!   the name, offset and length of each;
//! - inputs `(B, T, X)`, outputs `y` `(B, T, N)`, `dy` `(B, T, N)`;
//! - a state (initial, final, `dlast`, and the initial state's gradient):
//!   `h (B, N)` (recurrent layers; empty for feed-forward), then
//!   `hebb (B, N, I)`, then `elig (B, N, I)` (Retroactive only), concatenated;
//!   [`np_layer_state_len`] gives the total.
//!
//! A layer may be used from one thread at a time; different layers are
//! independent. Handles must be freed with their own `np_*_free`.
//!
//! The meta-gradient through an inner SGD loop (OML, ANML, MAML-style) is
//! one stateless call, [`np_meta_grad`], on a described learner
//! ([`NpMeta`]) and flat arrays ([`np_meta_param_len`] gives the layout);
//! [`np_meta_loss`] is the meta-loss alone, from the same arguments.

#![warn(missing_docs)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use neuroplastic::{
    Activation, AlphaShape, Checkpoint, Device, Engine, EtaMode, Forward, InputMap, LayerConfig, ModActivation,
    ModulatorConfig, Options, Params, Rule, Seq, State, Topology, Truncation, param_shapes, state_shapes,
};

/// A status code: `NP_OK` (0) or one of the `NP_ERR_*` codes.
pub type NpStatus = i32;

/// Success.
pub const NP_OK: NpStatus = 0;
/// A required pointer was NULL (the message names the argument).
pub const NP_ERR_NULL: NpStatus = 1;
/// An argument has a wrong value, length or shape (the message names it).
pub const NP_ERR_INVALID: NpStatus = 2;
/// The device cannot run here (the message says why).
pub const NP_ERR_UNAVAILABLE: NpStatus = 3;
/// An internal error (a caught panic); the message has its text.
pub const NP_ERR_PANIC: NpStatus = 4;

/// `NpLayerConfig.rule`: decaying Hebbian trace.
pub const NP_RULE_HEBB: u32 = 0;
/// `NpLayerConfig.rule`: Oja's rule.
pub const NP_RULE_OJA: u32 = 1;
/// `NpLayerConfig.rule`: neuromodulated ("backpropamine").
pub const NP_RULE_MODULATED: u32 = 2;
/// `NpLayerConfig.rule`: neuromodulated with an eligibility trace.
pub const NP_RULE_RETROACTIVE: u32 = 3;

/// `NpLayerConfig.topology`: `x = h_{t−1}`, inputs enter through `input_map`.
pub const NP_TOPOLOGY_RECURRENT: u32 = 0;
/// `NpLayerConfig.topology`: `x = the input`, `I = X`.
pub const NP_TOPOLOGY_FEED_FORWARD: u32 = 1;

/// `NpLayerConfig.input_map`: `u = U · input` with learned `U (N, X)`.
pub const NP_INPUT_LINEAR: u32 = 0;
/// `NpLayerConfig.input_map`: `u = input` (`X = N`).
pub const NP_INPUT_DIRECT: u32 = 1;

/// `NpLayerConfig.alpha`: one `α` per connection, `(N, I)`.
pub const NP_ALPHA_CONNECTION: u32 = 0;
/// `NpLayerConfig.alpha`: one `α` per neuron, `(N,)`.
pub const NP_ALPHA_NEURON: u32 = 1;
/// `NpLayerConfig.alpha`: one `α`, `(1,)`.
pub const NP_ALPHA_SCALAR: u32 = 2;

/// `NpLayerConfig.activation` and `mod_activation`: tanh.
pub const NP_ACT_TANH: u32 = 0;
/// `NpLayerConfig.activation` and `mod_activation`: identity.
pub const NP_ACT_IDENTITY: u32 = 1;
/// `NpLayerConfig.mod_activation` only: the logistic sigmoid.
pub const NP_ACT_SIGMOID: u32 = 2;

/// `NpLayerConfig.eta`: η (or η_e) is learned.
pub const NP_ETA_LEARNED: u32 = 0;
/// `NpLayerConfig.eta`: η (or η_e) is fixed (its gradient is zero).
pub const NP_ETA_FIXED: u32 = 1;

/// `np_layer_new` device: the f64 reference (slow; the oracle).
pub const NP_DEVICE_REFERENCE: u32 = 0;
/// `np_layer_new` device: the SIMD CPU backend.
pub const NP_DEVICE_CPU: u32 = 1;
/// `np_layer_new` device: CUDA (reports `NP_ERR_UNAVAILABLE` in this build).
pub const NP_DEVICE_CUDA: u32 = 2;

/// `NpOptions.checkpoint`: about `√T` snapshots (the default).
pub const NP_CHECKPOINT_AUTO: u32 = 0;
/// `NpOptions.checkpoint`: a snapshot every `checkpoint_every` steps.
pub const NP_CHECKPOINT_EVERY: u32 = 1;
/// `NpOptions.checkpoint`: keep every step's traces.
pub const NP_CHECKPOINT_ALL: u32 = 2;

/// `NpOptions.truncation`: back-propagate through the whole episode.
pub const NP_TRUNCATE_NONE: u32 = 0;
/// `NpOptions.truncation`: only through the last `truncation_k` steps.
pub const NP_TRUNCATE_LAST: u32 = 1;
/// `NpOptions.truncation`: in windows of `truncation_k` steps.
pub const NP_TRUNCATE_WINDOWS: u32 = 2;

/// The number of parameter tensors ([`np_layer_param_tensor`] indices).
pub const NP_PARAM_TENSORS: usize = 10;

/// `NpMeta.loss`: mean squared error, `Σ_o (ŷ − y)²` averaged over rows.
pub const NP_META_MSE: u32 = 0;
/// `NpMeta.loss`: softmax cross-entropy; targets are class indices (as floats).
pub const NP_META_XENT: u32 = 1;
/// `NpMeta.order`: exact, through every inner gradient (Hessian–vector products).
pub const NP_META_SECOND: u32 = 0;
/// `NpMeta.order`: every inner gradient taken as a constant.
pub const NP_META_FIRST: u32 = 1;

/// A meta-learner for [`np_meta_grad`] and [`np_meta_loss`]: its options
/// and the widths of its three stacks of dense layers. A stack's widths are
/// `[in, h1, …, out]` (`len − 1` layers); NULL with length 0 is an absent
/// stack (the RLN is then the identity; without an NM there is no gate).
/// The PLN (its weights are the fast weights θ) is required.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpMeta {
    /// `NP_META_MSE` or `NP_META_XENT`: the inner and the outer loss.
    pub loss: u32,
    /// `NP_META_SECOND` or `NP_META_FIRST`.
    pub order: u32,
    /// K > 0: differentiate only the last K inner steps; 0: all.
    pub truncate: usize,
    /// c > 0: clamp each inner-gradient element to ±c; 0: no clamp.
    pub clamp: f64,
    /// The PLN layer whose input the NM's sigmoid gates (0: the PLN's input).
    pub gate_at: usize,
    /// 1: β is learned (the last parameter, and it gets a gradient); 0: fixed at `inner_lr`.
    pub learn_lr: u32,
    /// β when it is fixed (ignored when learned).
    pub inner_lr: f64,
    /// Representation network widths `[D, …]` (ReLU after every layer), or NULL.
    pub rln: *const usize,
    /// Length of `rln` (0, or at least 2).
    pub rln_len: usize,
    /// Prediction network widths `[in, …, O]` (ReLU between layers).
    pub pln: *const usize,
    /// Length of `pln` (at least 2).
    pub pln_len: usize,
    /// Neuromodulatory network widths `[D, …, width of PLN layer gate_at's input]`, or NULL.
    pub nm: *const usize,
    /// Length of `nm` (0, or at least 2).
    pub nm_len: usize,
}

/// A plastic layer: its configuration, its device and its parameters.
/// Opaque; made by [`np_layer_new`], freed by [`np_layer_free`].
pub struct NpLayer {
    engine: Engine,
    params: Params<f32>,
}

/// A forward pass's result: outputs, final state and what the backward pass
/// needs (with a copy of the inputs and parameters it ran with). Opaque; made
/// by [`np_forward`], freed by [`np_forward_free`].
pub struct NpForward {
    fwd: Forward,
    inputs: Vec<f32>,
    params: Params<f32>,
    batch: usize,
    steps: usize,
}

/// Everything that fixes a layer's shapes and equations. Fill it with
/// [`np_layer_config_init`], then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpLayerConfig {
    /// `NP_RULE_*`.
    pub rule: u32,
    /// `NP_TOPOLOGY_*`.
    pub topology: u32,
    /// `NP_INPUT_*` (recurrent layers).
    pub input_map: u32,
    /// `NP_ALPHA_*`.
    pub alpha: u32,
    /// `NP_ACT_TANH` or `NP_ACT_IDENTITY`.
    pub activation: u32,
    /// `N`, the number of neurons.
    pub n: usize,
    /// `X`, input features per step (feed-forward: `I`).
    pub inputs: usize,
    /// 1: the layer has a bias `b (N,)`; 0: it has none.
    pub bias: u32,
    /// `NP_ETA_*`.
    pub eta: u32,
    /// `K`, modulator outputs (modulated rules).
    pub mod_k: usize,
    /// `NP_ACT_*`, the modulator's non-linearity.
    pub mod_activation: u32,
    /// 1: the modulator has a bias `c (K,)`.
    pub mod_bias: u32,
    /// 1: the fan-out `F (K, N)` is learned (else all ones).
    pub mod_fanout: u32,
    /// 1: the fan-out has a bias `g (N,)`.
    pub mod_fanout_bias: u32,
    /// `c_max`, the clip of the modulated rules.
    pub clip: f64,
}

/// Execution options. Fill them with [`np_options_init`], then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpOptions {
    /// CPU threads: 0 uses a shared global pool, `n` a private pool of `n`.
    /// Results are bitwise the same for any number.
    pub threads: usize,
    /// `NP_CHECKPOINT_*`.
    pub checkpoint: u32,
    /// The interval of `NP_CHECKPOINT_EVERY` (at least 1).
    pub checkpoint_every: usize,
    /// `NP_TRUNCATE_*`.
    pub truncation: u32,
    /// `K` of `NP_TRUNCATE_LAST` and `NP_TRUNCATE_WINDOWS` (at least 1).
    pub truncation_k: usize,
    /// 1: check every input for NaN and infinity (an error names the first).
    pub check_finite: u32,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// An error on its way to the caller: a status and a message.
struct Fail(NpStatus, String);

impl From<neuroplastic::Error> for Fail {
    fn from(e: neuroplastic::Error) -> Fail {
        let code = match e {
            neuroplastic::Error::Unavailable { .. } => NP_ERR_UNAVAILABLE,
            _ => NP_ERR_INVALID,
        };
        Fail(code, e.to_string())
    }
}

fn invalid(msg: impl Into<String>) -> Fail {
    Fail(NP_ERR_INVALID, msg.into())
}

fn set_error(msg: &str) {
    // A message with a NUL inside would be cut there by C anyway.
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning an error or a panic into a status and the thread's last error.
fn guard(f: impl FnOnce() -> Result<(), Fail>) -> NpStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => NP_OK,
        Ok(Err(Fail(code, msg))) => {
            set_error(&msg);
            code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!("internal error (a bug in neuroplastic, please report it): {what}"));
            NP_ERR_PANIC
        }
    }
}

/// `&*ptr`, or an error naming `arg` when it is NULL.
///
/// # Safety
/// A non-NULL `ptr` must point to a valid `T` for `'a`.
unsafe fn obj<'a, T>(ptr: *const T, arg: &str) -> Result<&'a T, Fail> {
    // SAFETY: non-NULL by the check, valid by the caller's contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| Fail(NP_ERR_NULL, format!("{arg} is NULL")))
}

/// `&mut *ptr`, or an error naming `arg` when it is NULL.
///
/// # Safety
/// A non-NULL `ptr` must point to a valid `T`, not aliased, for `'a`.
unsafe fn obj_mut<'a, T>(ptr: *mut T, arg: &str) -> Result<&'a mut T, Fail> {
    // SAFETY: as `obj`.
    unsafe { ptr.as_mut() }.ok_or_else(|| Fail(NP_ERR_NULL, format!("{arg} is NULL")))
}

fn check_ptr(ptr: *const f32, len: usize, arg: &str) -> Result<(), Fail> {
    if ptr.is_null() {
        if len == 0 {
            return Ok(());
        }
        return Err(Fail(NP_ERR_NULL, format!("{arg} is NULL but its length is {len}")));
    }
    if !ptr.is_aligned() {
        return Err(invalid(format!("{arg} is not aligned for float")));
    }
    if len > isize::MAX as usize / size_of::<f32>() {
        return Err(invalid(format!("{arg}: length {len} is larger than any array")));
    }
    Ok(())
}

/// The `len` floats at `ptr` (NULL allowed when `len` is 0).
///
/// # Safety
/// A non-NULL `ptr` must point to `len` readable floats for `'a`.
unsafe fn floats<'a>(ptr: *const f32, len: usize, arg: &str) -> Result<&'a [f32], Fail> {
    check_ptr(ptr, len, arg)?;
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: non-NULL, aligned, size in range (checked); readable by contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The `len` writable floats at `ptr` (NULL allowed when `len` is 0).
///
/// # Safety
/// A non-NULL `ptr` must point to `len` writable floats, not aliased, for `'a`.
unsafe fn floats_mut<'a>(ptr: *mut f32, len: usize, arg: &str) -> Result<&'a mut [f32], Fail> {
    check_ptr(ptr, len, arg)?;
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: as `floats`, and writable by contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

fn expect_len(arg: &str, len: usize, want: usize, what: impl FnOnce() -> String) -> Result<(), Fail> {
    if len != want {
        return Err(invalid(format!("{arg}: expected {want} floats ({}), got {len}", what())));
    }
    Ok(())
}

fn flag(v: u32, arg: &str) -> Result<bool, Fail> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(invalid(format!("{arg} = {v}: expected 0 or 1"))),
    }
}

fn pick<T: Copy>(v: u32, arg: &str, table: &[(u32, &str, T)]) -> Result<T, Fail> {
    table.iter().find(|(k, _, _)| *k == v).map(|(_, _, t)| *t).ok_or_else(|| {
        let names: Vec<String> = table.iter().map(|(k, n, _)| format!("{k} ({n})")).collect();
        invalid(format!("{arg} = {v}: expected one of {}", names.join(", ")))
    })
}

const RULES: [(u32, &str, Rule); 4] = [
    (NP_RULE_HEBB, "NP_RULE_HEBB", Rule::Hebb),
    (NP_RULE_OJA, "NP_RULE_OJA", Rule::Oja),
    (NP_RULE_MODULATED, "NP_RULE_MODULATED", Rule::Modulated),
    (NP_RULE_RETROACTIVE, "NP_RULE_RETROACTIVE", Rule::Retroactive),
];
const TOPOLOGIES: [(u32, &str, Topology); 2] = [
    (NP_TOPOLOGY_RECURRENT, "NP_TOPOLOGY_RECURRENT", Topology::Recurrent),
    (NP_TOPOLOGY_FEED_FORWARD, "NP_TOPOLOGY_FEED_FORWARD", Topology::FeedForward),
];
const INPUT_MAPS: [(u32, &str, InputMap); 2] =
    [(NP_INPUT_LINEAR, "NP_INPUT_LINEAR", InputMap::Linear), (NP_INPUT_DIRECT, "NP_INPUT_DIRECT", InputMap::Direct)];
const ALPHAS: [(u32, &str, AlphaShape); 3] = [
    (NP_ALPHA_CONNECTION, "NP_ALPHA_CONNECTION", AlphaShape::Connection),
    (NP_ALPHA_NEURON, "NP_ALPHA_NEURON", AlphaShape::Neuron),
    (NP_ALPHA_SCALAR, "NP_ALPHA_SCALAR", AlphaShape::Scalar),
];
const ACTIVATIONS: [(u32, &str, Activation); 2] =
    [(NP_ACT_TANH, "NP_ACT_TANH", Activation::Tanh), (NP_ACT_IDENTITY, "NP_ACT_IDENTITY", Activation::Identity)];
const MOD_ACTIVATIONS: [(u32, &str, ModActivation); 3] = [
    (NP_ACT_TANH, "NP_ACT_TANH", ModActivation::Tanh),
    (NP_ACT_IDENTITY, "NP_ACT_IDENTITY", ModActivation::Identity),
    (NP_ACT_SIGMOID, "NP_ACT_SIGMOID", ModActivation::Sigmoid),
];
const ETAS: [(u32, &str, EtaMode); 2] =
    [(NP_ETA_LEARNED, "NP_ETA_LEARNED", EtaMode::Learned), (NP_ETA_FIXED, "NP_ETA_FIXED", EtaMode::Fixed)];

fn code_of<T: PartialEq + Copy>(v: T, table: &[(u32, &str, T)]) -> u32 {
    table.iter().find(|(_, _, t)| *t == v).map(|(k, _, _)| *k).unwrap_or(u32::MAX)
}

impl NpLayerConfig {
    fn from_rust(c: &LayerConfig) -> NpLayerConfig {
        NpLayerConfig {
            rule: code_of(c.rule, &RULES),
            topology: code_of(c.topology, &TOPOLOGIES),
            input_map: code_of(c.input_map, &INPUT_MAPS),
            alpha: code_of(c.alpha, &ALPHAS),
            activation: code_of(c.activation, &ACTIVATIONS),
            n: c.n,
            inputs: c.inputs,
            bias: c.bias as u32,
            eta: code_of(c.eta, &ETAS),
            mod_k: c.modulator.k,
            mod_activation: code_of(c.modulator.activation, &MOD_ACTIVATIONS),
            mod_bias: c.modulator.bias as u32,
            mod_fanout: c.modulator.fanout as u32,
            mod_fanout_bias: c.modulator.fanout_bias as u32,
            clip: c.clip,
        }
    }

    fn to_rust(self) -> Result<LayerConfig, Fail> {
        let cfg = LayerConfig {
            topology: pick(self.topology, "config.topology", &TOPOLOGIES)?,
            rule: pick(self.rule, "config.rule", &RULES)?,
            n: self.n,
            inputs: self.inputs,
            input_map: pick(self.input_map, "config.input_map", &INPUT_MAPS)?,
            alpha: pick(self.alpha, "config.alpha", &ALPHAS)?,
            activation: pick(self.activation, "config.activation", &ACTIVATIONS)?,
            bias: flag(self.bias, "config.bias")?,
            eta: pick(self.eta, "config.eta", &ETAS)?,
            modulator: ModulatorConfig {
                k: self.mod_k,
                activation: pick(self.mod_activation, "config.mod_activation", &MOD_ACTIVATIONS)?,
                bias: flag(self.mod_bias, "config.mod_bias")?,
                fanout: flag(self.mod_fanout, "config.mod_fanout")?,
                fanout_bias: flag(self.mod_fanout_bias, "config.mod_fanout_bias")?,
            },
            clip: self.clip,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl NpOptions {
    fn to_rust(self) -> Result<Options, Fail> {
        let checkpoint = match self.checkpoint {
            NP_CHECKPOINT_AUTO => Checkpoint::Auto,
            NP_CHECKPOINT_EVERY => Checkpoint::Every(self.checkpoint_every),
            NP_CHECKPOINT_ALL => Checkpoint::All,
            v => {
                return Err(invalid(format!(
                    "options.checkpoint = {v}: expected NP_CHECKPOINT_AUTO (0), NP_CHECKPOINT_EVERY (1) or NP_CHECKPOINT_ALL (2)"
                )));
            }
        };
        let truncate = match self.truncation {
            NP_TRUNCATE_NONE => Truncation::None,
            NP_TRUNCATE_LAST => Truncation::Last(self.truncation_k),
            NP_TRUNCATE_WINDOWS => Truncation::Windows(self.truncation_k),
            v => {
                return Err(invalid(format!(
                    "options.truncation = {v}: expected NP_TRUNCATE_NONE (0), NP_TRUNCATE_LAST (1) or NP_TRUNCATE_WINDOWS (2)"
                )));
            }
        };
        let opts = Options {
            threads: (self.threads > 0).then_some(self.threads),
            checkpoint,
            truncate,
            check_finite: flag(self.check_finite, "options.check_finite")?,
        };
        opts.validate()?;
        Ok(opts)
    }
}

/// The library's version, e.g. `"0.1.0"` (a static string).
#[unsafe(no_mangle)]
pub extern "C" fn np_version() -> *const c_char {
    static V: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    V.as_ptr()
}

/// The message of the last failing call on this thread (empty if none). The
/// pointer stays valid until the next failing call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn np_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Fills `out` with the defaults for a layer of `n` neurons: a recurrent
/// layer with `inputs` external inputs through learned weights `U`, or a
/// feed-forward layer with `I = inputs`; `α` per connection, tanh, no bias,
/// learned η, a modulator of `K = 1` with tanh and a bias, `c_max = 1`.
///
/// # Safety
/// `out` must be NULL or point to a writable `NpLayerConfig`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_layer_config_init(
    out: *mut NpLayerConfig,
    rule: u32,
    topology: u32,
    n: usize,
    inputs: usize,
) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let out = unsafe { obj_mut(out, "out") }?;
        let rule = pick(rule, "rule", &RULES)?;
        let cfg = match pick(topology, "topology", &TOPOLOGIES)? {
            Topology::Recurrent => LayerConfig::recurrent(rule, n, inputs),
            Topology::FeedForward => LayerConfig::feed_forward(rule, inputs, n),
        };
        *out = NpLayerConfig::from_rust(&cfg);
        Ok(())
    })
}

/// Fills `out` with the default options: the global thread pool,
/// `NP_CHECKPOINT_AUTO`, no truncation, no finiteness check.
///
/// # Safety
/// `out` must be NULL or point to a writable `NpOptions`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_options_init(out: *mut NpOptions) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let out = unsafe { obj_mut(out, "out") }?;
        *out = NpOptions {
            threads: 0,
            checkpoint: NP_CHECKPOINT_AUTO,
            checkpoint_every: 1,
            truncation: NP_TRUNCATE_NONE,
            truncation_k: 1,
            check_finite: 0,
        };
        Ok(())
    })
}

/// Creates a layer for `config` on `device` (`NP_DEVICE_*`; `ordinal` picks
/// the GPU of `NP_DEVICE_CUDA` and is ignored otherwise) with `options`
/// (NULL: the defaults). Its parameters start at zero (set them with
/// [`np_layer_set_params`]). On success `*out` is the new layer.
///
/// # Safety
/// `config` must be NULL or point to an `NpLayerConfig`, `options` NULL or
/// to an `NpOptions`, `out` NULL or to a writable `NpLayer *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_layer_new(
    config: *const NpLayerConfig,
    device: u32,
    ordinal: usize,
    options: *const NpOptions,
    out: *mut *mut NpLayer,
) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let out = unsafe { obj_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: by the caller's contract.
        let cfg = unsafe { obj(config, "config") }?.to_rust()?;
        let opts = if options.is_null() {
            Options::default()
        } else {
            // SAFETY: non-NULL, valid by the caller's contract.
            unsafe { obj(options, "options") }?.to_rust()?
        };
        let device = match device {
            NP_DEVICE_REFERENCE => Device::Reference,
            NP_DEVICE_CPU => Device::Cpu,
            NP_DEVICE_CUDA => Device::Cuda(ordinal),
            v => {
                return Err(invalid(format!(
                    "device = {v}: expected NP_DEVICE_REFERENCE (0), NP_DEVICE_CPU (1) or NP_DEVICE_CUDA (2)"
                )));
            }
        };
        let engine = Engine::new(cfg, device, opts)?;
        *out = Box::into_raw(Box::new(NpLayer { engine, params: Params::zeros(&cfg) }));
        Ok(())
    })
}

/// Frees a layer (NULL is a no-op). Forward results made by it stay valid
/// handles, but can no longer be back-propagated through it.
///
/// # Safety
/// `layer` must be NULL or a pointer returned by `np_layer_new`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_layer_free(layer: *mut NpLayer) {
    if !layer.is_null() {
        // Dropping cannot panic across the boundary: catch it anyway.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: returned by np_layer_new (Box::into_raw), freed once.
            drop(unsafe { Box::from_raw(layer) })
        }));
    }
}

/// The number of floats of the layer's parameters (all ten tensors).
///
/// # Safety
/// `layer` must be NULL or a live layer, `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_layer_param_len(layer: *const NpLayer, out: *mut usize) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let (layer, out) = unsafe { (obj(layer, "layer")?, obj_mut(out, "out")?) };
        *out = layer.params.len();
        Ok(())
    })
}

/// Where parameter tensor `index` (0..`NP_PARAM_TENSORS`) lies in the flat
/// parameter array: its name (a static string: `"w"`, `"alpha"`, `"eta"`,
/// `"eta_e"`, `"u"`, `"b"`, `"mod.v"`, `"mod.c"`, `"mod.fanout"`,
/// `"mod.fanout_bias"`), offset and length in floats (0 when unused). Any of
/// `name`, `offset`, `len` may be NULL.
///
/// # Safety
/// `layer` must be NULL or a live layer; the outputs NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_layer_param_tensor(
    layer: *const NpLayer,
    index: usize,
    name: *mut *const c_char,
    offset: *mut usize,
    len: *mut usize,
) -> NpStatus {
    const NAMES: [&CStr; NP_PARAM_TENSORS] =
        [c"w", c"alpha", c"eta", c"eta_e", c"u", c"b", c"mod.v", c"mod.c", c"mod.fanout", c"mod.fanout_bias"];
    guard(|| {
        // SAFETY: by the caller's contract.
        let layer = unsafe { obj(layer, "layer") }?;
        if index >= NP_PARAM_TENSORS {
            return Err(invalid(format!("index = {index}: expected 0 to {}", NP_PARAM_TENSORS - 1)));
        }
        let shapes = param_shapes(layer.engine.config());
        let size = |s: &Vec<usize>| s.iter().product::<usize>();
        let at: usize = shapes[..index].iter().map(|(_, s)| size(s)).sum();
        // SAFETY: each output NULL or writable by the caller's contract.
        unsafe {
            if let Some(p) = name.as_mut() {
                *p = NAMES[index].as_ptr();
            }
            if let Some(p) = offset.as_mut() {
                *p = at;
            }
            if let Some(p) = len.as_mut() {
                *p = size(&shapes[index].1);
            }
        }
        Ok(())
    })
}

fn split_params(cfg: &LayerConfig, flat: &[f32]) -> Params<f32> {
    let mut p = Params::zeros(cfg);
    let mut at = 0;
    for (_, v) in p.named_mut() {
        let len = v.len();
        v.copy_from_slice(&flat[at..at + len]);
        at += len;
    }
    p
}

fn param_note(cfg: &LayerConfig) -> String {
    param_shapes(cfg)
        .iter()
        .filter(|(_, s)| s != &[0])
        .map(|(n, s)| format!("{n} {s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sets the layer's parameters from the flat array `params` of `len` floats
/// (see [`np_layer_param_len`] and [`np_layer_param_tensor`]). η and η_e must
/// lie in `[0, 1]`.
///
/// # Safety
/// `layer` must be NULL or a live layer; `params` NULL or `len` readable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_layer_set_params(layer: *mut NpLayer, params: *const f32, len: usize) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let (layer, flat) = unsafe { (obj_mut(layer, "layer")?, floats(params, len, "params")?) };
        let cfg = *layer.engine.config();
        expect_len("params", len, layer.params.len(), || param_note(&cfg))?;
        let p = split_params(&cfg, flat);
        p.validate(&cfg, false)?;
        layer.params = p;
        Ok(())
    })
}

/// Copies the layer's parameters into `out` (`len` floats, the flat layout).
///
/// # Safety
/// `layer` must be NULL or a live layer; `out` NULL or `len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_layer_get_params(layer: *const NpLayer, out: *mut f32, len: usize) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let (layer, out) = unsafe { (obj(layer, "layer")?, floats_mut(out, len, "out")?) };
        let cfg = *layer.engine.config();
        expect_len("out", len, layer.params.len(), || param_note(&cfg))?;
        let mut at = 0;
        for (_, v) in layer.params.named() {
            out[at..at + v.len()].copy_from_slice(v);
            at += v.len();
        }
        Ok(())
    })
}

fn state_len(cfg: &LayerConfig, batch: usize) -> Result<usize, Fail> {
    let total = state_shapes(cfg, batch).iter().try_fold(0usize, |acc, s| {
        s.iter().try_fold(1usize, |m, &d| m.checked_mul(d)).and_then(|n| acc.checked_add(n))
    });
    total.ok_or_else(|| invalid(format!("batch = {batch}: the state would have more elements than fit in memory")))
}

fn state_note(cfg: &LayerConfig, batch: usize) -> String {
    let [h, hebb, elig] = state_shapes(cfg, batch);
    format!("h {h:?}, then hebb {hebb:?}, then elig {elig:?}; B = {batch}, N = {}, I = {}", cfg.n, cfg.pre())
}

fn split_state(cfg: &LayerConfig, batch: usize, flat: &[f32]) -> State<f32> {
    let mut s = State::zeros(cfg, batch);
    let (h, rest) = flat.split_at(s.h.len());
    let (hebb, elig) = rest.split_at(s.hebb.len());
    s.h.copy_from_slice(h);
    s.hebb.copy_from_slice(hebb);
    s.elig.copy_from_slice(elig);
    s
}

fn join_state(s: &State<f32>, out: &mut [f32]) {
    let (h, rest) = out.split_at_mut(s.h.len());
    let (hebb, elig) = rest.split_at_mut(s.hebb.len());
    h.copy_from_slice(&s.h);
    hebb.copy_from_slice(&s.hebb);
    elig.copy_from_slice(&s.elig);
}

/// The number of floats of a state of `batch` episodes: `h (B, N)`
/// (recurrent) + `hebb (B, N, I)` + `elig (B, N, I)` (Retroactive).
///
/// # Safety
/// `layer` must be NULL or a live layer, `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_layer_state_len(layer: *const NpLayer, batch: usize, out: *mut usize) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let (layer, out) = unsafe { (obj(layer, "layer")?, obj_mut(out, "out")?) };
        *out = state_len(layer.engine.config(), batch)?;
        Ok(())
    })
}

/// Runs the layer over `batch` episodes of `steps` steps: `inputs` is
/// `(B, T, X)` (`inputs_len` floats); `init` the state before the first step
/// (`init_len` floats, the state layout), or NULL for zeros. On success
/// `*out` is the result, to read with [`np_forward_y`] and
/// [`np_forward_last`] and to back-propagate with [`np_backward`].
///
/// # Safety
/// `layer` NULL or live; `inputs` NULL or `inputs_len` readable floats;
/// `init` NULL or `init_len` readable floats; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_forward(
    layer: *mut NpLayer,
    inputs: *const f32,
    inputs_len: usize,
    batch: usize,
    steps: usize,
    init: *const f32,
    init_len: usize,
    out: *mut *mut NpForward,
) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let out = unsafe { obj_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: by the caller's contract.
        let (layer, xs) = unsafe { (obj_mut(layer, "layer")?, floats(inputs, inputs_len, "inputs")?) };
        let cfg = *layer.engine.config();
        let init = if init.is_null() {
            None
        } else {
            // SAFETY: by the caller's contract.
            let flat = unsafe { floats(init, init_len, "init") }?;
            expect_len("init", init_len, state_len(&cfg, batch)?, || state_note(&cfg, batch))?;
            Some(split_state(&cfg, batch, flat))
        };
        let fwd = layer.engine.forward(&layer.params, Seq::new(xs, batch, steps), init.as_ref())?;
        let res = NpForward { fwd, inputs: xs.to_vec(), params: layer.params.clone(), batch, steps };
        *out = Box::into_raw(Box::new(res));
        Ok(())
    })
}

/// Frees a forward result (NULL is a no-op).
///
/// # Safety
/// `fwd` must be NULL or a pointer returned by `np_forward`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_forward_free(fwd: *mut NpForward) {
    if !fwd.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: returned by np_forward (Box::into_raw), freed once.
            drop(unsafe { Box::from_raw(fwd) })
        }));
    }
}

/// Copies the outputs `y` `(B, T, N)` into `out` (`len` floats).
///
/// # Safety
/// `fwd` NULL or live; `out` NULL or `len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_forward_y(fwd: *const NpForward, out: *mut f32, len: usize) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let (f, out) = unsafe { (obj(fwd, "fwd")?, floats_mut(out, len, "out")?) };
        let n = f.fwd.y.len() / (f.batch * f.steps);
        expect_len("out", len, f.fwd.y.len(), || format!("y (B, T, N) = ({}, {}, {n})", f.batch, f.steps))?;
        out.copy_from_slice(&f.fwd.y);
        Ok(())
    })
}

/// Copies the state after the last step into `out` (`len` floats, the state
/// layout).
///
/// # Safety
/// `fwd` NULL or live; `out` NULL or `len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_forward_last(fwd: *const NpForward, out: *mut f32, len: usize) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let (f, out) = unsafe { (obj(fwd, "fwd")?, floats_mut(out, len, "out")?) };
        let s = &f.fwd.last;
        let want = s.h.len() + s.hebb.len() + s.elig.len();
        expect_len("out", len, want, || {
            format!("h {} + hebb {} + elig {} floats for B = {}", s.h.len(), s.hebb.len(), s.elig.len(), f.batch)
        })?;
        join_state(s, out);
        Ok(())
    })
}

/// Back-propagates through the episodes of `fwd` (made by this layer), with
/// the parameters and inputs `fwd` ran with.
///
/// `dy`: dL/dy `(B, T, N)` (`dy_len` floats); `dlast`: dL/d(final state) in
/// the state layout, or NULL for zero. Writes dL/d(parameters) into
/// `grad_params` (the flat parameter layout; a fixed η gets 0), dL/d(inputs)
/// `(B, T, X)` into `grad_inputs` and dL/d(initial state) into `grad_init`
/// (the state layout); each output may be NULL (with length 0) when not
/// wanted. Honours the layer's truncation option.
///
/// # Safety
/// `layer`, `fwd` NULL or live; every array NULL or as long as its length
/// says (readable inputs, writable outputs, outputs not overlapping).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_backward(
    layer: *mut NpLayer,
    fwd: *const NpForward,
    dy: *const f32,
    dy_len: usize,
    dlast: *const f32,
    dlast_len: usize,
    grad_params: *mut f32,
    grad_params_len: usize,
    grad_inputs: *mut f32,
    grad_inputs_len: usize,
    grad_init: *mut f32,
    grad_init_len: usize,
) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let (layer, f, dy) = unsafe { (obj_mut(layer, "layer")?, obj(fwd, "fwd")?, floats(dy, dy_len, "dy")?) };
        let cfg = *layer.engine.config();
        let (b, t) = (f.batch, f.steps);
        let slen = state_len(&cfg, b)?;
        let dlast = if dlast.is_null() {
            None
        } else {
            // SAFETY: by the caller's contract.
            let flat = unsafe { floats(dlast, dlast_len, "dlast") }?;
            expect_len("dlast", dlast_len, slen, || state_note(&cfg, b))?;
            Some(split_state(&cfg, b, flat))
        };
        // Outputs: checked before any work, so that a wrong length costs nothing.
        let out = |ptr: *mut f32, len: usize, arg: &str, want: usize, what: &dyn Fn() -> String| {
            if ptr.is_null() && len == 0 {
                return Ok(None);
            }
            // SAFETY: by the caller's contract.
            let s = unsafe { floats_mut(ptr, len, arg) }?;
            expect_len(arg, len, want, what)?;
            Ok::<_, Fail>(Some(s))
        };
        let gp = out(grad_params, grad_params_len, "grad_params", f.params.len(), &|| param_note(&cfg))?;
        let gi = out(grad_inputs, grad_inputs_len, "grad_inputs", f.inputs.len(), &|| {
            format!("inputs (B, T, X) = ({b}, {t}, {})", cfg.inputs)
        })?;
        let gs = out(grad_init, grad_init_len, "grad_init", slen, &|| state_note(&cfg, b))?;
        let g = layer.engine.backward(&f.params, Seq::new(&f.inputs, b, t), &f.fwd, dy, dlast.as_ref())?;
        if let Some(o) = gp {
            let mut at = 0;
            for (_, v) in g.params.named() {
                o[at..at + v.len()].copy_from_slice(v);
                at += v.len();
            }
        }
        if let Some(o) = gi {
            o.copy_from_slice(&g.inputs);
        }
        if let Some(o) = gs {
            join_state(&g.init, o);
        }
        Ok(())
    })
}

/// The `len` sizes at `ptr` (NULL allowed when `len` is 0).
///
/// # Safety
/// A non-NULL `ptr` must point to `len` readable `size_t` for `'a`.
unsafe fn sizes<'a>(ptr: *const usize, len: usize, arg: &str) -> Result<&'a [usize], Fail> {
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Fail(NP_ERR_NULL, format!("{arg} is NULL but its length is {len}")))
        };
    }
    if !ptr.is_aligned() || len > isize::MAX as usize / size_of::<usize>() {
        return Err(invalid(format!("{arg}: not an aligned array of {len} size_t")));
    }
    // SAFETY: non-NULL, aligned, size in range; readable by contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// What `m` describes: the options, the input width and the three stacks
/// (checked: lengths, codes, and parameter counts that fit in memory).
struct MetaShape {
    cfg: neuroplastic::meta::MetaConfig,
    input: usize,
    stacks: [neuroplastic::meta::Stack; 3],
    /// Parameters of each stack.
    counts: [usize; 3],
}

impl MetaShape {
    /// All parameters, β included when learned.
    fn total(&self) -> usize {
        self.counts.iter().sum::<usize>() + usize::from(self.cfg.learn_lr)
    }
}

/// Reads and checks `m`.
///
/// # Safety
/// The pointers in `m` as [`np_meta_grad`] requires.
unsafe fn meta_shape(m: &NpMeta) -> Result<MetaShape, Fail> {
    use neuroplastic::meta::{Loss, MetaConfig, Order, Stack};
    // SAFETY: by the caller's contract.
    let widths = unsafe {
        [sizes(m.rln, m.rln_len, "meta.rln")?, sizes(m.pln, m.pln_len, "meta.pln")?, sizes(m.nm, m.nm_len, "meta.nm")?]
    };
    let mut counts = [0usize; 3];
    for (k, (arg, w)) in ["meta.rln", "meta.pln", "meta.nm"].iter().zip(widths).enumerate() {
        let required = k == 1;
        if w.len() == 1 || (required && w.len() < 2) {
            return Err(invalid(format!(
                "{arg}_len = {}: a stack's widths are [in, …, out], at least 2{}",
                w.len(),
                if required { "" } else { " (or 0: no such stack)" }
            )));
        }
        counts[k] = w
            .windows(2)
            .try_fold(0usize, |a, p| {
                p[0].checked_mul(p[1]).and_then(|x| x.checked_add(p[1])).and_then(|x| a.checked_add(x))
            })
            .filter(|&n| n <= isize::MAX as usize / size_of::<f32>())
            .ok_or_else(|| invalid(format!("{arg}: widths {w:?} give more parameters than any array holds")))?;
    }
    let loss = pick(
        m.loss,
        "meta.loss",
        &[(NP_META_MSE, "NP_META_MSE", Loss::Mse), (NP_META_XENT, "NP_META_XENT", Loss::Xent)],
    )?;
    let order = pick(
        m.order,
        "meta.order",
        &[(NP_META_SECOND, "NP_META_SECOND", Order::Second), (NP_META_FIRST, "NP_META_FIRST", Order::First)],
    )?;
    let learn_lr = flag(m.learn_lr, "meta.learn_lr")?;
    if order == Order::First && m.truncate > 0 {
        return Err(invalid(format!(
            "meta.truncate = {} with NP_META_FIRST: truncation chooses which steps are differentiated to second order; \
             use NP_META_SECOND or 0",
            m.truncate
        )));
    }
    let held = m.inner_lr as f32;
    if !learn_lr && !(m.inner_lr.is_finite() && held.is_finite() && (m.inner_lr == 0.0 || held != 0.0)) {
        return Err(invalid(format!(
            "meta.inner_lr = {}: expected a finite number a float can hold",
            neuroplastic::error::number(m.inner_lr)
        )));
    }
    let layers = widths[1].len() - 1;
    if m.gate_at >= layers {
        return Err(invalid(format!(
            "meta.gate_at = {}: the PLN has {layers} layers (expected 0 … {})",
            m.gate_at,
            layers - 1
        )));
    }
    let cfg = MetaConfig {
        loss,
        inner_lr: m.inner_lr,
        learn_lr,
        order,
        truncate: m.truncate,
        clamp: m.clamp,
        gate_at: m.gate_at,
    };
    let input = widths[0].first().or(widths[1].first()).copied().unwrap_or(0);
    let stacks = widths.map(Stack::from_widths);
    Ok(MetaShape { cfg, input, stacks, counts })
}

/// Fills `*out` with the number of parameters of `meta`: every RLN, PLN and
/// NM layer's weight `(out, in)` then bias `(out)`, stack after stack, and β
/// last when it is learned. That is the layout of `params` and `grad` in
/// [`np_meta_grad`].
///
/// # Safety
/// `meta` NULL or valid, its width pointers NULL or readable for their
/// lengths; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn np_meta_param_len(meta: *const NpMeta, out: *mut usize) -> NpStatus {
    guard(|| {
        // SAFETY: by the caller's contract.
        let (meta, out) = unsafe { (obj(meta, "meta")?, obj_mut(out, "out")?) };
        // SAFETY: by the caller's contract.
        *out = unsafe { meta_shape(meta) }?.total();
        Ok(())
    })
}

/// A meta-learning call's arguments, read and checked: the model, the
/// trajectory, the device, and the stacks' parameter counts.
struct MetaCall {
    m: neuroplastic::meta::MetaModel<f32>,
    t: neuroplastic::meta::Trajectory<f32>,
    /// `NP_DEVICE_REFERENCE` (else `NP_DEVICE_CPU`).
    reference: bool,
    /// Parameters of the RLN, PLN and NM.
    counts: [usize; 3],
    /// All parameters, β included when learned.
    total: usize,
}

/// An input array of a C call: its pointer and length.
type FloatsIn = (*const f32, usize);

/// Reads and checks the arguments that [`np_meta_grad`] and [`np_meta_loss`]
/// share (`data`: `inner_x`, `inner_y`, `outer_x`, `outer_y`), in the order
/// their errors are reported: `meta`, `params`, then
/// the call's own outputs (`outputs`, given the parameter count and a note
/// on the layout, returns what it checked), the model, the trajectory's
/// arrays, and last the device.
///
/// # Safety
/// The pointers as [`np_meta_grad`] requires.
#[allow(clippy::too_many_arguments)]
unsafe fn meta_call<R>(
    meta: &NpMeta,
    device: u32,
    params: *const f32,
    params_len: usize,
    [p, s, bi, bo]: [usize; 4],
    data: [FloatsIn; 4],
    outputs: impl FnOnce(usize, &dyn Fn() -> String) -> Result<R, Fail>,
) -> Result<(MetaCall, R), Fail> {
    use neuroplastic::meta::{Loss, MetaModel, Trajectory};
    let [(inner_x, inner_x_len), (inner_y, inner_y_len), (outer_x, outer_x_len), (outer_y, outer_y_len)] = data;
    // SAFETY: by the caller's contract.
    let sh = unsafe { meta_shape(meta) }?;
    let ([nr, np, nn], total) = (sh.counts, sh.total());
    let learn = sh.cfg.learn_lr;
    let note = || format!("RLN {nr}, PLN {np}, NM {nn}{}", if learn { ", β 1" } else { "" });
    // SAFETY: by the caller's contract.
    let params = unsafe { floats(params, params_len, "params") }?;
    expect_len("params", params_len, total, note)?;
    let out = outputs(total, &note)?;
    let [rln, pln, nm] = sh.stacks;
    let mut cfg = sh.cfg;
    let inner_lr = if learn { params[total - 1] } else { cfg.inner_lr as f32 };
    if learn {
        cfg.inner_lr = inner_lr as f64;
    }
    let m = MetaModel {
        cfg,
        input: sh.input,
        rln,
        rln_p: params[..nr].to_vec(),
        pln,
        theta0: params[nr..nr + np].to_vec(),
        nm,
        nm_p: params[nr + np..nr + np + nn].to_vec(),
        inner_lr,
    };
    m.validate()?;
    let (d, o) = (m.input, m.outputs());
    let ycols = if m.cfg.loss == Loss::Mse { o } else { 1 };
    let shape = || format!("p = {p}, s = {s}, bi = {bi}, bo = {bo}, D = {d}, {ycols} target column(s)");
    // SAFETY: by the caller's contract.
    let (ix, iy, ox, oy) = unsafe {
        (
            floats(inner_x, inner_x_len, "inner_x")?,
            floats(inner_y, inner_y_len, "inner_y")?,
            floats(outer_x, outer_x_len, "outer_x")?,
            floats(outer_y, outer_y_len, "outer_y")?,
        )
    };
    let n = |dims: &[usize]| dims.iter().try_fold(1usize, |a, &x| a.checked_mul(x)).unwrap_or(usize::MAX);
    expect_len("inner_x", inner_x_len, n(&[p, s, bi, d]), shape)?;
    expect_len("inner_y", inner_y_len, n(&[p, s, bi, ycols]), shape)?;
    expect_len("outer_x", outer_x_len, n(&[p, bo, d]), shape)?;
    expect_len("outer_y", outer_y_len, n(&[p, bo, ycols]), shape)?;
    let t = Trajectory {
        p,
        s,
        bi,
        bo,
        d,
        ycols,
        inner_x: ix.to_vec(),
        inner_y: iy.to_vec(),
        outer_x: ox.to_vec(),
        outer_y: oy.to_vec(),
    };
    let reference = match device {
        NP_DEVICE_CPU => false,
        NP_DEVICE_REFERENCE => true,
        NP_DEVICE_CUDA => {
            return Err(Fail(
                NP_ERR_UNAVAILABLE,
                "device: meta-learning has no CUDA backend yet; use NP_DEVICE_CPU".into(),
            ));
        }
        other => {
            return Err(invalid(format!(
                "device = {other}: expected NP_DEVICE_CPU ({NP_DEVICE_CPU}) or NP_DEVICE_REFERENCE ({NP_DEVICE_REFERENCE})"
            )));
        }
    };
    Ok((MetaCall { m, t, reference, counts: sh.counts, total }, out))
}

/// The meta-loss of OML, ANML or MAML-style meta-learning and its gradient
/// for every parameter. For each of the `p` tasks, the PLN's weights start
/// at θ₀ and take `s` SGD steps `θ ← θ − β·clamp(∇_θ ℓ(θ; inner batch k))`;
/// then the loss on the task's outer batch at the final θ. `*loss` is the
/// mean over tasks; `grad` (the layout of `params`, see
/// [`np_meta_param_len`]) its gradient, exact (or first order, or truncated,
/// as `meta` says). `device` is `NP_DEVICE_CPU` (f32, tasks in parallel) or
/// `NP_DEVICE_REFERENCE` (f64 inside).
///
/// Tensors, row-major: `inner_x (p, s, bi, D)`, `inner_y (p, s, bi, O)` for
/// `NP_META_MSE` or `(p, s, bi)` class indices for `NP_META_XENT`,
/// `outer_x (p, bo, D)`, `outer_y (p, bo, O)` or `(p, bo)`; `D` is the first
/// width of the RLN (or of the PLN without one), `O` the PLN's last.
///
/// # Safety
/// `meta` as in [`np_meta_param_len`]; every array NULL or readable (or,
/// for `grad`, writable and not aliased) for its length; `loss` NULL or
/// writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn np_meta_grad(
    meta: *const NpMeta,
    device: u32,
    params: *const f32,
    params_len: usize,
    p: usize,
    s: usize,
    bi: usize,
    bo: usize,
    inner_x: *const f32,
    inner_x_len: usize,
    inner_y: *const f32,
    inner_y_len: usize,
    outer_x: *const f32,
    outer_x_len: usize,
    outer_y: *const f32,
    outer_y_len: usize,
    loss: *mut f64,
    grad: *mut f32,
    grad_len: usize,
) -> NpStatus {
    use neuroplastic::meta::{cpu, reference};
    guard(|| {
        // SAFETY: by the caller's contract.
        let (meta, loss) = unsafe { (obj(meta, "meta")?, obj_mut(loss, "loss")?) };
        let data = [(inner_x, inner_x_len), (inner_y, inner_y_len), (outer_x, outer_x_len), (outer_y, outer_y_len)];
        let grad = |total: usize, note: &dyn Fn() -> String| {
            // SAFETY: by the caller's contract.
            let grad = unsafe { floats_mut(grad, grad_len, "grad") }?;
            expect_len("grad", grad_len, total, note)?;
            Ok(grad)
        };
        // SAFETY: by the caller's contract.
        let (c, grad) = unsafe { meta_call(meta, device, params, params_len, [p, s, bi, bo], data, grad) }?;
        let g = if c.reference { reference::meta_grad_f32(&c.m, &c.t)? } else { cpu::meta_grad(&c.m, &c.t)? };
        let ([nr, np, nn], total) = (c.counts, c.total);
        grad[..nr].copy_from_slice(&g.rln);
        grad[nr..nr + np].copy_from_slice(&g.pln);
        grad[nr + np..nr + np + nn].copy_from_slice(&g.nm);
        if c.m.cfg.learn_lr {
            grad[total - 1] = g.inner_lr;
        }
        *loss = g.loss;
        Ok(())
    })
}

/// The meta-loss alone: what [`np_meta_grad`] writes to `*loss`, bit for
/// bit on the same device, without the gradient, for a fraction of its time
/// and memory (the inner steps run forward; nothing is kept for a
/// backward). The arguments are [`np_meta_grad`]'s without `grad`, checked
/// the same way with the same messages; `meta.order` and `meta.truncate`
/// are checked but do not change the value.
///
/// # Safety
/// As [`np_meta_grad`].
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn np_meta_loss(
    meta: *const NpMeta,
    device: u32,
    params: *const f32,
    params_len: usize,
    p: usize,
    s: usize,
    bi: usize,
    bo: usize,
    inner_x: *const f32,
    inner_x_len: usize,
    inner_y: *const f32,
    inner_y_len: usize,
    outer_x: *const f32,
    outer_x_len: usize,
    outer_y: *const f32,
    outer_y_len: usize,
    loss: *mut f64,
) -> NpStatus {
    use neuroplastic::meta::{cpu, reference};
    guard(|| {
        // SAFETY: by the caller's contract.
        let (meta, loss) = unsafe { (obj(meta, "meta")?, obj_mut(loss, "loss")?) };
        let data = [(inner_x, inner_x_len), (inner_y, inner_y_len), (outer_x, outer_x_len), (outer_y, outer_y_len)];
        // SAFETY: by the caller's contract.
        let (c, ()) = unsafe { meta_call(meta, device, params, params_len, [p, s, bi, bo], data, |_, _| Ok(())) }?;
        *loss = if c.reference { reference::meta_loss_f32(&c.m, &c.t)? } else { cpu::meta_loss(&c.m, &c.t)? };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_a_status_and_a_message() {
        let st = guard(|| panic!("boom {}", 42));
        assert_eq!(st, NP_ERR_PANIC);
        // SAFETY: np_last_error returns a valid string.
        let msg = unsafe { CStr::from_ptr(np_last_error()) }.to_str().unwrap().to_string();
        assert!(msg.contains("internal error") && msg.contains("boom 42"), "{msg}");
        assert_eq!(guard(|| Ok(())), NP_OK);
    }
}
