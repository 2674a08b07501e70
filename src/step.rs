//! Running a plastic layer one step at a time, for agents whose action at
//! step `t` (chosen from the output of step `t`) changes the input of step
//! `t + 1`: reinforcement learning, or any closed loop.
//!
//! [`Engine::stepper`] starts a batch of `B` episodes of `T` steps and keeps
//! the state `(h, H, E)` on the engine side; [`Stepper::step`] takes the
//! inputs of one step `(B, X)` and returns its outputs `(B, N)`. Once the
//! `T` steps have run, [`Stepper::finish`] returns a [`Forward`] that
//! [`Engine::backward`] accepts together with the recorded inputs
//! `(B, T, X)` ([`Stepper::backward`] does both). On the CPU the stepper
//! fills the same buffers as a whole-episode [`Engine::forward`] (trace
//! snapshots every `C` steps, no per-step traces), so the backward is the
//! same checkpointed, memory-light one and the gradients are bitwise those of
//! `forward` + `backward` on the recorded inputs.
//!
//! [`StepperF64`] is the reference's twin in f64 (plain loops over
//! [`crate::reference::plastic_step_fwd`], back-propagated by
//! [`crate::reference::backward`]), for finite-difference checks.
//!
//! ```
//! use neuroplastic::{Device, Engine, LayerConfig, Options, Params, Rule};
//!
//! let (n, x, b, t) = (6, 3, 2, 4);
//! let cfg = LayerConfig::recurrent(Rule::Modulated, n, x);
//! let mut params = Params::<f32>::zeros(&cfg);
//! params.u.iter_mut().for_each(|u| *u = 0.3);
//! params.mod_v.iter_mut().for_each(|v| *v = 0.2);
//! let mut engine = Engine::new(cfg, Device::Cpu, Options::default())?;
//! let mut stepper = engine.stepper(&params, b, t, None)?;
//! let mut input = vec![0.5f32; b * x];
//! for _ in 0..t {
//!     let y = stepper.step(&input)?;
//!     // The next input depends on this step's output.
//!     input.iter_mut().zip(y).for_each(|(i, &y)| *i = y);
//! }
//! let dy = vec![1.0f32; b * t * n];
//! let (episode, grads) = stepper.backward(&dy, None)?;
//! assert_eq!(episode.inputs.len(), b * t * x);
//! assert_eq!(grads.params.u.len(), n * x);
//! # Ok::<(), neuroplastic::Error>(())
//! ```

use crate::config::{LayerConfig, Topology};
use crate::cpu;
use crate::engine::{Backend, Device, Engine, Forward, Saved};
use crate::error::{Error, Result, check_finite, check_len};
use crate::options::Truncation;
use crate::params::{Gradients, Params, Seq, State};
use crate::reference;

/// A finished episode batch: the [`Forward`] for [`Engine::backward`] and
/// the inputs it ran on.
pub struct Stepped {
    /// What the backward pass needs (outputs `y` `(B, T, N)`, final state).
    pub fwd: Forward,
    /// The recorded inputs, `(B, T, X)`.
    pub inputs: Vec<f32>,
}

enum Inner {
    Reference { s: StepperF64, x64: Vec<f64>, out: Vec<f32> },
    Cpu(cpu::step::Steps),
}

impl Inner {
    fn done(&self) -> usize {
        match self {
            Inner::Reference { s, .. } => s.t,
            Inner::Cpu(c) => c.done(),
        }
    }

    /// One step of [`Stepper::step`] / [`StepperOwned::step`] on `engine`.
    fn step(
        &mut self,
        engine: &mut Engine,
        params: &Params<f32>,
        batch: usize,
        steps: usize,
        x: &[f32],
    ) -> Result<&[f32]> {
        let cfg = *engine.config();
        if self.done() == steps {
            return Err(Error::Config {
                arg: "step".into(),
                message: format!("all T = {steps} steps of this episode have run; call finish or backward"),
            });
        }
        check_len("x (one step's inputs)", x.len(), &[batch, cfg.inputs], || {
            format!("B = {batch}, X = {}", cfg.inputs)
        })?;
        if engine.options().check_finite {
            check_finite("x", x)?;
        }
        match self {
            Inner::Reference { s, x64, out } => {
                x64.iter_mut().zip(x).for_each(|(d, &v)| *d = v as f64);
                let y = s.step(x64)?;
                out.iter_mut().zip(y).for_each(|(d, &v)| *d = v as f32);
                Ok(out)
            }
            Inner::Cpu(c) => match &mut engine.backend {
                Backend::Cpu(cpu) => {
                    cpu.steps_step(c, &cfg, params, x);
                    Ok(c.out())
                }
                _ => unreachable!("a CPU stepper runs on a CPU engine"),
            },
        }
    }

    /// The finished episode, once all `steps` have run.
    fn finish(self, engine: &Engine, batch: usize, steps: usize) -> Result<Stepped> {
        let done = self.done();
        if done != steps {
            return Err(Error::Config {
                arg: "finish".into(),
                message: format!("the episode has T = {steps} steps but only {done} have run"),
            });
        }
        let cfg = *engine.config();
        let dims = (batch, steps);
        Ok(match self {
            Inner::Reference { s, .. } => {
                let e = s.finish()?;
                let fwd = Forward {
                    y: e.y.iter().map(|&v| v as f32).collect(),
                    last: e.last.map(|v| v as f32),
                    dims,
                    cfg,
                    saved: Saved::Reference(reference::Saved::from_init(e.init)),
                };
                Stepped { fwd, inputs: e.inputs.iter().map(|&v| v as f32).collect() }
            }
            Inner::Cpu(c) => {
                let Backend::Cpu(cpu) = &engine.backend else { unreachable!("a CPU stepper runs on a CPU engine") };
                let (inputs, y, last, saved) = cpu.steps_finish(c, &cfg);
                Stepped { fwd: Forward { y, last, dims, cfg, saved: Saved::Cpu(saved) }, inputs }
            }
        })
    }
}

/// A batch of episodes run one step at a time on an [`Engine`]; see the module docs.
pub struct Stepper<'e> {
    engine: &'e mut Engine,
    params: &'e Params<f32>,
    batch: usize,
    steps: usize,
    inner: Inner,
}

fn check_dims(batch: usize, steps: usize) -> Result<()> {
    if batch == 0 {
        return Err(Error::Empty { arg: "batch (B)".into() });
    }
    if steps == 0 {
        return Err(Error::Empty { arg: "steps (T)".into() });
    }
    Ok(())
}

/// Checks the arguments and starts the backend's stepper (shared by
/// [`Stepper`] and [`StepperOwned`]).
fn start(
    engine: &mut Engine,
    params: &Params<f32>,
    batch: usize,
    steps: usize,
    init: Option<&State<f32>>,
) -> Result<Inner> {
    let finite = engine.options().check_finite;
    let cfg = *engine.config();
    check_dims(batch, steps)?;
    params.validate(&cfg, finite)?;
    if let Some(s) = init {
        s.validate(&cfg, batch, "init", finite)?;
    }
    let opts = *engine.options();
    let inner = match &mut engine.backend {
        Backend::Reference(_) => {
            let init64 = init.map(|s| s.map(f64::from));
            let s = StepperF64::new(cfg, params.map(f64::from), batch, steps, init64.as_ref())?;
            Inner::Reference { s, x64: vec![0.0; batch * cfg.inputs], out: vec![0.0; batch * cfg.n] }
        }
        Backend::Cpu(c) => Inner::Cpu(c.steps_start(&cfg, params, batch, steps, init, &opts)),
        // The CUDA driver runs whole episodes only (one launch per step
        // from the host would not pay); a stepper there is future work.
        #[cfg(feature = "cuda")]
        Backend::Cuda(_) => {
            return Err(Error::Unavailable {
                    backend: engine.device().name(),
                    reason: "step-at-a-time runs on the reference and CPU backends only; on CUDA run whole episodes with Engine::forward/backward, or step on Device::Cpu".into(),
                });
        }
    };
    Ok(inner)
}

impl Engine {
    /// Starts `batch` episodes of `steps` steps from `init` (`None` = zeros),
    /// to be run one step at a time with `params` (which the stepper borrows
    /// until the episode is over, so they cannot change in between).
    pub fn stepper<'e>(
        &'e mut self,
        params: &'e Params<f32>,
        batch: usize,
        steps: usize,
        init: Option<&State<f32>>,
    ) -> Result<Stepper<'e>> {
        let inner = start(self, params, batch, steps, init)?;
        Ok(Stepper { engine: self, params, batch, steps, inner })
    }
}

impl<'e> Stepper<'e> {
    /// `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// `T`.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Steps run so far.
    pub fn done(&self) -> usize {
        self.inner.done()
    }

    /// Runs the next step on `x` `(B, X)` and returns its outputs `(B, N)`.
    pub fn step(&mut self, x: &[f32]) -> Result<&[f32]> {
        self.inner.step(self.engine, self.params, self.batch, self.steps, x)
    }

    /// Ends the episode: the [`Forward`] and the recorded inputs. Fails
    /// unless all `T` steps have run.
    pub fn finish(self) -> Result<Stepped> {
        self.into_parts().map(|(s, _, _)| s)
    }

    fn into_parts(self) -> Result<(Stepped, &'e mut Engine, &'e Params<f32>)> {
        let Stepper { engine, params, batch, steps, inner } = self;
        let stepped = inner.finish(engine, batch, steps)?;
        Ok((stepped, engine, params))
    }

    /// Ends the episode and back-propagates through it: `dy` `(B, T, N)`,
    /// `dlast` as in [`Engine::backward`], whose gradients this returns
    /// (with the finished episode).
    pub fn backward(self, dy: &[f32], dlast: Option<&State<f32>>) -> Result<(Stepped, Gradients<f32>)> {
        let (s, engine, params) = self.into_parts()?;
        let g = engine.backward(params, Seq::new(&s.inputs, s.fwd.dims.0, s.fwd.dims.1), &s.fwd, dy, dlast)?;
        Ok((s, g))
    }
}

/// A [`Stepper`] that owns its parameters and borrows the engine only for
/// the length of each call, for holders that cannot keep a borrow across
/// calls (the Python bindings keep it next to a reference to their engine).
///
/// It runs the same code as [`Stepper`], so its outputs and the episode it
/// finishes are bitwise those of the borrowing stepper. Every call must be
/// given the engine it was started on (or one of the same configuration and
/// device, which runs it identically: the episode's state lives in the
/// stepper, the engine lends only its thread pool and scratch space);
/// another is a [`Error::Config`].
pub struct StepperOwned {
    params: Params<f32>,
    cfg: LayerConfig,
    device: Device,
    batch: usize,
    steps: usize,
    inner: Inner,
}

impl Engine {
    /// [`Engine::stepper`] with `params` moved into the stepper: see [`StepperOwned`].
    pub fn stepper_owned(
        &mut self,
        params: Params<f32>,
        batch: usize,
        steps: usize,
        init: Option<&State<f32>>,
    ) -> Result<StepperOwned> {
        let inner = start(self, &params, batch, steps, init)?;
        Ok(StepperOwned { params, cfg: *self.config(), device: self.device(), batch, steps, inner })
    }
}

impl StepperOwned {
    /// `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// `T`.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Steps run so far.
    pub fn done(&self) -> usize {
        self.inner.done()
    }

    /// The parameters the episode runs with.
    pub fn params(&self) -> &Params<f32> {
        &self.params
    }

    fn check_engine(&self, engine: &Engine) -> Result<()> {
        if *engine.config() != self.cfg || engine.device() != self.device {
            return Err(Error::Config {
                arg: "engine".into(),
                message: format!(
                    "this stepper was started on a {} engine with another layer configuration or device; pass the engine it was started on",
                    self.device.name()
                ),
            });
        }
        Ok(())
    }

    /// [`Stepper::step`] on `engine`: `x` `(B, X)`, returns `y` `(B, N)`.
    pub fn step(&mut self, engine: &mut Engine, x: &[f32]) -> Result<&[f32]> {
        self.check_engine(engine)?;
        self.inner.step(engine, &self.params, self.batch, self.steps, x)
    }

    /// [`Stepper::finish`] on `engine`; also hands back the parameters
    /// (which [`Engine::backward`] takes with the finished episode).
    pub fn finish(self, engine: &Engine) -> Result<(Stepped, Params<f32>)> {
        self.check_engine(engine)?;
        let StepperOwned { params, batch, steps, inner, .. } = self;
        Ok((inner.finish(engine, batch, steps)?, params))
    }
}

/// A finished f64 episode batch.
#[derive(Clone, Debug, PartialEq)]
pub struct SteppedF64 {
    /// The recorded inputs, `(B, T, X)`.
    pub inputs: Vec<f64>,
    /// The outputs, `(B, T, N)`.
    pub y: Vec<f64>,
    /// The state before the first step.
    pub init: State<f64>,
    /// The state after the last step.
    pub last: State<f64>,
}

/// The f64 reference run one step at a time (the twin of [`Stepper`]).
pub struct StepperF64 {
    cfg: LayerConfig,
    params: Params<f64>,
    batch: usize,
    steps: usize,
    t: usize,
    init: State<f64>,
    state: State<f64>,
    /// One episode's next traces, `(N, I)` each.
    next_h: Vec<f64>,
    next_e: Vec<f64>,
    inputs: Vec<f64>,
    y: Vec<f64>,
    out: Vec<f64>,
}

impl StepperF64 {
    /// Starts `batch` episodes of `steps` steps from `init` (`None` = zeros).
    pub fn new(
        cfg: LayerConfig,
        params: Params<f64>,
        batch: usize,
        steps: usize,
        init: Option<&State<f64>>,
    ) -> Result<Self> {
        check_dims(batch, steps)?;
        params.validate(&cfg, false)?;
        let init = match init {
            Some(s) => {
                s.validate(&cfg, batch, "init", false)?;
                s.clone()
            }
            None => State::zeros(&cfg, batch),
        };
        let ni = cfg.n * cfg.pre();
        Ok(StepperF64 {
            cfg,
            params,
            batch,
            steps,
            t: 0,
            state: init.clone(),
            init,
            next_h: vec![0.0; ni],
            next_e: vec![0.0; if cfg.rule.has_eligibility() { ni } else { 0 }],
            inputs: vec![0.0; batch * steps * cfg.inputs],
            y: vec![0.0; batch * steps * cfg.n],
            out: vec![0.0; batch * cfg.n],
        })
    }

    /// Steps run so far.
    pub fn done(&self) -> usize {
        self.t
    }

    /// Runs the next step on `x` `(B, X)`; returns its outputs `(B, N)`.
    pub fn step(&mut self, x: &[f64]) -> Result<&[f64]> {
        let (cfg, b_len, t) = (self.cfg, self.batch, self.t);
        if t == self.steps {
            return Err(Error::Config {
                arg: "step".into(),
                message: format!("all T = {} steps of this episode have run; call finish", self.steps),
            });
        }
        let (n, ni, xs) = (cfg.n, cfg.n * cfg.pre(), cfg.inputs);
        check_len("x (one step's inputs)", x.len(), &[b_len, xs], || format!("B = {b_len}, X = {xs}"))?;
        let rec = cfg.topology == Topology::Recurrent;
        let elig = cfg.rule.has_eligibility();
        for b in 0..b_len {
            let input = &x[b * xs..(b + 1) * xs];
            let row = b * self.steps + t;
            self.inputs[row * xs..(row + 1) * xs].copy_from_slice(input);
            let h_prev: &[f64] = if rec { &self.state.h[b * n..(b + 1) * n] } else { &[] };
            let e: &[f64] = if elig { &self.state.elig[b * ni..(b + 1) * ni] } else { &[] };
            let r = reference::plastic_step_fwd(
                &cfg,
                &self.params,
                input,
                h_prev,
                &self.state.hebb[b * ni..(b + 1) * ni],
                e,
                &mut self.next_h,
                &mut self.next_e,
            )?;
            self.state.hebb[b * ni..(b + 1) * ni].copy_from_slice(&self.next_h);
            if elig {
                self.state.elig[b * ni..(b + 1) * ni].copy_from_slice(&self.next_e);
            }
            if rec {
                self.state.h[b * n..(b + 1) * n].copy_from_slice(&r.y);
            }
            self.y[row * n..(row + 1) * n].copy_from_slice(&r.y);
            self.out[b * n..(b + 1) * n].copy_from_slice(&r.y);
        }
        self.t += 1;
        Ok(&self.out)
    }

    /// Ends the episode. Fails unless all `T` steps have run.
    pub fn finish(self) -> Result<SteppedF64> {
        if self.t != self.steps {
            return Err(Error::Config {
                arg: "finish".into(),
                message: format!("the episode has T = {} steps but only {} have run", self.steps, self.t),
            });
        }
        Ok(SteppedF64 { inputs: self.inputs, y: self.y, init: self.init, last: self.state })
    }

    /// Ends the episode and back-propagates through it with
    /// [`crate::reference::backward`]: `dy` `(B, T, N)`.
    pub fn backward(
        self,
        dy: &[f64],
        dlast: Option<&State<f64>>,
        truncate: Truncation,
    ) -> Result<(SteppedF64, Gradients<f64>)> {
        let (cfg, params, b, t) = (self.cfg, self.params.clone(), self.batch, self.steps);
        let e = self.finish()?;
        let g = reference::backward(&cfg, &params, Seq::new(&e.inputs, b, t), Some(&e.init), dy, dlast, truncate)?;
        Ok((e, g))
    }
}
