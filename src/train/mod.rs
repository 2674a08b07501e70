//! The trainer: optimizers (Adam, SGD), gradient clipping, learning-rate
//! schedules and frozen parameters ([`Optimizer`]), the training loop with
//! periodic evaluation ([`Trainer`]), and checkpoints that resume a run
//! exactly ([`TrainCheckpoint`]).
//!
//! ## Randomness
//!
//! Everything random comes from ChaCha8 generators derived from the run's
//! seed, each on its own stream, so that one kind of draw never shifts
//! another:
//!
//! | stream | draws | generator |
//! |--------|-------|-----------|
//! | 0 | training episodes, in order | [`episode_rng`], saved in checkpoints |
//! | 1 | evaluation episodes; the evaluation at update `s` starts at word `s·2³²` | [`eval_rng`] |
//! | 2 | initial parameters | [`init_rng`] |
//!
//! A checkpoint stores the training generator's exact position, so a resumed
//! run draws the very episodes the uninterrupted run would have drawn.

mod checkpoint;
mod optim;
mod trainer;

pub use checkpoint::TrainCheckpoint;
pub use optim::{
    HEAD_NAMES, Method, OptimConfig, OptimState, Optimizer, StepDecay, StepStats, WeightDecay, model_param_names,
};
pub use trainer::{Event, LogRow, StepReport, TrainConfig, Trainer};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::error::{Error, Result};

/// The generator tasks draw episodes from.
pub type TaskRng = ChaCha8Rng;

fn stream(seed: u64, s: u64) -> TaskRng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(s);
    r
}

/// The generator of training episodes of a run with this seed (stream 0).
pub fn episode_rng(seed: u64) -> TaskRng {
    stream(seed, 0)
}

/// The generator of the evaluation episodes drawn after `step` updates
/// (stream 1, starting at word `step · 2³²`): fresh episodes at every
/// evaluation, the same ones in a resumed run.
pub fn eval_rng(seed: u64, step: u64) -> TaskRng {
    let mut r = stream(seed, 1);
    r.set_word_pos((step as u128) << 32);
    r
}

/// The generator of initial parameters (stream 2).
pub fn init_rng(seed: u64) -> TaskRng {
    stream(seed, 2)
}

/// `v[key]`, or an error naming the key and the file.
pub(crate) fn json_get<'a>(v: &'a Value, key: &str, path: &str) -> Result<&'a Value> {
    v.get(key).ok_or_else(|| Error::Format { path: path.into(), message: format!("missing setting `{key}`") })
}
