//! Reinforcement learning with plastic and neuromodulated recurrent networks
//! (Miconi et al., ICLR 2019, "Backpropamine", §4): an agent whose action at
//! step `t` changes its input at step `t + 1`, run one step at a time through
//! [`crate::Stepper`] and trained by batched advantage actor-critic.
//!
//! - [`env`](mod@env): the environments (cue-reward association, grid maze);
//! - [`a2c`]: the heads and the A2C loss with their gradients;
//! - [`agent`]: the agent, its rollouts and its update;
//! - [`run`]: a seeded training run with checkpoints, and the statistics of
//!   the comparison across seeds.
//!
//! ## Randomness
//!
//! A run with seed `s` draws its initial parameters from
//! [`crate::train::init_rng`]`(s)`, its environments (cues, targets, reward
//! places, teleports) from [`crate::train::episode_rng`]`(s)` and its actions
//! from [`run::action_rng`]`(s)` (stream 3 of the same ChaCha8 generator), one
//! episode after the other in batch order. The engine's results do not
//! depend on the thread count, so neither does a run.

pub mod a2c;
pub mod agent;
pub mod env;
pub mod run;

pub use a2c::{A2cConfig, A2cLoss};
pub use agent::{Agent, Core, Rollout, Variant};
pub use env::{CueReward, CueRewardConfig, Env, Maze, MazeConfig};
pub use run::{RunConfig, RunState, TaskConfig};
