//! The training loop: draw a batch of episodes, loss and gradients, one
//! optimizer update; evaluate on fresh episodes now and then; save
//! checkpoints.

use std::path::Path;
use std::time::Instant;

use crate::config::{EtaMode, LayerConfig};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{Model, masked_sq_loss};
use crate::params::Seq;
use crate::tasks::Task;
use crate::train::{
    OptimConfig, Optimizer, StepStats, TaskRng, TrainCheckpoint, episode_rng, eval_rng, init_rng, model_param_names,
};

/// The settings of a training run (besides the task and the model).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Seeds every generator of the run (see the module docs).
    pub seed: u64,
    /// Episodes per update; their losses are summed.
    pub batch: usize,
    /// Evaluate every this many updates (0: only at the start and the end).
    pub eval_every: u64,
    /// Fresh episodes per evaluation.
    pub eval_episodes: usize,
    /// The optimizer.
    pub optim: OptimConfig,
}

impl TrainConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Empty { arg: "batch".into() });
        }
        if self.eval_episodes == 0 {
            return Err(Error::Empty { arg: "eval_episodes".into() });
        }
        self.optim.validate()
    }
}

/// One row of the learning curve, written at every evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogRow {
    /// Updates done.
    pub step: u64,
    /// Training episodes seen (`step · batch`).
    pub episodes: u64,
    /// Mean loss per training episode over the updates since the previous row
    /// (NaN for the row before the first update).
    pub train_loss: f64,
    /// Mean error rate of those training episodes (NaN before the first update).
    pub train_err: f64,
    /// Mean loss per episode on fresh evaluation episodes.
    pub eval_loss: f64,
    /// Error rate on the evaluation episodes.
    pub eval_err: f64,
    /// The learning rate of the next update.
    pub lr: f64,
    /// Wall-clock seconds of training so far (across resumed sessions).
    pub seconds: f64,
}

/// What one update did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Updates done, this one included.
    pub step: u64,
    /// The batch's loss per episode (the summed loss divided by the batch size).
    pub loss: f64,
    /// The batch's error rate.
    pub err: f64,
    /// The optimizer's report.
    pub stats: StepStats,
}

/// What [`Trainer::run`] reports to its caller as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// An update is done.
    Step(&'a StepReport),
    /// An evaluation is done and appended to the log.
    Eval(&'a LogRow),
    /// A checkpoint was written to this file.
    Saved(&'a Path),
}

/// A model being trained on a task: the model, its engine, the optimizer,
/// the episode generator, the step count and the learning curve.
pub struct Trainer<T: Task> {
    task: T,
    model: Model,
    engine: Engine,
    opt: Optimizer,
    cfg: TrainConfig,
    rng: TaskRng,
    step: u64,
    log: Vec<LogRow>,
    /// Σ loss, Σ error, updates since the last log row.
    acc: [f64; 3],
    seconds_before: f64,
    started: Instant,
}

/// The name of the rate a configuration fixes, if any (it is never updated).
fn fixed_rate(cfg: &LayerConfig) -> Option<&'static str> {
    if cfg.eta != EtaMode::Fixed {
        return None;
    }
    if cfg.rule.has_eligibility() {
        Some("eta_e")
    } else if !cfg.rule.is_modulated() {
        Some("eta")
    } else {
        None
    }
}

impl<T: Task> Trainer<T> {
    /// A new run. `engine` must be built for `model.cfg`. A rate that the
    /// layer configuration fixes ([`EtaMode::Fixed`]) is frozen in addition to
    /// `cfg.optim.frozen`. Fails when the task's episodes do not fit the model.
    pub fn new(task: T, model: Model, engine: Engine, mut cfg: TrainConfig) -> Result<Self> {
        if let Some(r) = fixed_rate(&model.cfg).filter(|r| !cfg.optim.is_frozen(r)) {
            cfg.optim.frozen.push(r.to_string());
        }
        let opt = Optimizer::new(cfg.optim.clone())?;
        Self::assemble(task, model, engine, cfg, opt)
    }

    fn assemble(task: T, model: Model, engine: Engine, cfg: TrainConfig, opt: Optimizer) -> Result<Self> {
        cfg.validate()?;
        model.validate(true)?;
        if engine.config() != &model.cfg {
            return Err(Error::Config {
                arg: "engine".into(),
                message: "the engine was built for another layer configuration than the model's".into(),
            });
        }
        let names = model_param_names(&model);
        for f in &cfg.optim.frozen {
            if !names.contains(&f.as_str()) {
                return Err(Error::Config {
                    arg: "frozen".into(),
                    message: format!("no parameter named `{f}` (known: {})", names.join(", ")),
                });
            }
        }
        task.fits(&model)?;
        // Before the first batch is drawn: a batch (or an episode length) the
        // machine cannot hold would abort the process in the allocator.
        let moments = match cfg.optim.method {
            crate::train::Method::Adam { .. } => 2,
            crate::train::Method::Sgd { momentum, .. } => usize::from(momentum > 0.0),
        };
        let outputs = model.head.as_ref().map_or(0, |h| h.bias.len());
        crate::limits::training(
            &model.cfg,
            outputs,
            moments,
            engine.device(),
            engine.options(),
            cfg.batch,
            task.steps(),
        )
        .check(
            &format!("batch = {}", cfg.batch),
            &format!(
                "training on task `{}` (N = {}, T = {} steps, B = {} episodes per update)",
                task.name(),
                model.cfg.n,
                task.steps(),
                cfg.batch
            ),
            "use a smaller batch, shorter episodes or fewer neurons",
        )?;
        // One throwaway episode: a task whose episodes do not fit the model
        // fails here, with the shape that is wrong, not in the middle of a run.
        model.validate_episode(&task.sample(&mut init_rng(cfg.seed), 1), true).map_err(|e| Error::Config {
            arg: "task".into(),
            message: format!("the task's episodes do not fit the model: {e}"),
        })?;
        let rng = episode_rng(cfg.seed);
        Ok(Trainer {
            task,
            model,
            engine,
            opt,
            cfg,
            rng,
            step: 0,
            log: Vec::new(),
            acc: [0.0; 3],
            seconds_before: 0.0,
            started: Instant::now(),
        })
    }

    /// Continues the run saved in `ck` with `task` (which must equal the
    /// checkpoint's) on `engine` (any device built for the checkpoint's layer).
    pub fn resume(task: T, engine: Engine, ck: TrainCheckpoint) -> Result<Self> {
        if task.name() != ck.task || task.to_json() != ck.task_config {
            return Err(Error::Config {
                arg: "task".into(),
                message: format!(
                    "the checkpoint was made on task `{}` with settings {}, not `{}` with {}",
                    ck.task,
                    ck.task_config,
                    task.name(),
                    task.to_json()
                ),
            });
        }
        let opt = Optimizer::with_state(ck.config.optim.clone(), ck.optim)?;
        let mut t = Self::assemble(task, ck.model, engine, ck.config, opt)?;
        t.rng = ck.rng;
        t.step = ck.step;
        t.log = ck.log;
        t.acc = ck.acc;
        t.seconds_before = ck.seconds;
        Ok(t)
    }

    /// The task.
    pub fn task(&self) -> &T {
        &self.task
    }

    /// The model as trained so far.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The optimizer and its state.
    pub fn optimizer(&self) -> &Optimizer {
        &self.opt
    }

    /// The run's settings (with the fixed rate added to the frozen names).
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Updates done.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The learning curve so far.
    pub fn log(&self) -> &[LogRow] {
        &self.log
    }

    /// The engine (e.g. to change its options).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    fn seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }

    /// One update on a fresh batch of episodes.
    pub fn step(&mut self) -> Result<StepReport> {
        let ep = self.task.sample(&mut self.rng, self.cfg.batch);
        let update = self.step + 1;
        let (grads, yhat) = self.model.loss_grad_output(&mut self.engine, &ep).map_err(|e| match e {
            // Say which update diverged, and the usual remedy in training.
            Error::Overflow { quantity, message } => Error::Overflow {
                quantity: format!("update {update}: {quantity}"),
                message: format!("{message} (in training: lower the learning rate, or clip gradients with clip_norm)"),
            },
            e => e,
        })?;
        if !grads.loss.is_finite() {
            return Err(Error::NonFinite {
                arg: format!("loss of update {} (lower the learning rate, or clip gradients)", self.step + 1),
                index: 0,
                value: grads.loss,
            });
        }
        let err = self.task.error(&ep, &yhat);
        let stats = self.opt.step_model(&mut self.model, &grads)?;
        self.step += 1;
        let loss = grads.loss / self.cfg.batch as f64;
        self.acc[0] += loss;
        self.acc[1] += err;
        self.acc[2] += 1.0;
        Ok(StepReport { step: self.step, loss, err, stats })
    }

    /// Loss per episode and error rate on `eval_episodes` fresh episodes
    /// (forward only, in batches of at most `batch`), drawn from
    /// [`eval_rng`] at the current step.
    pub fn evaluate(&mut self) -> Result<(f64, f64)> {
        let mut rng = eval_rng(self.cfg.seed, self.step);
        let (mut loss, mut err, mut left) = (0.0, 0.0, self.cfg.eval_episodes);
        while left > 0 {
            let b = left.min(self.cfg.batch);
            let ep = self.task.sample(&mut rng, b);
            let fwd = self.engine.forward(&self.model.params, Seq::new(&ep.inputs, b, ep.steps), ep.init.as_ref())?;
            crate::overflow::outputs(&self.model.cfg, &fwd.y, &fwd.last, b, ep.steps).map_err(|e| match e {
                Error::Overflow { quantity, message } => {
                    Error::Overflow { quantity: format!("evaluation after update {}: {quantity}", self.step), message }
                }
                e => e,
            })?;
            let yhat = self.model.readout(&fwd.y, b * ep.steps);
            loss += masked_sq_loss(&yhat, &ep.targets, &ep.mask, self.model.outputs()).0;
            err += self.task.error(&ep, &yhat) * b as f64;
            left -= b;
        }
        let n = self.cfg.eval_episodes as f64;
        Ok((loss / n, err / n))
    }

    /// Evaluates, appends a row to the log (with the training means since the
    /// previous row) and returns it.
    pub fn record(&mut self) -> Result<LogRow> {
        let (eval_loss, eval_err) = self.evaluate()?;
        let [l, e, k] = self.acc;
        let row = LogRow {
            step: self.step,
            episodes: self.step * self.cfg.batch as u64,
            train_loss: if k > 0.0 { l / k } else { f64::NAN },
            train_err: if k > 0.0 { e / k } else { f64::NAN },
            eval_loss,
            eval_err,
            lr: self.opt.config().lr_at(self.step),
            seconds: self.seconds(),
        };
        self.acc = [0.0; 3];
        self.log.push(row);
        Ok(row)
    }

    /// Everything needed to continue the run exactly.
    pub fn checkpoint(&self) -> TrainCheckpoint {
        TrainCheckpoint {
            task: self.task.name().to_string(),
            task_config: self.task.to_json(),
            model: self.model.clone(),
            config: self.cfg.clone(),
            optim: self.opt.state().clone(),
            step: self.step,
            rng: self.rng.clone(),
            log: self.log.clone(),
            acc: self.acc,
            seconds: self.seconds(),
        }
    }

    /// Writes [`Trainer::checkpoint`] to `path`, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.checkpoint().write(path)
    }

    /// Trains until `until` updates are done: evaluates before the first
    /// update (of a fresh run), every `eval_every` updates and at the end;
    /// with `checkpoint = Some((path, every))`, saves every `every` updates
    /// (0: only at the end) and at the end. `on` sees every event and may stop
    /// the run by returning an error.
    pub fn run(
        &mut self,
        until: u64,
        checkpoint: Option<(&Path, u64)>,
        on: &mut dyn FnMut(Event<'_>) -> Result<()>,
    ) -> Result<()> {
        if self.log.is_empty() {
            let row = self.record()?;
            on(Event::Eval(&row))?;
        }
        let mut saved_at = None;
        while self.step < until {
            let rep = self.step()?;
            on(Event::Step(&rep))?;
            if self.cfg.eval_every > 0 && self.step.is_multiple_of(self.cfg.eval_every) {
                let row = self.record()?;
                on(Event::Eval(&row))?;
            }
            if let Some((path, _)) = checkpoint.filter(|&(_, every)| every > 0 && self.step.is_multiple_of(every)) {
                self.save(path)?;
                saved_at = Some(self.step);
                on(Event::Saved(path))?;
            }
        }
        let mut fresh_row = false;
        if self.log.last().map(|r| r.step) != Some(self.step) {
            let row = self.record()?;
            fresh_row = true;
            on(Event::Eval(&row))?;
        }
        if let Some((path, _)) = checkpoint.filter(|_| saved_at != Some(self.step) || fresh_row) {
            self.save(path)?;
            on(Event::Saved(path))?;
        }
        Ok(())
    }
}
