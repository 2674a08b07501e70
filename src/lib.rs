//! # neuroplastic
//!
//! Hand-optimized kernels for the layers that make networks learn within
//! their own lifetime: differentiable Hebbian plasticity (Miconi, Clune &
//! Stanley 2018), neuromodulated plasticity ("backpropamine", with and
//! without eligibility traces, Miconi et al. 2019), with **analytic** forward
//! and backward passes over whole episodes for batches of episodes.
//!
//! Three implementations sit behind one API ([`Engine`]): an f64 scalar
//! [`reference`](mod@reference) (the oracle: plain loops, the equations in its docs), the
//! [`cpu`] backend (f32, explicit SIMD through `wide`, threads through
//! `rayon`, fused passes, checkpointed back-propagation), and the [`cuda`]
//! backend ([`Device::Cuda`]: fused kernels compiled by NVRTC at run time,
//! feature `cuda`; an error that says what to install where the GPU, driver
//! or NVRTC is missing).
//!
//! ## Legend of dimensions
//!
//! | name | meaning |
//! |------|---------|
//! | `B`  | batch: independent episodes, each with its own state |
//! | `T`  | steps of an episode |
//! | `N`  | post-synaptic neurons (the layer's output size) |
//! | `I`  | pre-synaptic size: `N` for a recurrent layer, the input size for a feed-forward one |
//! | `X`  | external input features per step |
//! | `K`  | neuromodulator outputs |
//!
//! Weights are `[post][pre]`, row-major (`W` is `(N, I)`, like PyTorch's
//! `nn.Linear.weight`); a batch of traces is `(B, N, I)`; sequences are
//! `(B, T, features)`.
//!
//! ## One step (`docs/design.md` §2)
//!
//! ```text
//! a_j = b_j + u_j + Σ_i (W_ji + α_ji · H_ji) · x_i        u = U·x_ext (or x_ext), x = h_{t−1} or the input
//! y_j = σ(a_j)
//! ```
//! followed by the trace update of the [`Rule`]. Gradients: see `docs/backward.md`.
//!
//! ## Example
//!
//! ```
//! use neuroplastic::{Device, Engine, LayerConfig, Options, Params, Rule, Seq};
//!
//! let (n, x, b, t) = (8, 3, 2, 5);
//! let cfg = LayerConfig::recurrent(Rule::Hebb, n, x);
//! let mut params = Params::<f32>::zeros(&cfg);
//! params.w.iter_mut().enumerate().for_each(|(k, w)| *w = ((k % 7) as f32 - 3.0) * 0.05);
//! params.alpha.iter_mut().for_each(|a| *a = 0.1);
//! params.u.iter_mut().for_each(|u| *u = 0.3);
//! params.eta[0] = 0.1;
//! let inputs = vec![1.0f32; b * t * x];
//!
//! let mut engine = Engine::new(cfg, Device::Cpu, Options::default())?;
//! let fwd = engine.forward(&params, Seq::new(&inputs, b, t), None)?;
//! // Loss = Σ y²  ⇒  dL/dy = 2y.
//! let dy: Vec<f32> = fwd.y.iter().map(|y| 2.0 * y).collect();
//! let grads = engine.backward(&params, Seq::new(&inputs, b, t), &fwd, &dy, None)?;
//! assert_eq!(grads.params.w.len(), n * n);
//! # Ok::<(), neuroplastic::Error>(())
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod cpu;
pub mod cuda;
pub mod engine;
pub mod error;
#[cfg(feature = "io")]
pub mod io;
pub mod limits;
pub mod meta;
pub mod model;
pub mod options;
pub mod overflow;
pub mod params;
pub mod reference;
#[cfg(feature = "train")]
pub mod rl;
pub mod step;
pub mod stream;
#[cfg(feature = "train")]
pub mod tasks;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "train")]
pub mod train;

pub use config::{
    Activation, AlphaShape, EtaMode, InputMap, LayerConfig, ModActivation, ModulatorConfig, Rule, Topology,
};
pub use engine::{Device, Engine, Forward};
pub use error::{Error, Result, Shape};
pub use model::{Episode, Head, Model, ModelGrads};
pub use options::{Checkpoint, Options, Truncation};
pub use params::{Gradients, Params, Seq, State, param_shapes, state_shapes};
pub use step::{Stepped, SteppedF64, Stepper, StepperF64, StepperOwned};
pub use stream::Stream;

// The README's Rust example runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The SIMD instruction sets this build of the crate was compiled with
/// (e.g. `["avx2", "fma"]`). The CPU backend's speed depends on them: build
/// with `-C target-cpu=native` (see README) to get the fast path.
pub fn simd_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(target_feature = "sse2") {
        f.push("sse2");
    }
    if cfg!(target_feature = "sse4.1") {
        f.push("sse4.1");
    }
    if cfg!(target_feature = "avx") {
        f.push("avx");
    }
    if cfg!(target_feature = "avx2") {
        f.push("avx2");
    }
    if cfg!(target_feature = "fma") {
        f.push("fma");
    }
    if cfg!(target_feature = "avx512f") {
        f.push("avx512f");
    }
    if cfg!(target_feature = "neon") {
        f.push("neon");
    }
    f
}
