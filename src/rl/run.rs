//! A seeded A2C training run of one variant on one task, its checkpoint
//! file, and the statistics of a comparison across seeds.
//!
//! ## Checkpoint file (safetensors)
//!
//! | tensor | dtype | shape |
//! |--------|-------|-------|
//! | the agent's model (`w`, `alpha`, …, `head.out.weight` `(A + 1, N)`, `head.out.bias`) | F32 | as in a model file |
//! | `opt.m.<name>`, `opt.v.<name>` (Adam moments) | F32 | `(len,)` |
//! | `opt.step`, `run.step` | I64 | `(1,)` |
//! | `rng.env.seed`, `rng.env.stream`, `rng.env.word_pos` (and `rng.act.*`) | U8 | `(32,)`, `(8,)`, `(16,)` |
//! | `log.reward`, `log.loss` (one per update) | F64 | `(U,)` |
//! | `run.seconds` | F64 | `(1,)` |
//!
//! Metadata: the model keys of a model file and `neuroplastic.rl` (the
//! [`RunConfig`] as JSON). The file is written atomically.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::a2c::A2cConfig;
use super::agent::{self, Agent, Update, Variant};
use super::env::{CueReward, CueRewardConfig, Env, Maze, MazeConfig};
use crate::engine::{Device, Engine, Options};
use crate::error::{Error, Result};
use crate::io::{Data, Tensor, TensorFile, put_model, take_model};
use crate::train::{OptimConfig, OptimState, Optimizer, TaskRng, episode_rng};

/// The generator of a run's actions (stream 3 of the seed's ChaCha8).
pub fn action_rng(seed: u64) -> TaskRng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(3);
    r
}

/// Which task, with its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TaskConfig {
    /// Cue-reward association.
    CueReward(CueRewardConfig),
    /// The grid maze.
    Maze(MazeConfig),
}

impl TaskConfig {
    /// `cue-reward` or `maze`.
    pub fn name(&self) -> &'static str {
        match self {
            TaskConfig::CueReward(_) => "cue-reward",
            TaskConfig::Maze(_) => "maze",
        }
    }

    /// Steps per episode `T`.
    pub fn steps(&self) -> usize {
        match self {
            TaskConfig::CueReward(c) => c.steps,
            TaskConfig::Maze(c) => c.steps,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        match self {
            TaskConfig::CueReward(c) => c.validate(),
            TaskConfig::Maze(c) => c.validate(),
        }
    }

    /// Observation features and actions.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            TaskConfig::CueReward(c) => (c.bits + 1, 2),
            TaskConfig::Maze(_) => (9, 4),
        }
    }

    fn to_json(self) -> Value {
        match self {
            TaskConfig::CueReward(c) => json!({"task": "cue-reward", "cues": c.cues, "bits": c.bits, "steps": c.steps}),
            TaskConfig::Maze(c) => {
                json!({"task": "maze", "size": c.size, "steps": c.steps, "reward": c.reward, "wall": c.wall})
            }
        }
    }

    fn from_json(v: &Value, path: &str) -> Result<Self> {
        let g = Get { v, path };
        Ok(match g.str("task")? {
            "cue-reward" => TaskConfig::CueReward(CueRewardConfig {
                cues: g.u64("cues")? as usize,
                bits: g.u64("bits")? as usize,
                steps: g.u64("steps")? as usize,
            }),
            "maze" => TaskConfig::Maze(MazeConfig {
                size: g.u64("size")? as usize,
                steps: g.u64("steps")? as usize,
                reward: g.f64("reward")? as f32,
                wall: g.f64("wall")? as f32,
            }),
            t => return Err(fmt_err(path, format!("unknown task `{t}` (expected cue-reward or maze)"))),
        })
    }
}

fn fmt_err(path: &str, message: String) -> Error {
    Error::Format { path: path.into(), message }
}

struct Get<'a> {
    v: &'a Value,
    path: &'a str,
}

impl Get<'_> {
    fn get(&self, k: &str) -> Result<&Value> {
        self.v.get(k).ok_or_else(|| fmt_err(self.path, format!("run settings: missing `{k}`")))
    }
    fn u64(&self, k: &str) -> Result<u64> {
        self.get(k)?.as_u64().ok_or_else(|| fmt_err(self.path, format!("run settings: `{k}` is not an integer")))
    }
    fn f64(&self, k: &str) -> Result<f64> {
        self.get(k)?.as_f64().ok_or_else(|| fmt_err(self.path, format!("run settings: `{k}` is not a number")))
    }
    fn str(&self, k: &str) -> Result<&str> {
        self.get(k)?.as_str().ok_or_else(|| fmt_err(self.path, format!("run settings: `{k}` is not a string")))
    }
}

/// Everything that defines a run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// The task.
    pub task: TaskConfig,
    /// The network variant.
    pub variant: Variant,
    /// Neurons `N`.
    pub hidden: usize,
    /// Episodes per update `B`.
    pub batch: usize,
    /// Updates in the whole run.
    pub updates: u64,
    /// The seed of every draw.
    pub seed: u64,
    /// The loss's constants.
    pub a2c: A2cConfig,
    /// Adam's learning rate.
    pub lr: f64,
    /// Clip the gradients' global norm to this (`None`: no clipping).
    pub clip_norm: Option<f64>,
}

impl RunConfig {
    /// The paper's settings for a task (hidden 200 and batch 30 for
    /// cue-reward, hidden 100 and batch 30 for the maze; Adam at 1e-4,
    /// norm clipped at 4, γ = 0.9, `c_v` = 0.1, `c_e` = 0.03).
    pub fn paper(task: TaskConfig, variant: Variant, updates: u64, seed: u64) -> Self {
        let hidden = match task {
            TaskConfig::CueReward(_) => 200,
            TaskConfig::Maze(_) => 100,
        };
        RunConfig {
            task,
            variant,
            hidden,
            batch: 30,
            updates,
            seed,
            a2c: A2cConfig::default(),
            lr: 1e-4,
            clip_norm: Some(4.0),
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.task.validate()?;
        self.a2c.validate()?;
        if self.batch == 0 {
            return Err(Error::Empty { arg: "batch (B)".into() });
        }
        if self.hidden == 0 {
            return Err(Error::Empty { arg: "hidden (N)".into() });
        }
        self.optim().validate()
    }

    /// The optimizer: Adam, clipping, the variant's frozen parameters.
    pub fn optim(&self) -> OptimConfig {
        OptimConfig { clip_norm: self.clip_norm, frozen: self.variant.frozen(), ..OptimConfig::adam(self.lr) }
    }

    fn to_json(&self) -> Value {
        json!({
            "task": self.task.to_json(),
            "variant": self.variant.name(),
            "hidden": self.hidden,
            "batch": self.batch,
            "updates": self.updates,
            "seed": self.seed,
            "gamma": self.a2c.gamma,
            "value_coef": self.a2c.value_coef,
            "entropy_coef": self.a2c.entropy_coef,
            "lr": self.lr,
            "clip_norm": self.clip_norm,
        })
    }

    fn from_json(v: &Value, path: &str) -> Result<Self> {
        let g = Get { v, path };
        let clip_norm = match g.get("clip_norm")? {
            Value::Null => None,
            c => Some(c.as_f64().ok_or_else(|| fmt_err(path, "run settings: `clip_norm` is not a number".into()))?),
        };
        Ok(RunConfig {
            task: TaskConfig::from_json(g.get("task")?, path)?,
            variant: Variant::parse(g.str("variant")?)?,
            hidden: g.u64("hidden")? as usize,
            batch: g.u64("batch")? as usize,
            updates: g.u64("updates")?,
            seed: g.u64("seed")?,
            a2c: A2cConfig {
                gamma: g.f64("gamma")?,
                value_coef: g.f64("value_coef")?,
                entropy_coef: g.f64("entropy_coef")?,
            },
            lr: g.f64("lr")?,
            clip_norm,
        })
    }
}

/// A training run in progress.
#[derive(Clone, Debug)]
pub struct RunState {
    /// Its settings.
    pub cfg: RunConfig,
    /// The agent.
    pub agent: Agent,
    /// The optimizer.
    pub opt: Optimizer,
    /// The environment generator, at the next draw.
    pub env_rng: TaskRng,
    /// The action generator, at the next draw.
    pub act_rng: TaskRng,
    /// Mean total reward per episode of every update so far.
    pub rewards: Vec<f64>,
    /// Loss of every update so far.
    pub losses: Vec<f64>,
    /// Training seconds so far.
    pub seconds: f64,
}

impl RunState {
    /// A fresh run.
    pub fn new(cfg: RunConfig) -> Result<Self> {
        cfg.validate()?;
        let (obs, actions) = cfg.task.shape();
        let agent = Agent::new(cfg.variant, obs, actions, cfg.hidden, cfg.seed)?;
        Ok(RunState {
            opt: Optimizer::new(cfg.optim())?,
            env_rng: episode_rng(cfg.seed),
            act_rng: action_rng(cfg.seed),
            agent,
            rewards: Vec::new(),
            losses: Vec::new(),
            seconds: 0.0,
            cfg,
        })
    }

    /// Updates done.
    pub fn step(&self) -> u64 {
        self.rewards.len() as u64
    }

    /// Whether all `cfg.updates` are done.
    pub fn done(&self) -> bool {
        self.step() >= self.cfg.updates
    }

    /// An engine for the agent's layer.
    pub fn engine(&self, device: Device, threads: Option<usize>) -> Result<Engine> {
        Engine::new(self.agent.model.cfg, device, Options { threads, ..Options::default() })
    }

    /// One update on a fresh batch of episodes.
    pub fn update(&mut self, engine: &mut Engine) -> Result<Update> {
        let (b, t) = (self.cfg.batch, self.cfg.task.steps());
        let start = std::time::Instant::now();
        let u = match self.cfg.task {
            TaskConfig::CueReward(c) => {
                let mut envs = (0..b).map(|_| CueReward::new(c, &mut self.env_rng)).collect::<Result<Vec<_>>>()?;
                self.play(engine, &mut envs, t)?
            }
            TaskConfig::Maze(c) => {
                let mut envs = (0..b).map(|_| Maze::new(c, &mut self.env_rng)).collect::<Result<Vec<_>>>()?;
                self.play(engine, &mut envs, t)?
            }
        };
        self.rewards.push(u.reward);
        self.losses.push(u.loss.loss);
        self.seconds += start.elapsed().as_secs_f64();
        Ok(u)
    }

    fn play<E: Env>(&mut self, engine: &mut Engine, envs: &mut [E], t: usize) -> Result<Update> {
        let RunState { agent, opt, env_rng, act_rng, cfg, .. } = self;
        agent::update(agent, engine, opt, &cfg.a2c, envs, t, env_rng, act_rng)
    }

    /// The run as a checkpoint file.
    pub fn to_file(&self) -> Result<TensorFile> {
        let mut f = TensorFile::new();
        put_model(&mut f, &self.agent.model)?;
        let st = self.opt.state();
        for (slot, map) in [("m", &st.m), ("v", &st.v)] {
            for (name, v) in map {
                f.put_f32(&format!("opt.{slot}.{name}"), &[v.len()], v.clone());
            }
        }
        let i64t = |v: u64| Tensor { shape: vec![1], data: Data::I64(vec![v as i64]) };
        let f64t = |v: Vec<f64>| Tensor { shape: vec![v.len()], data: Data::F64(v) };
        let u8t = |v: &[u8]| Tensor { shape: vec![v.len()], data: Data::U8(v.to_vec()) };
        f.put("opt.step", i64t(st.step));
        f.put("run.step", i64t(self.step()));
        for (name, r) in [("env", &self.env_rng), ("act", &self.act_rng)] {
            f.put(&format!("rng.{name}.seed"), u8t(&r.get_seed()));
            f.put(&format!("rng.{name}.stream"), u8t(&r.get_stream().to_le_bytes()));
            f.put(&format!("rng.{name}.word_pos"), u8t(&r.get_word_pos().to_le_bytes()));
        }
        f.put("log.reward", f64t(self.rewards.clone()));
        f.put("log.loss", f64t(self.losses.clone()));
        f.put("run.seconds", f64t(vec![self.seconds]));
        f.metadata.insert("neuroplastic.rl".into(), self.cfg.to_json().to_string());
        Ok(f)
    }

    /// Writes the checkpoint atomically.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        self.to_file()?.write(path)
    }

    /// Reads a checkpoint; every missing or misshapen tensor is an error naming it.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let mut f = TensorFile::read(path)?;
        let p = f.path.clone();
        let cfg: Value = serde_json::from_str(f.meta("neuroplastic.rl")?)
            .map_err(|e| fmt_err(&p, format!("metadata `neuroplastic.rl` is not valid JSON: {e}")))?;
        let cfg = RunConfig::from_json(&cfg, &p)?;
        cfg.validate()?;
        let model = take_model(&mut f)?;
        let (obs, actions) = cfg.task.shape();
        let want = Agent::new(cfg.variant, obs, actions, cfg.hidden, cfg.seed)?;
        // A model file leaves out what its rule does not use (e.g. the modulator of Hebb):
        // compare what it holds, then take the run's configuration.
        let (a, b) = (&model.cfg, &want.model.cfg);
        if (a.rule, a.n, a.inputs, a.alpha, a.bias) != (b.rule, b.n, b.inputs, b.alpha, b.bias)
            || crate::params::param_shapes(a) != crate::params::param_shapes(b)
            || model.head.as_ref().map(|h| h.bias.len()) != Some(actions + 1)
        {
            return Err(fmt_err(&p, "the model's shapes do not match the run's settings".into()));
        }
        let agent = Agent { variant: cfg.variant, model: crate::model::Model { cfg: *b, ..model }, obs, actions };
        let mut take_f64 = |name: &str| -> Result<Vec<f64>> {
            match f.take(name)?.data {
                Data::F64(v) => Ok(v),
                _ => Err(fmt_err(&p, format!("tensor `{name}` must be F64"))),
            }
        };
        let rewards = take_f64("log.reward")?;
        let losses = take_f64("log.loss")?;
        let seconds = take_f64("run.seconds")?.first().copied().unwrap_or(0.0);
        let mut take_i64 = |name: &str| -> Result<u64> {
            match f.take(name)?.data {
                Data::I64(v) if v.len() == 1 && v[0] >= 0 => Ok(v[0] as u64),
                _ => Err(fmt_err(&p, format!("tensor `{name}` must be one non-negative I64"))),
            }
        };
        let opt_step = take_i64("opt.step")?;
        let run_step = take_i64("run.step")?;
        if run_step as usize != rewards.len() || losses.len() != rewards.len() {
            return Err(fmt_err(&p, "`run.step`, `log.reward` and `log.loss` disagree on the updates done".into()));
        }
        let mut rng = |name: &str| -> Result<TaskRng> {
            let mut bytes = |k: &str, len: usize| -> Result<Vec<u8>> {
                match f.take(&format!("rng.{name}.{k}"))?.data {
                    Data::U8(v) if v.len() == len => Ok(v),
                    _ => Err(fmt_err(&p, format!("tensor `rng.{name}.{k}` must be {len} bytes"))),
                }
            };
            let seed: [u8; 32] = bytes("seed", 32)?.try_into().expect("length checked");
            let stream = u64::from_le_bytes(bytes("stream", 8)?.try_into().expect("length checked"));
            let pos = u128::from_le_bytes(bytes("word_pos", 16)?.try_into().expect("length checked"));
            let mut r = TaskRng::from_seed(seed);
            r.set_stream(stream);
            r.set_word_pos(pos);
            Ok(r)
        };
        let env_rng = rng("env")?;
        let act_rng = rng("act")?;
        let mut state = OptimState { step: opt_step, ..Default::default() };
        let names: Vec<String> = f.tensors.keys().filter(|n| n.starts_with("opt.")).cloned().collect();
        for key in names {
            let (_, v) = f.take_f32(&key, None)?;
            let (slot, name) = key["opt.".len()..].split_once('.').unwrap_or(("", ""));
            match slot {
                "m" => state.m.insert(name.to_string(), v),
                "v" => state.v.insert(name.to_string(), v),
                _ => return Err(fmt_err(&p, format!("unknown tensor `{key}`"))),
            };
        }
        f.finish("run checkpoint")?;
        let opt = Optimizer::with_state(cfg.optim(), state)?;
        Ok(RunState { cfg, agent, opt, env_rng, act_rng, rewards, losses, seconds })
    }
}

/// The final reward of a run: the mean over the last tenth of its updates
/// (at least one).
pub fn final_reward(rewards: &[f64]) -> f64 {
    let k = rewards.len().div_ceil(10).max(1).min(rewards.len().max(1));
    let tail = &rewards[rewards.len().saturating_sub(k)..];
    tail.iter().sum::<f64>() / tail.len().max(1) as f64
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    if df == 0 {
        f64::NAN
    } else if df <= 30 {
        T[df - 1]
    } else {
        1.96
    }
}

/// Mean and half-width of the 95% confidence interval of the mean
/// (Student's t, `n − 1` degrees of freedom; NaN half-width for one value).
pub fn mean_ci95(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
    (mean, t975(n - 1) * (var / n as f64).sqrt())
}

/// Running mean over the last `window` values (fewer at the start).
pub fn smooth(xs: &[f64], window: usize) -> Vec<f64> {
    let w = window.max(1);
    let mut acc = 0.0;
    xs.iter()
        .enumerate()
        .map(|(k, &x)| {
            acc += x;
            if k >= w {
                acc -= xs[k - w];
            }
            acc / (k + 1).min(w) as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert_eq!(final_reward(&[0.0; 5]), 0.0);
        // Last tenth of 20 values: the last 2.
        let r: Vec<f64> = (0..20).map(|k| k as f64).collect();
        assert_eq!(final_reward(&r), 18.5);
        let (m, h) = mean_ci95(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        // s = 1, n = 3: t(2) · 1/√3.
        assert!((h - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(smooth(&[1.0, 3.0, 5.0, 7.0], 2), [1.0, 2.0, 4.0, 6.0]);
    }

    #[test]
    fn settings_round_trip_through_json() {
        let c = RunConfig::paper(TaskConfig::Maze(MazeConfig::default()), Variant::Retroactive, 7, 3);
        assert_eq!(RunConfig::from_json(&c.to_json(), "x").unwrap(), c);
        let c = RunConfig {
            clip_norm: None,
            ..RunConfig::paper(TaskConfig::CueReward(CueRewardConfig::default()), Variant::Rnn, 1, 0)
        };
        assert_eq!(RunConfig::from_json(&c.to_json(), "x").unwrap(), c);
    }
}
