//! The agent: a recurrent plastic layer, a policy head and a value head
//! (one linear head of `A + 1` outputs), acting one step at a time through
//! [`crate::Stepper`], and its A2C update.
//!
//! The input of step `t` is the environment's observation followed by the
//! previous reward, the previous action (one-hot, zeros at `t = 0`) and the
//! time `t / T`:
//!
//! ```text
//! x_t = [ obs_t (O) | r_{t−1} | onehot(a_{t−1}) (A) | t/T ]      X = O + A + 2
//! ```

use rand::RngExt;
use rand_distr::{Distribution, Uniform};

use super::a2c::{self, A2cConfig, A2cLoss};
use super::env::Env;
use crate::config::{LayerConfig, ModActivation, ModulatorConfig, Rule};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::{Head, Model, ModelGrads};
use crate::options::Truncation;
use crate::params::{Gradients, Params};
use crate::step::{Stepper, StepperF64};
use crate::train::{Optimizer, StepStats, TaskRng, init_rng};

/// The network variants of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// No plasticity: `α` fixed at 0 and frozen (and η frozen), an ordinary
    /// recurrent network `h_t = tanh(W h_{t−1} + U x_t + b)`.
    Rnn,
    /// Hebbian plasticity, learned `α` (per connection) and η, no modulation.
    Plastic,
    /// Simple neuromodulation: one modulator output, learned fan-out to every neuron.
    Modulated,
    /// Retroactive neuromodulation: the modulator acts on an eligibility trace.
    Retroactive,
}

impl Variant {
    /// Every variant, in the order of the comparison.
    pub const ALL: [Variant; 4] = [Variant::Rnn, Variant::Plastic, Variant::Modulated, Variant::Retroactive];

    /// The name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Rnn => "rnn",
            Variant::Plastic => "plastic",
            Variant::Modulated => "modulated",
            Variant::Retroactive => "retroactive",
        }
    }

    /// Parses [`Variant::name`]; an unknown name is an error listing the known ones.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| Error::Config {
            arg: "variant".into(),
            message: format!("unknown variant `{s}`; expected one of rnn, plastic, modulated, retroactive"),
        })
    }

    /// The trace rule of the layer.
    pub fn rule(self) -> Rule {
        match self {
            Variant::Rnn | Variant::Plastic => Rule::Hebb,
            Variant::Modulated => Rule::Modulated,
            Variant::Retroactive => Rule::Retroactive,
        }
    }

    /// The layer of `n` neurons and `x` inputs: recurrent, inputs through
    /// learned `U`, a bias, tanh; α per connection (one frozen zero for
    /// `rnn`); the modulated variants have K = 1 modulator output (tanh, with
    /// a bias) fanned out by learned weights, and `c_max = 1`.
    pub fn layer(self, n: usize, x: usize) -> LayerConfig {
        let mut cfg = LayerConfig::recurrent(self.rule(), n, x);
        cfg.bias = true;
        cfg.modulator =
            ModulatorConfig { k: 1, activation: ModActivation::Tanh, bias: true, fanout: true, fanout_bias: false };
        if self == Variant::Rnn {
            cfg.alpha = crate::config::AlphaShape::Scalar;
        }
        cfg
    }

    /// The parameters the optimizer must not touch.
    pub fn frozen(self) -> Vec<String> {
        match self {
            Variant::Rnn => vec!["alpha".into(), "eta".into()],
            _ => Vec::new(),
        }
    }
}

/// A policy/value agent on a plastic recurrent layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// The variant.
    pub variant: Variant,
    /// The layer and the head: `head.out.weight` `(A + 1, N)`, rows `0..A`
    /// the policy logits, row `A` the value.
    pub model: Model,
    /// Observation features `O` of the environment.
    pub obs: usize,
    /// Actions `A`.
    pub actions: usize,
}

/// `X = O + A + 2`: observation, previous reward, previous action, time.
pub fn input_size(obs: usize, actions: usize) -> usize {
    obs + actions + 2
}

impl Agent {
    /// A fresh agent of `hidden` neurons for an environment of `obs`
    /// features and `actions` actions, initialised from
    /// [`crate::train::init_rng`]`(seed)`:
    /// `W` ~ U(±1/√N), `U` ~ U(±1/√X), head and modulator `V` ~ U(±1/√N),
    /// fan-out ~ U(±1), biases 0; α ~ U(±0.01) (0 for `rnn`); η = 0.05
    /// (Hebb), η_e = 0.1 (retroactive).
    pub fn new(variant: Variant, obs: usize, actions: usize, hidden: usize, seed: u64) -> Result<Self> {
        if hidden == 0 {
            return Err(Error::Empty { arg: "hidden (N)".into() });
        }
        if actions < 2 {
            return Err(Error::Range { arg: "actions".into(), value: actions as f64, expected: "at least 2".into() });
        }
        let x = input_size(obs, actions);
        let cfg = variant.layer(hidden, x);
        let mut p = Params::<f32>::zeros(&cfg);
        let mut rng = init_rng(seed);
        let mut fill = |v: &mut Vec<f32>, a: f64| {
            let d = Uniform::new_inclusive(-a, a).expect("a finite bound");
            v.iter_mut().for_each(|w| *w = d.sample(&mut rng) as f32);
        };
        let sn = 1.0 / (hidden as f64).sqrt();
        fill(&mut p.w, sn);
        fill(&mut p.u, 1.0 / (x as f64).sqrt());
        if variant != Variant::Rnn {
            fill(&mut p.alpha, 0.01);
        }
        fill(&mut p.mod_v, sn);
        fill(&mut p.fanout, 1.0);
        let mut weight = vec![0.0f32; (actions + 1) * hidden];
        fill(&mut weight, sn);
        if let Some(e) = p.eta.first_mut() {
            *e = 0.05;
        }
        if let Some(e) = p.eta_e.first_mut() {
            *e = 0.1;
        }
        let model = Model { cfg, params: p, head: Some(Head { weight, bias: vec![0.0; actions + 1] }) };
        model.validate(true)?;
        Ok(Agent { variant, model, obs, actions })
    }

    /// Puts the learned rates η and η_e back into `[0, 1]`, where the trace
    /// rules are defined (and the engine accepts them): an optimizer step
    /// can take a rate that sits near 0 below it. A projected gradient step.
    pub fn project_rates(&mut self) {
        let p = &mut self.model.params;
        p.eta.iter_mut().chain(p.eta_e.iter_mut()).for_each(|r| *r = r.clamp(0.0, 1.0));
    }

    /// `N`.
    pub fn hidden(&self) -> usize {
        self.model.cfg.n
    }

    /// The head in f64: `(weight (A + 1, N), bias (A + 1))`.
    pub fn head64(&self) -> (Vec<f64>, Vec<f64>) {
        let h = self.model.head.as_ref().expect("an agent has a head");
        (h.weight.iter().map(|&v| v as f64).collect(), h.bias.iter().map(|&v| v as f64).collect())
    }
}

/// A recurrent core run one step at a time: `x` `(B, X)` in, `y` `(B, N)` out.
pub trait Core {
    /// Runs the next step.
    fn step(&mut self, x: &[f32], y: &mut [f64]) -> Result<()>;
}

impl Core for Stepper<'_> {
    fn step(&mut self, x: &[f32], y: &mut [f64]) -> Result<()> {
        let out = Stepper::step(self, x)?;
        y.iter_mut().zip(out).for_each(|(d, &v)| *d = v as f64);
        Ok(())
    }
}

impl Core for StepperF64 {
    fn step(&mut self, x: &[f32], y: &mut [f64]) -> Result<()> {
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        y.copy_from_slice(StepperF64::step(self, &x64)?);
        Ok(())
    }
}

/// What a batch of episodes did.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// `B`, `T`.
    pub batch: usize,
    /// `T`.
    pub steps: usize,
    /// Actions taken, `(B, T)`.
    pub actions: Vec<usize>,
    /// Rewards received, `(B, T)`.
    pub rewards: Vec<f32>,
    /// The heads' outputs (logits, value), `(B, T, A + 1)`.
    pub out: Vec<f64>,
    /// The layer's outputs, `(B, T, N)`.
    pub y: Vec<f64>,
}

impl Rollout {
    /// Total reward per episode, averaged over the batch.
    pub fn mean_reward(&self) -> f64 {
        self.rewards.iter().map(|&r| r as f64).sum::<f64>() / self.batch as f64
    }
}

/// Samples from `softmax(z)` with one uniform draw; `lp`: scratch of `z`'s length.
fn sample(z: &[f64], lp: &mut [f64], rng: &mut TaskRng) -> usize {
    a2c::log_softmax(z, lp);
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (k, l) in lp.iter().enumerate() {
        acc += l.exp();
        if u < acc {
            return k;
        }
    }
    z.len() - 1
}

/// Runs `envs` (one per episode, `B` of them) for `steps` steps through
/// `core`, the head `(head_w (A + 1, N), head_b)` choosing the actions: drawn
/// from the policy with `act_rng`, or taken from `forced` `(B, T)` (to replay
/// a batch, e.g. in a gradient check). Environment draws come from
/// `env_rng`, in batch order.
#[allow(clippy::too_many_arguments)]
pub fn rollout<E: Env>(
    core: &mut impl Core,
    head: (&[f64], &[f64]),
    envs: &mut [E],
    steps: usize,
    env_rng: &mut TaskRng,
    act_rng: &mut TaskRng,
    forced: Option<&[usize]>,
) -> Result<Rollout> {
    let batch = envs.len();
    if batch == 0 {
        return Err(Error::Empty { arg: "batch (B, environments)".into() });
    }
    let (obs, na) = (envs[0].obs_size(), envs[0].actions());
    let (o, x) = (na + 1, input_size(obs, na));
    let n = head.0.len() / o;
    if head.1.len() != o || n * o != head.0.len() {
        return Err(Error::Config {
            arg: "head".into(),
            message: format!("the head must have A + 1 = {o} rows for {na} actions; got {} biases", head.1.len()),
        });
    }
    if let Some(f) = forced
        && f.len() != batch * steps
    {
        return Err(Error::Shape {
            arg: "forced actions".into(),
            expected: crate::Shape(vec![batch, steps]),
            got: f.len(),
            note: "one action per episode and step".into(),
        });
    }
    let mut ro = Rollout {
        batch,
        steps,
        actions: vec![0; batch * steps],
        rewards: vec![0.0; batch * steps],
        out: vec![0.0; batch * steps * o],
        y: vec![0.0; batch * steps * n],
    };
    // The step loop reuses these buffers.
    let mut xs = vec![0.0f32; batch * x];
    let mut ys = vec![0.0f64; batch * n];
    let mut out = vec![0.0f64; batch * o];
    let mut lp = vec![0.0f64; na];
    for t in 0..steps {
        for (b, env) in envs.iter().enumerate() {
            let xb = &mut xs[b * x..(b + 1) * x];
            xb.fill(0.0);
            env.observe(t, &mut xb[..obs]);
            if t > 0 {
                let prev = b * steps + t - 1;
                xb[obs] = ro.rewards[prev];
                xb[obs + 1 + ro.actions[prev]] = 1.0;
            }
            xb[obs + 1 + na] = t as f32 / steps as f32;
        }
        core.step(&xs, &mut ys)?;
        a2c::heads_forward_into(head.0, head.1, &ys, n, &mut out);
        for (b, env) in envs.iter_mut().enumerate() {
            let row = b * steps + t;
            let ob = &out[b * o..(b + 1) * o];
            let a = match forced {
                Some(f) => f[row],
                None => sample(&ob[..na], &mut lp, act_rng),
            };
            ro.rewards[row] = env.act(t, a, env_rng)?;
            ro.actions[row] = a;
            ro.out[row * o..(row + 1) * o].copy_from_slice(ob);
            ro.y[row * n..(row + 1) * n].copy_from_slice(&ys[b * n..(b + 1) * n]);
        }
    }
    Ok(ro)
}

/// What one A2C update did.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// The batch's mean total reward per episode.
    pub reward: f64,
    /// The loss and its parts.
    pub loss: A2cLoss,
    /// The optimizer's step.
    pub stats: StepStats,
}

/// The A2C gradient of a batch: the layer's through the engine's
/// step-at-a-time path, the head's from [`a2c::heads_backward`].
pub struct AgentGrads {
    /// The batch.
    pub rollout: Rollout,
    /// The loss.
    pub loss: A2cLoss,
    /// Gradients of the layer and the head.
    pub grads: ModelGrads,
}

/// Plays one batch with `engine` (whose configuration must be the agent's)
/// and returns the A2C loss and gradients.
#[allow(clippy::too_many_arguments)]
pub fn batch_grads<E: Env>(
    agent: &Agent,
    engine: &mut Engine,
    a2c_cfg: &A2cConfig,
    envs: &mut [E],
    steps: usize,
    env_rng: &mut TaskRng,
    act_rng: &mut TaskRng,
    forced: Option<&[usize]>,
) -> Result<AgentGrads> {
    if engine.config() != &agent.model.cfg {
        return Err(Error::Config {
            arg: "engine".into(),
            message: "the engine runs another layer configuration than the agent's".into(),
        });
    }
    check_envs(agent, envs)?;
    let (hw, hb) = agent.head64();
    let (n, o) = (agent.hidden(), agent.actions + 1);
    let mut st = engine.stepper(&agent.model.params, envs.len(), steps, None)?;
    let ro = rollout(&mut st, (&hw, &hb), envs, steps, env_rng, act_rng, forced)?;
    let loss = a2c::loss(a2c_cfg, &ro.out, &ro.actions, &ro.rewards, steps, None)?;
    let (dw, db, dy) = a2c::heads_backward(&hw, &ro.y, &loss.dout, n, o);
    let dy32: Vec<f32> = dy.iter().map(|&v| v as f32).collect();
    let (_, layer) = st.backward(&dy32, None)?;
    let head = Head { weight: dw.iter().map(|&v| v as f32).collect(), bias: db.iter().map(|&v| v as f32).collect() };
    Ok(AgentGrads { rollout: ro, grads: ModelGrads { loss: loss.loss, layer, head: Some(head) }, loss })
}

fn check_envs<E: Env>(agent: &Agent, envs: &[E]) -> Result<()> {
    if let Some(e) = envs.first()
        && (e.obs_size() != agent.obs || e.actions() != agent.actions)
    {
        return Err(Error::Config {
            arg: "envs".into(),
            message: format!(
                "the agent was built for {} observation features and {} actions; the environment has {} and {}",
                agent.obs,
                agent.actions,
                e.obs_size(),
                e.actions()
            ),
        });
    }
    Ok(())
}

/// One A2C update: a batch played with [`batch_grads`], then one optimizer step.
#[allow(clippy::too_many_arguments)]
pub fn update<E: Env>(
    agent: &mut Agent,
    engine: &mut Engine,
    opt: &mut Optimizer,
    a2c_cfg: &A2cConfig,
    envs: &mut [E],
    steps: usize,
    env_rng: &mut TaskRng,
    act_rng: &mut TaskRng,
) -> Result<Update> {
    let g = batch_grads(agent, engine, a2c_cfg, envs, steps, env_rng, act_rng, None)?;
    let stats = opt.step_model(&mut agent.model, &g.grads)?;
    agent.project_rates();
    Ok(Update { reward: g.rollout.mean_reward(), loss: g.loss, stats })
}

/// The f64 twin of [`batch_grads`] on the reference stepper, for gradient
/// checks: parameters `params` and head `(weight, bias)` in f64; `detached`:
/// the advantages the policy term holds constant (see [`a2c::loss`]).
#[allow(clippy::too_many_arguments)]
pub fn batch_grads_f64<E: Env>(
    cfg: &LayerConfig,
    params: &Params<f64>,
    head: (&[f64], &[f64]),
    a2c_cfg: &A2cConfig,
    envs: &mut [E],
    steps: usize,
    env_rng: &mut TaskRng,
    act_rng: &mut TaskRng,
    forced: Option<&[usize]>,
    detached: Option<&[f64]>,
) -> Result<AgentGradsF64> {
    let (n, o) = (cfg.n, head.1.len());
    let mut st = StepperF64::new(*cfg, params.clone(), envs.len(), steps, None)?;
    let ro = rollout(&mut st, head, envs, steps, env_rng, act_rng, forced)?;
    let loss = a2c::loss(a2c_cfg, &ro.out, &ro.actions, &ro.rewards, steps, detached)?;
    let (dw, db, dy) = a2c::heads_backward(head.0, &ro.y, &loss.dout, n, o);
    let (_, layer) = st.backward(&dy, None, Truncation::None)?;
    Ok(AgentGradsF64 { rollout: ro, loss, layer, head: (dw, db) })
}

/// What [`batch_grads_f64`] returns.
pub struct AgentGradsF64 {
    /// The batch.
    pub rollout: Rollout,
    /// The loss.
    pub loss: A2cLoss,
    /// The layer's gradients.
    pub layer: Gradients<f64>,
    /// The head's `(dW (A + 1, N), db (A + 1))`.
    pub head: (Vec<f64>, Vec<f64>),
}
