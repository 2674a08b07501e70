//! Training checkpoints: one safetensors file (`docs/design.md` §5) holding the
//! parameters under their usual names, the optimizer state, the step count,
//! the episode generator's exact position, the learning curve and the run's
//! configuration, so that a resumed run continues bit for bit.
//!
//! | tensor | dtype | shape |
//! |--------|-------|-------|
//! | `w`, `alpha`, `eta`, … , `head.out.weight`, `head.out.bias` | F32 | as in a model file |
//! | `opt.m.<name>`, `opt.v.<name>` (Adam), `opt.m.<name>` (SGD momentum) | F32 | that of `<name>` |
//! | `opt.step`, `train.step` | I64 | (1,) |
//! | `rng.seed`, `rng.stream`, `rng.word_pos` | U8 | (32,), (8,), (16,): little-endian |
//! | `log.step` | I64 | (R,) |
//! | `log.train_loss`, `log.train_err`, `log.eval_loss`, `log.eval_err`, `log.lr`, `log.seconds` | F64 | (R,) |
//! | `train.acc` (Σ loss, Σ error, updates since the last row), `train.seconds` | F64 | (3,), (1,) |
//!
//! Metadata: the model keys of `docs/design.md` §5 (`neuroplastic.rule`, …; the
//! model part is written and read by [`crate::io::put_model`] and
//! [`crate::io::take_model`], the code of model files), and
//! `neuroplastic.checkpoint` (format version), `neuroplastic.train` (seed,
//! batch, evaluation, optimizer: JSON), `neuroplastic.task` and
//! `neuroplastic.task.config` (JSON).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::io::{Data, Tensor, TensorFile, put_model, take_model};
use crate::model::Model;
use crate::params::param_shapes;
use crate::train::{
    HEAD_NAMES, LogRow, Method, OptimConfig, OptimState, StepDecay, TaskRng, TrainConfig, WeightDecay, json_get,
    model_param_names,
};

const VERSION: &str = "2";

/// The contents of a training checkpoint (see the module docs for the file layout).
#[derive(Clone, Debug)]
pub struct TrainCheckpoint {
    /// The task's name.
    pub task: String,
    /// The task's settings.
    pub task_config: Value,
    /// The model.
    pub model: Model,
    /// The run's settings.
    pub config: TrainConfig,
    /// The optimizer's state.
    pub optim: OptimState,
    /// Updates done.
    pub step: u64,
    /// The episode generator, at the position of the next draw.
    pub rng: TaskRng,
    /// The learning curve.
    pub log: Vec<LogRow>,
    /// Σ loss, Σ error and the number of updates since the last log row.
    pub acc: [f64; 3],
    /// Training seconds so far.
    pub seconds: f64,
}

fn fmt_err(path: &str, message: String) -> Error {
    Error::Format { path: path.into(), message }
}

pub(crate) fn i64_tensor(v: &[u64]) -> Tensor {
    Tensor { shape: vec![v.len()], data: Data::I64(v.iter().map(|&x| x as i64).collect()) }
}

fn f64_tensor(v: Vec<f64>) -> Tensor {
    Tensor { shape: vec![v.len()], data: Data::F64(v) }
}

fn u8_tensor(v: &[u8]) -> Tensor {
    Tensor { shape: vec![v.len()], data: Data::U8(v.to_vec()) }
}

/// Typed access to a JSON object's fields, with errors that name the file,
/// the object and the key.
struct Obj<'a> {
    v: &'a Value,
    path: &'a str,
    what: &'a str,
}

impl<'a> Obj<'a> {
    fn get(&self, k: &str) -> Result<&'a Value> {
        json_get(self.v, k, self.path).map_err(|_| fmt_err(self.path, format!("{}: missing `{k}`", self.what)))
    }
    fn bad(&self, k: &str, want: &str) -> Error {
        fmt_err(self.path, format!("{}: `{k}` is not {want}", self.what))
    }
    fn u64(&self, k: &str) -> Result<u64> {
        self.get(k)?.as_u64().ok_or_else(|| self.bad(k, "a non-negative integer"))
    }
    fn usize(&self, k: &str) -> Result<usize> {
        self.u64(k).map(|x| x as usize)
    }
    fn f64(&self, k: &str) -> Result<f64> {
        self.get(k)?.as_f64().ok_or_else(|| self.bad(k, "a number"))
    }
    fn bool(&self, k: &str) -> Result<bool> {
        self.get(k)?.as_bool().ok_or_else(|| self.bad(k, "true or false"))
    }
    fn str(&self, k: &str) -> Result<&'a str> {
        self.get(k)?.as_str().ok_or_else(|| self.bad(k, "a string"))
    }
    fn sub(&self, k: &str) -> Result<Obj<'a>> {
        Ok(Obj { v: self.get(k)?, path: self.path, what: self.what })
    }
}

fn train_to_json(c: &TrainConfig) -> Value {
    let o = &c.optim;
    let method = match o.method {
        Method::Adam { beta1, beta2, eps } => json!({"name": "adam", "beta1": beta1, "beta2": beta2, "eps": eps}),
        Method::Sgd { momentum, nesterov } => json!({"name": "sgd", "momentum": momentum, "nesterov": nesterov}),
    };
    let wd = match o.weight_decay {
        WeightDecay::None => json!({"kind": "none", "rate": 0.0}),
        WeightDecay::L2(l) => json!({"kind": "l2", "rate": l}),
        WeightDecay::Decoupled(l) => json!({"kind": "decoupled", "rate": l}),
    };
    json!({
        "seed": c.seed,
        "batch": c.batch,
        "eval_every": c.eval_every,
        "eval_episodes": c.eval_episodes,
        "optimizer": {
            "method": method,
            "lr": o.lr,
            "weight_decay": wd,
            "clip_norm": o.clip_norm,
            "decay": o.decay.map(|d| json!({"gamma": d.gamma, "every": d.every})),
            "frozen": o.frozen,
        },
    })
}

fn train_from_json(v: &Value, path: &str) -> Result<TrainConfig> {
    let o = Obj { v, path, what: "metadata neuroplastic.train" };
    let opt = o.sub("optimizer")?;
    let m = opt.sub("method")?;
    let method = match m.str("name")? {
        "adam" => Method::Adam { beta1: m.f64("beta1")?, beta2: m.f64("beta2")?, eps: m.f64("eps")? },
        "sgd" => Method::Sgd { momentum: m.f64("momentum")?, nesterov: m.bool("nesterov")? },
        s => return Err(fmt_err(path, format!("unknown optimizer `{s}` (expected adam or sgd)"))),
    };
    let w = opt.sub("weight_decay")?;
    let weight_decay = match w.str("kind")? {
        "none" => WeightDecay::None,
        "l2" => WeightDecay::L2(w.f64("rate")?),
        "decoupled" => WeightDecay::Decoupled(w.f64("rate")?),
        s => return Err(fmt_err(path, format!("unknown weight decay `{s}` (expected none, l2 or decoupled)"))),
    };
    let clip_norm = match opt.get("clip_norm")? {
        Value::Null => None,
        x => Some(x.as_f64().ok_or_else(|| opt.bad("clip_norm", "a number or null"))?),
    };
    let decay = match opt.get("decay")? {
        Value::Null => None,
        x => {
            let d = Obj { v: x, path, what: "metadata neuroplastic.train, optimizer.decay" };
            Some(StepDecay { gamma: d.f64("gamma")?, every: d.u64("every")? })
        }
    };
    let frozen = opt
        .get("frozen")?
        .as_array()
        .and_then(|a| a.iter().map(|x| x.as_str().map(String::from)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| opt.bad("frozen", "a list of names"))?;
    let c = TrainConfig {
        seed: o.u64("seed")?,
        batch: o.usize("batch")?,
        eval_every: o.u64("eval_every")?,
        eval_episodes: o.usize("eval_episodes")?,
        optim: OptimConfig { method, lr: opt.f64("lr")?, weight_decay, clip_norm, decay, frozen },
    };
    c.validate()?;
    Ok(c)
}

pub(crate) fn take_u64s(f: &mut TensorFile, name: &str, len: Option<usize>) -> Result<Vec<u64>> {
    let path = f.path.clone();
    let t = f.take(name)?;
    let Data::I64(v) = t.data else {
        return Err(fmt_err(&path, format!("tensor `{name}` must have dtype I64")));
    };
    if t.shape.len() != 1 || len.is_some_and(|l| l != v.len()) {
        return Err(fmt_err(&path, format!("tensor `{name}` has shape {:?}; expected a vector", t.shape)));
    }
    v.iter()
        .map(|&x| u64::try_from(x).map_err(|_| fmt_err(&path, format!("tensor `{name}` holds a negative count {x}"))))
        .collect()
}

fn take_f64s(f: &mut TensorFile, name: &str, len: usize) -> Result<Vec<f64>> {
    let path = f.path.clone();
    let t = f.take(name)?;
    match t.data {
        Data::F64(v) if t.shape == [len] => Ok(v),
        _ => Err(fmt_err(&path, format!("tensor `{name}` must be F64 of shape ({len},)"))),
    }
}

fn take_bytes<const K: usize>(f: &mut TensorFile, name: &str) -> Result<[u8; K]> {
    let path = f.path.clone();
    let t = f.take(name)?;
    match t.data {
        Data::U8(v) if t.shape == [K] => Ok(v.try_into().expect("shape checked")),
        _ => Err(fmt_err(&path, format!("tensor `{name}` must be U8 of shape ({K},)"))),
    }
}

/// Writes a generator's exact position: `rng.seed`, `rng.stream`, `rng.word_pos`.
pub(crate) fn put_rng(f: &mut TensorFile, rng: &TaskRng) {
    f.put("rng.seed", u8_tensor(&rng.get_seed()));
    f.put("rng.stream", u8_tensor(&rng.get_stream().to_le_bytes()));
    f.put("rng.word_pos", u8_tensor(&rng.get_word_pos().to_le_bytes()));
}

/// Reads what [`put_rng`] wrote: the generator at the same position.
pub(crate) fn take_rng(f: &mut TensorFile) -> Result<TaskRng> {
    let seed: [u8; 32] = take_bytes(f, "rng.seed")?;
    let stream = u64::from_le_bytes(take_bytes(f, "rng.stream")?);
    let word_pos = u128::from_le_bytes(take_bytes(f, "rng.word_pos")?);
    let mut rng = <TaskRng as rand::SeedableRng>::from_seed(seed);
    rng.set_stream(stream);
    rng.set_word_pos(word_pos);
    Ok(rng)
}

impl TrainCheckpoint {
    /// The checkpoint as tensors and metadata.
    pub fn to_file(&self) -> Result<TensorFile> {
        let mut f = TensorFile::new();
        // The model part: same tensors and metadata keys as a model file (`docs/design.md` §5), same code.
        put_model(&mut f, &self.model)?;
        let cfg = &self.model.cfg;
        let mut shapes: BTreeMap<&str, Vec<usize>> = param_shapes(cfg).into_iter().collect::<BTreeMap<_, _>>();
        if let Some(h) = &self.model.head {
            let o = h.bias.len();
            shapes.insert(HEAD_NAMES[0], vec![o, cfg.n]);
            shapes.insert(HEAD_NAMES[1], vec![o]);
        }
        for (slot, map) in [("m", &self.optim.m), ("v", &self.optim.v)] {
            for (name, v) in map {
                let shape = shapes.get(name.as_str()).cloned().unwrap_or_else(|| vec![v.len()]);
                f.put_f32(&format!("opt.{slot}.{name}"), &shape, v.clone());
            }
        }
        f.put("opt.step", i64_tensor(&[self.optim.step]));
        f.put("train.step", i64_tensor(&[self.step]));
        put_rng(&mut f, &self.rng);
        let col = |g: fn(&LogRow) -> f64| f64_tensor(self.log.iter().map(g).collect());
        f.put("log.step", i64_tensor(&self.log.iter().map(|r| r.step).collect::<Vec<_>>()));
        f.put("log.train_loss", col(|r| r.train_loss));
        f.put("log.train_err", col(|r| r.train_err));
        f.put("log.eval_loss", col(|r| r.eval_loss));
        f.put("log.eval_err", col(|r| r.eval_err));
        f.put("log.lr", col(|r| r.lr));
        f.put("log.seconds", col(|r| r.seconds));
        f.put("train.acc", f64_tensor(self.acc.to_vec()));
        f.put("train.seconds", f64_tensor(vec![self.seconds]));
        let meta = [
            ("neuroplastic.checkpoint", VERSION.to_string()),
            ("neuroplastic.train", train_to_json(&self.config).to_string()),
            ("neuroplastic.task", self.task.clone()),
            ("neuroplastic.task.config", self.task_config.to_string()),
        ];
        f.metadata.extend(meta.into_iter().map(|(k, v)| (k.to_string(), v)));
        Ok(f)
    }

    /// Reads a checkpoint back; every missing, unknown or misshapen tensor
    /// and every bad setting is an error naming it.
    pub fn from_file(mut f: TensorFile) -> Result<Self> {
        let path = f.path.clone();
        let version = f.meta("neuroplastic.checkpoint")?;
        if version != VERSION {
            return Err(fmt_err(&path, format!("checkpoint format version {version}; this build reads {VERSION}")));
        }
        let parse = |key: &str| -> Result<Value> {
            let s = f.meta(key)?;
            serde_json::from_str(s).map_err(|e| fmt_err(&path, format!("metadata `{key}` is not valid JSON: {e}")))
        };
        let config = train_from_json(&parse("neuroplastic.train")?, &path)?;
        let task_config = parse("neuroplastic.task.config")?;
        let task = f.meta("neuroplastic.task")?.to_string();
        let model = take_model(&mut f)?;
        let mut optim = OptimState { step: take_u64s(&mut f, "opt.step", Some(1))?[0], ..Default::default() };
        let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
        for (n, v) in model.params.named() {
            sizes.insert(n, v.len());
        }
        if let Some(h) = &model.head {
            sizes.insert(HEAD_NAMES[0], h.weight.len());
            sizes.insert(HEAD_NAMES[1], h.bias.len());
        }
        for name in model_param_names(&model) {
            for (slot, map) in [("m", &mut optim.m), ("v", &mut optim.v)] {
                let key = format!("opt.{slot}.{name}");
                if let Some((_, v)) = f.take_f32_opt(&key, None)? {
                    if v.len() != sizes[name] || sizes[name] == 0 {
                        return Err(fmt_err(
                            &path,
                            format!("tensor `{key}` has {} elements; parameter `{name}` has {}", v.len(), sizes[name]),
                        ));
                    }
                    map.insert(name.to_string(), v);
                }
            }
        }
        let step = take_u64s(&mut f, "train.step", Some(1))?[0];
        let rng = take_rng(&mut f)?;
        let steps = take_u64s(&mut f, "log.step", None)?;
        let r = steps.len();
        let mut cols = Vec::new();
        for name in ["log.train_loss", "log.train_err", "log.eval_loss", "log.eval_err", "log.lr", "log.seconds"] {
            cols.push(take_f64s(&mut f, name, r)?);
        }
        let log = (0..r)
            .map(|k| LogRow {
                step: steps[k],
                episodes: steps[k] * config.batch as u64,
                train_loss: cols[0][k],
                train_err: cols[1][k],
                eval_loss: cols[2][k],
                eval_err: cols[3][k],
                lr: cols[4][k],
                seconds: cols[5][k],
            })
            .collect();
        let acc: [f64; 3] = take_f64s(&mut f, "train.acc", 3)?.try_into().expect("length checked");
        let seconds = take_f64s(&mut f, "train.seconds", 1)?[0];
        f.finish("checkpoint")?;
        Ok(TrainCheckpoint { task, task_config, model, config, optim, step, rng, log, acc, seconds })
    }

    /// Reads a checkpoint file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(TensorFile::read(path)?)
    }

    /// Writes the checkpoint atomically (temporary file, then rename): an
    /// existing file at `path` is replaced whole or left as it was.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        self.to_file()?.write(path)
    }
}
