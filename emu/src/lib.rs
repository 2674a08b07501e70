//! Test support for `neuroplastic`: the CUDA kernels of `kernels/*.cu`
//! compiled as C++ and run on the CPU. Each block runs alone; its threads are
//! fibers that switch only at `__syncthreads` and at warp shuffles, resumed in
//! an order drawn from a seeded generator, so that a missing barrier or a
//! shuffle with a wrong mask gives a wrong answer (or an error) for some seed.
//! What this cannot see is listed in `kernels/README.md`, "CPU emulation".
//!
//! The argument block of every kernel is `neuroplastic::cuda::NpArgs`
//! (`#[repr(C)]`, mirroring `struct NpArgs` in `kernels/common.cuh`); this
//! crate takes it as an opaque pointer so that it does not depend on the
//! main crate.

use std::ffi::{CStr, c_char, c_void};

unsafe extern "C" {
    fn np_emu_launch(
        kernel: i32,
        faulty: i32,
        gx: u32,
        gy: u32,
        threads: u32,
        args: *const c_void,
        seed: u64,
        err: *mut c_char,
        cap: usize,
    ) -> i32;
}

/// The kernels, in the order of `NP_KERNELS` in `cpp/runtime.cpp`: the
/// driver's list (`kernels/names.rs`).
pub const KERNELS: [&str; 8] = include!("../../kernels/names.rs");

/// The emulation's own self-test kernel, launched by name after [`KERNELS`]
/// (lanes in the bit mask `nblk` run `__shfl_xor_sync(flags, h_src[lane],
/// mode)`; every lane writes its value to `h_dst[lane]`).
pub const SELFTEST: &str = "emu_selftest_shuffle";

/// Runs kernel `name` over a grid of `grid.0 × grid.1` blocks of `threads`
/// threads. `faulty` selects the build with one barrier removed (see
/// `build.rs`). Errors: an unknown kernel, a bad block size, a deadlock, or a
/// warp shuffle whose mask names an exited lane.
///
/// # Safety
/// `args` must point to a valid `NpArgs` whose pointers address host memory
/// large enough for the launch's shapes, as a GPU launch would need device
/// memory.
pub unsafe fn launch(
    name: &str,
    faulty: bool,
    grid: (u32, u32),
    threads: u32,
    args: *const c_void,
    seed: u64,
) -> Result<(), String> {
    let k =
        KERNELS.iter().chain([&SELFTEST]).position(|&k| k == name).ok_or_else(|| format!("no kernel named {name}"))?;
    let mut err = [0 as c_char; 256];
    // SAFETY: forwarded to the caller; `err` is writable for its length.
    let rc = unsafe {
        np_emu_launch(k as i32, faulty as i32, grid.0, grid.1, threads, args, seed, err.as_mut_ptr(), err.len())
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: the runtime writes a NUL-terminated message into `err`.
        Err(format!("{name}: {}", unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy()))
    }
}
