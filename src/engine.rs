//! One API over every backend: build an [`Engine`] for a layer
//! configuration and a [`Device`], then call [`Engine::forward`] and
//! [`Engine::backward`] with `f32` host tensors.

use crate::config::LayerConfig;
use crate::error::{Error, Result, check_len};
use crate::params::{Gradients, Params, Seq, State, Truncation};
use crate::{cpu, reference};

/// Which implementation runs the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The f64 scalar reference (converted from and to f32 at the boundary).
    /// Slow; the oracle every other backend is tested against.
    Reference,
    /// The f32 SIMD + threads CPU backend.
    Cpu,
    /// The CUDA backend on the GPU with this ordinal.
    Cuda(usize),
}

impl Device {
    /// The lower-case name (`reference`, `cpu`, `cuda:0`).
    pub fn name(&self) -> String {
        match self {
            Device::Reference => "reference".into(),
            Device::Cpu => "cpu".into(),
            Device::Cuda(k) => format!("cuda:{k}"),
        }
    }
}

/// How many trace snapshots the forward pass keeps for the backward pass.
///
/// Between snapshots the CPU backend recomputes a segment's traces forwards
/// (gradients bitwise the same for every interval) or, for Hebb and Oja at
/// small η, reconstructs them backwards from the segment's last state (no
/// segment buffer; gradients equal to f32 rounding). See `docs/backward.md` §6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Checkpoint {
    /// Every `⌈√T⌉` steps: memory `O(B·N·I·√T)`, about one extra forward of
    /// work. Where the CPU backend can reconstruct the traces (Hebb or Oja at
    /// small η) it uses the longest interval that still reconstructs (41 at
    /// η = 0.01) when that keeps fewer traces ([`crate::cpu::interval`]).
    #[default]
    Auto,
    /// Every `C` steps (`C ≥ 1`).
    Every(usize),
    /// Keep every step's traces (`C = 1`): no recomputation, `O(B·N·I·T)` memory.
    All,
}

impl Checkpoint {
    /// The checkpoint interval `C` for an episode of `steps` steps.
    pub fn interval(&self, steps: usize) -> usize {
        match *self {
            Checkpoint::Auto => (steps as f64).sqrt().ceil().max(1.0) as usize,
            Checkpoint::Every(c) => c.max(1),
            Checkpoint::All => 1,
        }
    }
}

/// Execution options shared by every backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Options {
    /// Threads for the CPU backend: `None` uses rayon's global pool,
    /// `Some(n)` a private pool of `n` threads. Results are bitwise the same
    /// for any number of threads.
    pub threads: Option<usize>,
    /// Trace checkpointing of the backward pass.
    pub checkpoint: Checkpoint,
    /// Truncated back-propagation.
    pub truncate: Truncation,
    /// Check every input, parameter and state for NaN/∞ (an error names the
    /// first one found).
    pub check_finite: bool,
}

impl Options {
    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if self.threads == Some(0) {
            return Err(Error::Empty { arg: "options.threads".into() });
        }
        if self.checkpoint == Checkpoint::Every(0) {
            return Err(Error::Empty { arg: "options.checkpoint (Every(C))".into() });
        }
        self.truncate.validate()
    }
}

/// What a forward pass returns: the outputs, the final state, and what the
/// backward pass needs (opaque, backend-specific).
pub struct Forward {
    /// Outputs `y`: `(B, T, N)`.
    pub y: Vec<f32>,
    /// The state after the last step (`h`, `hebb`, `elig`).
    pub last: State<f32>,
    /// Batch and step count the forward pass ran with.
    pub(crate) dims: (usize, usize),
    /// The layer configuration it ran with.
    pub(crate) cfg: LayerConfig,
    pub(crate) saved: Saved,
}

pub(crate) enum Saved {
    /// The reference recomputes everything from the initial state.
    Reference {
        init: State<f64>,
    },
    Cpu(cpu::Saved),
}

impl Forward {
    /// Bytes held for the backward pass (checkpoints and per-step vectors).
    pub fn saved_bytes(&self) -> usize {
        match &self.saved {
            Saved::Reference { init } => 8 * (init.h.len() + init.hebb.len() + init.elig.len()),
            Saved::Cpu(s) => s.bytes(),
        }
    }
}

/// A plastic layer bound to a backend, with its workspace.
pub struct Engine {
    cfg: LayerConfig,
    device: Device,
    opts: Options,
    pub(crate) pool: Option<rayon::ThreadPool>,
    pub(crate) ws: cpu::Workspace,
}

impl Engine {
    /// Creates an engine. Fails when the configuration or options are invalid,
    /// or the device is not available on this machine.
    pub fn new(cfg: LayerConfig, device: Device, opts: Options) -> Result<Self> {
        cfg.validate()?;
        opts.validate()?;
        if let Device::Cuda(_) = device {
            return Err(Error::Unavailable {
                backend: device.name(),
                reason: "this build of neuroplastic has no CUDA backend yet; use Device::Cpu".into(),
            });
        }
        let pool = match opts.threads {
            Some(n) => Some(rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| Error::Config {
                arg: "options.threads".into(),
                message: format!("could not start a pool of {n} threads: {e}"),
            })?),
            None => None,
        };
        Ok(Engine { cfg, device, opts, pool, ws: cpu::Workspace::default() })
    }

    /// The layer configuration.
    pub fn config(&self) -> &LayerConfig {
        &self.cfg
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Replaces the options (e.g. to change truncation between calls).
    pub fn set_options(&mut self, opts: Options) -> Result<()> {
        opts.validate()?;
        if opts.threads != self.opts.threads {
            *self = Engine::new(self.cfg, self.device, opts)?;
        } else {
            self.opts = opts;
        }
        Ok(())
    }

    pub(crate) fn run<R: Send>(pool: &Option<rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
        match pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// Runs the layer over a batch of episodes.
    ///
    /// `inputs`: `(B, T, X)`; `init`: the state before the first step
    /// (`None` = zeros). Returns `y` `(B, T, N)`, the final state and what the
    /// backward pass needs.
    pub fn forward(
        &mut self,
        params: &Params<f32>,
        inputs: Seq<'_, f32>,
        init: Option<&State<f32>>,
    ) -> Result<Forward> {
        let (cfg, opts) = (&self.cfg, &self.opts);
        let finite = opts.check_finite;
        params.validate(cfg, finite)?;
        inputs.validate(cfg, finite)?;
        if let Some(s) = init {
            s.validate(cfg, inputs.batch, "init", finite)?;
        }
        let dims = (inputs.batch, inputs.steps);
        match self.device {
            Device::Reference => {
                let p64 = params.map(f64::from);
                let x64: Vec<f64> = inputs.data.iter().map(|&v| v as f64).collect();
                let init64 = match init {
                    Some(s) => s.map(f64::from),
                    None => State::zeros(cfg, inputs.batch),
                };
                let (y, last) = reference::forward(cfg, &p64, Seq::new(&x64, dims.0, dims.1), Some(&init64))?;
                Ok(Forward {
                    y: y.iter().map(|&v| v as f32).collect(),
                    last: last.map(|v| v as f32),
                    dims,
                    cfg: *cfg,
                    saved: Saved::Reference { init: init64 },
                })
            }
            Device::Cpu => {
                let ws = &mut self.ws;
                let (y, last, saved) = Self::run(&self.pool, || cpu::forward(cfg, params, inputs, init, opts, ws))?;
                Ok(Forward { y, last, dims, cfg: *cfg, saved: Saved::Cpu(saved) })
            }
            Device::Cuda(_) => unreachable!("Engine::new refuses CUDA"),
        }
    }

    /// Back-propagates through the episode of `fwd`.
    ///
    /// `params` and `inputs` must be those of the forward pass. `dy`:
    /// dL/dy for every step `(B, T, N)`; `dlast`: dL/d(final state), optional.
    /// Returns the gradients of every parameter, of the inputs and of the
    /// initial state, honouring `options.truncate`.
    pub fn backward(
        &mut self,
        params: &Params<f32>,
        inputs: Seq<'_, f32>,
        fwd: &Forward,
        dy: &[f32],
        dlast: Option<&State<f32>>,
    ) -> Result<Gradients<f32>> {
        let (cfg, opts) = (&self.cfg, &self.opts);
        let finite = opts.check_finite;
        params.validate(cfg, finite)?;
        inputs.validate(cfg, finite)?;
        if (inputs.batch, inputs.steps) != fwd.dims {
            return Err(Error::Config {
                arg: "inputs".into(),
                message: format!(
                    "the forward pass ran with B = {}, T = {}, but backward got B = {}, T = {}",
                    fwd.dims.0, fwd.dims.1, inputs.batch, inputs.steps
                ),
            });
        }
        // What the backend saved is laid out for the forward pass's configuration.
        if fwd.cfg != *cfg {
            return Err(Error::Config {
                arg: "fwd".into(),
                message: format!(
                    "this Forward was made for another layer configuration ({:?}) than this engine's ({cfg:?})",
                    fwd.cfg
                ),
            });
        }
        check_len("dy", dy.len(), &[inputs.batch, inputs.steps, cfg.n], || {
            format!("B = {}, T = {}, N = {}", inputs.batch, inputs.steps, cfg.n)
        })?;
        if finite {
            crate::error::check_finite("dy", dy)?;
        }
        if let Some(s) = dlast {
            s.validate(cfg, inputs.batch, "dlast", finite)?;
        }
        match (&fwd.saved, self.device) {
            (Saved::Reference { init }, Device::Reference) => {
                let p64 = params.map(f64::from);
                let x64: Vec<f64> = inputs.data.iter().map(|&v| v as f64).collect();
                let dy64: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
                let dlast64 = dlast.map(|s| s.map(f64::from));
                let g = reference::backward(
                    cfg,
                    &p64,
                    Seq::new(&x64, inputs.batch, inputs.steps),
                    Some(init),
                    &dy64,
                    dlast64.as_ref(),
                    opts.truncate,
                )?;
                Ok(Gradients {
                    params: g.params.map(|v| v as f32),
                    inputs: g.inputs.iter().map(|&v| v as f32).collect(),
                    init: g.init.map(|v| v as f32),
                })
            }
            (Saved::Cpu(saved), Device::Cpu) => {
                let ws = &mut self.ws;
                Self::run(&self.pool, || cpu::backward(cfg, params, inputs, saved, dy, dlast, opts, ws))
            }
            (saved, device) => Err(Error::Config {
                arg: "fwd".into(),
                message: format!(
                    "this Forward was made by a {} engine, but this engine runs on {}",
                    match saved {
                        Saved::Reference { .. } => "reference",
                        Saved::Cpu(_) => "cpu",
                    },
                    device.name()
                ),
            }),
        }
    }
}
