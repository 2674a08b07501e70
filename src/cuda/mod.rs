//! The CUDA backend: fused kernels in `kernels/*.cu`, compiled at run time by
//! NVRTC (through `cudarc`, loaded dynamically, feature `cuda`), driven step
//! by step by [`driver`]. It mirrors [`crate::cpu`] and is tested against
//! the f64 [`crate::reference`]: on machines without a GPU through a CPU
//! emulation of the same kernel sources (`tests/cuda_emu.rs`), on a GPU by
//! `scripts/gpu-check.sh`. The kernels, their launch configuration and the
//! emulation's limits are described in `kernels/README.md`.

mod args;
pub mod driver;
#[cfg(feature = "cuda")]
mod gpu;

pub use args::{CHUNK, NpArgs, ROWS, THREADS};
pub use driver::{DevSaved, Launcher, plastic_bwd, plastic_fwd};
#[cfg(feature = "cuda")]
pub use gpu::{Compiled, Cuda, Gpu, NVRTC_PACKAGE, Saved, nvrtc_available, nvrtc_compile};

/// The kernel sources, embedded in the binary, in the order NVRTC sees them
/// (the shared header first; the `.cu` files include it only when compiled
/// on their own).
pub const SOURCES: [(&str, &str); 4] = [
    ("common.cuh", include_str!("../../kernels/common.cuh")),
    ("plastic_fwd.cu", include_str!("../../kernels/plastic_fwd.cu")),
    ("plastic_bwd.cu", include_str!("../../kernels/plastic_bwd.cu")),
    ("plastic_grad.cu", include_str!("../../kernels/plastic_grad.cu")),
];

/// Every kernel the driver launches (`kernels/names.rs`, the list the
/// emulation shares).
pub const KERNELS: [&str; 8] = include!("../../kernels/names.rs");

/// The one program NVRTC compiles: the sources of [`SOURCES`], concatenated.
pub fn program() -> String {
    let mut s = String::new();
    for (name, text) in SOURCES {
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}
