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

pub(crate) mod checkpoint;
mod optim;
mod trainer;

pub use checkpoint::TrainCheckpoint;
pub use optim::{
    HEAD_NAMES, Method, OptimConfig, OptimState, Optimizer, StepDecay, StepStats, WeightDecay, model_param_names,
};
pub use trainer::{Event, LogRow, StepReport, TrainConfig, Trainer};

// The generators are defined next to the tasks that draw from them (so that
// `tasks` does not import `train`, which imports `tasks`); the trainer and its
// callers find them here too.
pub(crate) use crate::io::json_get;
pub use crate::tasks::{TaskRng, episode_rng, eval_rng, init_rng};
