//! Test support shared by the test suite, the command line and every
//! backend's tests (feature `testing`, on with the default `cli` feature):
//!
//! - [`backend`]: one test body that runs any backend (an [`crate::Engine`]
//!   on a device, or a closure such as a CPU emulation of GPU kernels)
//!   against the f64 reference on a list of cases and reports the first
//!   mismatches and the largest error; `tests/cpu_vs_reference.rs` calls it
//!   for the CPU, and a CUDA backend's test calls it the same way
//!   (`Device::Cuda(0)` without a GPU is a [`backend::Skip`] that says why);
//! - [`gradcheck`]: the model loss in f64 and its central finite
//!   differences, which `neuroplastic gradcheck` checks every backend with.
//!
//! It is a feature of the library rather than a `tests/common` module
//! because the command line (a user-facing program) needs the same numerics
//! as the tests, and a backend's own crate-internal tests can reach it too.
//! It needs no dependency beyond the lean library's.

pub mod backend;
pub mod gradcheck;
