//! The CPU backward pass (twin of the reference's `plastic_bwd`, per row of
//! its `plastic_step_bwd`), by role:
//!
//! - `rows.rs`: the SIMD row kernels of one step's adjoint;
//! - `tasks.rs`: the block tasks of one parallel pass and their dispatch;
//! - `driver.rs`: the checkpointed driver (segments, time sweep, work
//!   between passes, episode-parallel split);
//! - `reduce.rs`: the parameter gradients reduced after the sweep.
//!
//! Parameter gradients are accumulated with `+=` into buffers zeroed once
//! per call; activation gradients are assigned.

mod driver;
mod reduce;
mod rows;
mod tasks;

pub(crate) use driver::run;
