//! The CPU backend's step-at-a-time forward: the whole-episode pass of
//! `fwd.rs` ([`Pending`]) run one step per call, each step's input supplied
//! by the caller after it has seen the previous step's output. It fills the
//! very buffers a whole-episode forward fills (trace snapshots every `C`
//! steps, `y`, `M`, `m`), so the backward is [`super::backward`] unchanged
//! and its gradients are bitwise those of a whole-episode forward on the
//! recorded inputs.

use super::Options;
use super::fwd::{Pending, drive_row};
use super::{Cpu, Plan, Saved, Workspace, grow, runs_inline};
use crate::config::LayerConfig;
use crate::params::{Params, State};

/// A forward pass in progress, one step per [`Steps::step`].
pub(crate) struct Steps {
    plan: Plan,
    pending: Pending,
    /// The inputs so far, `(B, T, X)` (later steps zero).
    inputs: Vec<f32>,
    /// The drive so far, `(B, T, N)`.
    drive: Vec<f32>,
    init: Option<State<f32>>,
    /// Steps done.
    t: usize,
    /// `y` of the last step, `(B, N)`.
    out: Vec<f32>,
}

impl Steps {
    /// Starts an episode batch of `batch` episodes of `steps` steps from
    /// `init` (`None` = zeros). Arguments checked by the caller.
    pub(crate) fn new(
        cfg: &LayerConfig,
        params: &Params<f32>,
        batch: usize,
        steps: usize,
        init: Option<&State<f32>>,
        opts: &Options,
        ws: &mut Workspace,
    ) -> Steps {
        // The plan of a whole-episode forward of the same shapes: same interval, same partition.
        let mut plan = Plan::new(cfg, batch, steps, opts.checkpoint.interval(cfg, params, steps));
        plan.recon = Plan::reconstructs(cfg, params, plan.c);
        let pending = Pending::new(&plan, init, ws);
        Steps {
            plan,
            pending,
            inputs: vec![0.0; batch * steps * cfg.inputs],
            drive: vec![0.0; batch * steps * cfg.n],
            init: init.cloned(),
            t: 0,
            out: vec![0.0; batch * cfg.n],
        }
    }

    /// Steps done so far.
    pub(crate) fn done(&self) -> usize {
        self.t
    }

    /// `y` of the last step run, `(B, N)`.
    pub(crate) fn out(&self) -> &[f32] {
        &self.out
    }

    /// Runs the next step on `x` `(B, X)` (checked by the caller); its
    /// output is then [`Steps::out`].
    pub(crate) fn step(&mut self, cfg: &LayerConfig, params: &Params<f32>, x: &[f32], ws: &mut Workspace) {
        let p = self.plan;
        let t = self.t;
        for b in 0..p.b {
            let row = b * p.t + t;
            let input = &mut self.inputs[row * p.x..(row + 1) * p.x];
            input.copy_from_slice(&x[b * p.x..(b + 1) * p.x]);
            drive_row(cfg, params, input, &mut self.drive[row * p.n..(row + 1) * p.n]);
        }
        let zeros = &*grow(&mut ws.zeros, p.rows * p.i);
        self.pending.steps(cfg, params, &self.inputs, &self.drive, self.init.as_ref(), zeros, t..t + 1);
        let y = self.pending.y();
        for b in 0..p.b {
            let o = (b * p.t + t) * p.n;
            self.out[b * p.n..(b + 1) * p.n].copy_from_slice(&y[o..o + p.n]);
        }
        self.t += 1;
    }

    /// The recorded inputs `(B, T, X)`, `y` `(B, T, N)`, the final state and
    /// what the backward needs, once all `T` steps have run.
    pub(crate) fn finish(self, cfg: &LayerConfig, ws: &Workspace) -> (Vec<f32>, Vec<f32>, State<f32>, Saved) {
        let (y, last, saved) = self.pending.finish(cfg, ws);
        (self.inputs, y, last, saved)
    }
}

impl Cpu {
    /// Starts a step-at-a-time forward on this backend's workspace.
    pub(crate) fn steps_start(
        &mut self,
        cfg: &LayerConfig,
        params: &Params<f32>,
        batch: usize,
        steps: usize,
        init: Option<&State<f32>>,
        opts: &Options,
    ) -> Steps {
        Steps::new(cfg, params, batch, steps, init, opts, &mut self.ws)
    }

    /// Runs the next step of `s` on this backend's pool and workspace.
    pub(crate) fn steps_step(&mut self, s: &mut Steps, cfg: &LayerConfig, params: &Params<f32>, x: &[f32]) {
        let ws = &mut self.ws;
        let inline = runs_inline(cfg, s.plan.b, 1);
        Self::run(&mut self.pool, inline, || s.step(cfg, params, x, ws));
    }

    /// Ends `s`: see [`Steps::finish`].
    pub(crate) fn steps_finish(&self, s: Steps, cfg: &LayerConfig) -> (Vec<f32>, Vec<f32>, State<f32>, Saved) {
        s.finish(cfg, &self.ws)
    }
}
