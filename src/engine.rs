//! One API over every backend: build an [`Engine`] for a layer
//! configuration and a [`Device`], then call [`Engine::forward`] and
//! [`Engine::backward`] with `f32` host tensors.
//!
//! The engine checks every argument once (shapes, finiteness, that a
//! [`Forward`] belongs to it) and hands the call to its backend (the private
//! `enum Backend`, whose docs list what a backend variant provides). The
//! options live in the leaf module [`crate::options`] (re-exported here).

use crate::config::LayerConfig;
use crate::error::{Error, Result, check_len};
pub use crate::options::{Checkpoint, Options};
use crate::params::{Gradients, Params, Seq, State};
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

/// What a backend keeps between its forward and its backward pass, one
/// variant per [`Backend`] variant.
pub(crate) enum Saved {
    /// The reference recomputes everything from the initial state.
    Reference(reference::Saved),
    /// Trace snapshots and per-step vectors.
    Cpu(cpu::Saved),
    /// The same, in GPU memory.
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::Saved),
}

impl Saved {
    fn backend(&self) -> &'static str {
        match self {
            Saved::Reference(_) => "reference",
            Saved::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            Saved::Cuda(_) => "cuda",
        }
    }
}

impl Forward {
    /// Bytes held for the backward pass (checkpoints and per-step vectors).
    pub fn saved_bytes(&self) -> usize {
        match &self.saved {
            Saved::Reference(s) => s.bytes(),
            Saved::Cpu(s) => s.bytes(),
            #[cfg(feature = "cuda")]
            Saved::Cuda(s) => s.bytes(),
        }
    }
}

/// The implementation an [`Engine`] runs, owning everything it reuses across
/// calls (pools, workspaces, device contexts).
///
/// # What a backend variant provides
///
/// A backend lives in its own module (`src/reference/`, `src/cpu/`,
/// `src/cuda/`) and offers the same two operations under the same names and
/// argument order, so that the variants here are one line each:
///
/// - a handle type ([`cpu::Cpu`], [`reference::Reference`]) made from the
///   [`Options`] (`cpu::Cpu::new(&Options) -> Result<Self>`), which reports
///   an unusable device as [`Error::Unavailable`] with a sentence saying why;
/// - `plastic_fwd(&mut self, cfg: &LayerConfig, params: &Params<f32>, inputs:
///   Seq<f32>, init: Option<&State<f32>>, opts: &Options) ->
///   Result<(Vec<f32>, State<f32>, Saved)>`: outputs `y` `(B, T, N)`, the
///   final state, and the backend's saved state;
/// - `plastic_bwd(&mut self, cfg, params, inputs, saved: &Saved, dy: &[f32],
///   dlast: Option<&State<f32>>, opts: &Options) -> Result<Gradients<f32>>`,
///   parameter gradients assigned, honouring `opts.truncate` and
///   `opts.checkpoint` ([`Checkpoint::interval`] is the interval every
///   backend uses; the reference takes just `opts.truncate`, it keeps no
///   checkpoints);
/// - a saved-state type (`cpu::Saved`, `reference::Saved`) with
///   `bytes(&self) -> usize` (what [`Forward::saved_bytes`] reports), which
///   becomes a variant of the crate's private `Saved` enum;
/// - a test: `testing::check_backend` run against the reference on the
///   cases of `tests/cpu_vs_reference.rs` (the CPU's call is there).
///
/// The engine validates every argument before it calls a backend, and the
/// backend's functions validate again (they are public on their own).
pub(crate) enum Backend {
    /// The f64 reference: converts at the boundary, keeps the initial state.
    Reference(reference::Reference),
    /// The SIMD CPU backend with its pool and workspace (boxed: the
    /// workspace is large next to the other variants).
    Cpu(Box<cpu::Cpu>),
    /// The CUDA backend: the GPU context and its compiled kernels.
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::cuda::Cuda>),
}

impl Backend {
    fn new(device: Device, opts: &Options) -> Result<Backend> {
        match device {
            Device::Reference => Ok(Backend::Reference(reference::Reference)),
            Device::Cpu => Ok(Backend::Cpu(Box::new(cpu::Cpu::new(opts)?))),
            #[cfg(feature = "cuda")]
            Device::Cuda(k) => Ok(Backend::Cuda(Box::new(crate::cuda::Cuda::new(k, opts)?))),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(Error::Unavailable {
                backend: device.name(),
                reason: "this build of neuroplastic was made without the `cuda` feature; rebuild with `--features cuda` (the default), or use Device::Cpu".into(),
            }),
        }
    }

    fn plastic_fwd(
        &mut self,
        cfg: &LayerConfig,
        params: &Params<f32>,
        inputs: Seq<'_, f32>,
        init: Option<&State<f32>>,
        opts: &Options,
    ) -> Result<(Vec<f32>, State<f32>, Saved)> {
        match self {
            Backend::Reference(r) => {
                let (y, last, saved) = r.plastic_fwd(cfg, params, inputs, init)?;
                Ok((y, last, Saved::Reference(saved)))
            }
            Backend::Cpu(c) => {
                let (y, last, saved) = c.plastic_fwd(cfg, params, inputs, init, opts)?;
                Ok((y, last, Saved::Cpu(saved)))
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda(c) => {
                let (y, last, saved) = c.plastic_fwd(cfg, params, inputs, init, opts)?;
                Ok((y, last, Saved::Cuda(saved)))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plastic_bwd(
        &mut self,
        device: Device,
        cfg: &LayerConfig,
        params: &Params<f32>,
        inputs: Seq<'_, f32>,
        saved: &Saved,
        dy: &[f32],
        dlast: Option<&State<f32>>,
        opts: &Options,
    ) -> Result<Gradients<f32>> {
        match (self, saved) {
            (Backend::Reference(r), Saved::Reference(s)) => {
                r.plastic_bwd(cfg, params, inputs, s, dy, dlast, opts.truncate)
            }
            (Backend::Cpu(c), Saved::Cpu(s)) => c.plastic_bwd(cfg, params, inputs, s, dy, dlast, opts),
            #[cfg(feature = "cuda")]
            (Backend::Cuda(c), Saved::Cuda(s)) => c.plastic_bwd(cfg, params, inputs, s, dy, dlast, opts),
            (_, saved) => Err(Error::Config {
                arg: "fwd".into(),
                message: format!(
                    "this Forward was made by a {} engine, but this engine runs on {}",
                    saved.backend(),
                    device.name()
                ),
            }),
        }
    }
}

/// A plastic layer bound to a backend, with its workspace.
pub struct Engine {
    cfg: LayerConfig,
    device: Device,
    opts: Options,
    pub(crate) backend: Backend,
}

impl Engine {
    /// Creates an engine. Fails when the configuration or options are invalid,
    /// or the device is not available on this machine.
    pub fn new(cfg: LayerConfig, device: Device, opts: Options) -> Result<Self> {
        cfg.validate()?;
        opts.validate()?;
        let backend = Backend::new(device, &opts)?;
        Ok(Engine { cfg, device, opts, backend })
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
        crate::limits::check_run(cfg, self.device, opts, dims.0, dims.1)?;
        let (y, last, saved) = self.backend.plastic_fwd(cfg, params, inputs, init, opts)?;
        Ok(Forward { y, last, dims, cfg: *cfg, saved })
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
        self.backend.plastic_bwd(self.device, cfg, params, inputs, &fwd.saved, dy, dlast, opts)
    }
}
