//! The cudarc side of the CUDA backend: library detection, NVRTC
//! compilation (cached per process and architecture), the context and the
//! [`Launcher`] that runs the driver's launches on a GPU.
//!
//! cudarc loads `libcuda` and `libnvrtc` at run time and *panics* when one is
//! missing, and `CudaContext::new` panics without a driver; so every entry
//! point here first asks `is_culib_present` for both, and every failure
//! after that (no device, out of memory, a compile error with its log, a
//! launch failure) becomes an [`Error::Unavailable`] that says what is
//! missing and how to get it.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::args::NpArgs;
use super::driver::{DevSaved, Launcher};
use crate::error::{Error, Result};

// SAFETY: `NpArgs` is `#[repr(C)]`, plain old data, laid out like the C
// struct the kernels take by value.
unsafe impl DeviceRepr for NpArgs {}

/// What the forward pass keeps on the GPU for the backward pass.
pub type Saved = DevSaved<CudaSlice<f32>>;

/// The NVRTC version this build of cudarc is pinned to (feature `cuda-12080`),
/// and the PyPI package that ships a matching `libnvrtc.so.12`.
pub const NVRTC_PACKAGE: &str = "nvidia-cuda-nvrtc-cu12==12.8.93";

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable { backend: "cuda".into(), reason: reason.into() }
}

fn nvrtc_missing() -> String {
    format!(
        "the NVRTC library (libnvrtc.so.12) was not found. Install the CUDA toolkit 12.x, or `pip install {NVRTC_PACKAGE}` and add its nvidia/cuda_nvrtc/lib folder to LD_LIBRARY_PATH"
    )
}

/// Whether NVRTC (`libnvrtc`) can be loaded. No GPU is needed to compile.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn driver_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The output of one NVRTC compilation.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// PTX text (for a `compute_XY` target, NUL-terminated) or a cubin (`sm_XY`).
    pub image: Vec<u8>,
    /// The compiler's log: warnings, and with `--ptxas-options=-v` the
    /// register and spill report of every kernel.
    pub log: String,
}

/// Compiles every kernel ([`super::program`]) for `arch` with NVRTC:
/// `compute_XY` gives PTX, `sm_XY` a cubin (assembled by NVRTC's own ptxas).
/// `extra` options are appended (e.g. `--ptxas-options=-v`). Needs no GPU.
pub fn nvrtc_compile(arch: &str, extra: &[&str]) -> Result<Compiled> {
    use cudarc::nvrtc::{result, sys};
    if !nvrtc_available() {
        return Err(unavailable(nvrtc_missing()));
    }
    let src = CString::new(super::program()).map_err(|_| unavailable("the kernel sources contain a NUL byte"))?;
    let name = CString::new("neuroplastic.cu").unwrap_or_default();
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| unavailable(format!("NVRTC could not create the program: {e:?}")))?;
    // No FMA contraction: the kernels are memory-bound, and without it the
    // backward's recomputation of a trace (inlined in another kernel) rounds
    // exactly as the forward did, as in the emulation (built with
    // -ffp-contract=off).
    let mut opts: Vec<String> = vec![format!("--gpu-architecture={arch}"), "--std=c++14".into(), "--fmad=false".into()];
    opts.extend(extra.iter().map(|s| s.to_string()));
    let log = |prog| -> String {
        // SAFETY: `prog` is a live program.
        match unsafe { result::get_program_log(prog) } {
            // SAFETY: NVRTC's log is NUL-terminated.
            Ok(raw) => unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().into_owned(),
            Err(e) => format!("(no log: {e:?})"),
        }
    };
    // SAFETY: `prog` was created above and is destroyed once, below.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let text = log(prog);
    let out = match compiled {
        Err(e) => Err(unavailable(format!(
            "NVRTC failed to compile the kernels for {arch} ({e:?}), options {opts:?}:\n{text}"
        ))),
        Ok(()) if arch.starts_with("sm_") => {
            let mut len = 0usize;
            // SAFETY: live program; the buffer has the size NVRTC reported.
            let image = unsafe {
                sys::nvrtcGetCUBINSize(prog, &mut len).result().and_then(|_| {
                    let mut buf = vec![0u8; len];
                    sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char).result().map(|_| buf)
                })
            };
            image.map_err(|e| unavailable(format!("NVRTC could not return the cubin: {e:?}")))
        }
        Ok(()) => {
            // SAFETY: live program.
            let ptx = unsafe { result::get_ptx(prog) };
            ptx.map(|v| v.into_iter().map(|c| c as u8).collect())
                .map_err(|e| unavailable(format!("NVRTC could not return the PTX: {e:?}")))
        }
    };
    // SAFETY: destroyed once.
    let _ = unsafe { result::destroy_program(prog) };
    Ok(Compiled { image: out?, log: text })
}

/// The cubins compiled in this process, per architecture: a second engine on
/// the same kind of GPU loads the module without compiling again.
fn cached_cubin(arch: &str) -> Result<Arc<Vec<u8>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Vec<u8>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(arch) {
        return Ok(c.clone());
    }
    let image = Arc::new(nvrtc_compile(arch, &[])?.image);
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(arch.to_string(), image.clone());
    Ok(image)
}

/// A GPU with the kernels loaded: the [`Launcher`] of the CUDA backend.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    name: String,
    arch: String,
}

impl Gpu {
    /// Opens GPU `ordinal`, compiles the kernels for its compute capability
    /// (once per process and architecture) and loads them. Fails, without a
    /// panic, when the driver, NVRTC or the device is missing; the error
    /// names the device (`cuda:K`).
    pub fn new(ordinal: usize) -> Result<Gpu> {
        Self::open(ordinal).map_err(|e| match e {
            Error::Unavailable { reason, .. } => Error::Unavailable { backend: format!("cuda:{ordinal}"), reason },
            e => e,
        })
    }

    fn open(ordinal: usize) -> Result<Gpu> {
        if !driver_available() {
            return Err(unavailable(
                "the NVIDIA driver library (libcuda.so.1) was not found: this machine has no NVIDIA driver. Install the driver for your GPU, or use the CPU backend (Device::Cpu, --device cpu)",
            ));
        }
        if !nvrtc_available() {
            return Err(unavailable(nvrtc_missing()));
        }
        let drv = |what: &str, e: cudarc::driver::DriverError| unavailable(format!("{what}: {e:?}"));
        let count = CudaContext::device_count().map_err(|e| {
            drv("the CUDA driver could not count the devices (is the driver loaded and new enough for CUDA 12.8?)", e)
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!(
                "there is no CUDA device {ordinal}: this machine has {count} (ordinals start at 0)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| drv(&format!("could not open CUDA device {ordinal}"), e))?;
        // SAFETY: every buffer of this Gpu is allocated, used and freed on its
        // one stream, in order, so cudarc's per-use events (one record per
        // pointer taken, a few µs per launch) synchronise nothing.
        unsafe { ctx.disable_event_tracking() };
        let name = ctx.name().unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let (major, minor) = ctx.compute_capability().map_err(|e| drv("could not read the compute capability", e))?;
        let arch = format!("sm_{major}{minor}");
        let image = cached_cubin(&arch)?;
        let module = ctx
            .load_module(Ptx::from_binary(image.as_ref().clone()))
            .map_err(|e| drv(&format!("could not load the kernels compiled for {arch} on {name}"), e))?;
        let mut funcs = HashMap::new();
        for k in super::KERNELS {
            let f = module.load_function(k).map_err(|e| drv(&format!("kernel {k} is missing from the module"), e))?;
            funcs.insert(k, f);
        }
        let stream = ctx.default_stream();
        Ok(Gpu { ctx, stream, funcs, name, arch })
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture the kernels were compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Waits until every launch so far has finished (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| unavailable(format!("a kernel failed: {e:?}")))
    }

    /// Device-to-device copy bandwidth in bytes per second: the best of a
    /// few copies of `bytes` (read + write counted), the bar for the kernels.
    pub fn copy_bandwidth(&mut self, bytes: usize) -> Result<f64> {
        let len = bytes / 4;
        let src = self.alloc(len)?;
        let mut dst = self.alloc(len)?;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            self.synchronize()?;
            let t0 = std::time::Instant::now();
            self.stream.memcpy_dtod(&src, &mut dst).map_err(|e| unavailable(format!("copy failed: {e:?}")))?;
            self.synchronize()?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        Ok(2.0 * (len * 4) as f64 / best)
    }

    fn oom(&self, len: usize, e: cudarc::driver::DriverError) -> Error {
        let free = self.ctx.mem_get_info().map(|(f, _)| f).unwrap_or(0);
        unavailable(format!(
            "could not allocate {} MiB on {} ({e:?}; {} MiB free): use a smaller batch, or a longer checkpoint interval",
            (4 * len) >> 20,
            self.name,
            free >> 20
        ))
    }
}

impl Launcher for Gpu {
    type Buf = CudaSlice<f32>;

    fn alloc(&mut self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| self.oom(len, e))
    }

    fn upload(&mut self, data: &[f32]) -> Result<CudaSlice<f32>> {
        if data.is_empty() {
            return self.alloc(0);
        }
        self.stream.clone_htod(data).map_err(|e| self.oom(data.len(), e))
    }

    fn download(&mut self, buf: &CudaSlice<f32>, len: usize) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(&buf.slice(..len)).map_err(|e| {
            unavailable(format!("copying {len} values from {} failed (a kernel may have failed): {e:?}", self.name))
        })
    }

    fn addr(&mut self, buf: &CudaSlice<f32>) -> u64 {
        // Every launch runs on this one stream, so the pointer needs no
        // further synchronisation: the guard is dropped at once.
        let (ptr, _guard) = buf.device_ptr(&self.stream);
        ptr
    }

    fn launch(&mut self, kernel: &'static str, grid: (u32, u32), threads: u32, args: &NpArgs) -> Result<()> {
        let f = self.funcs.get(kernel).ok_or_else(|| unavailable(format!("no kernel named {kernel}")))?;
        let cfg = LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.stream.launch_builder(f);
        b.arg(args);
        // SAFETY: the kernel takes one `NpArgs` by value; every address in it
        // is a live buffer of this context sized by the driver for the
        // launch's shapes.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| unavailable(format!("launching {kernel} on {} failed: {e:?}", self.name)))
    }
}

/// The CUDA backend of an [`crate::Engine`]: a [`Gpu`] and the driver's two
/// operations on it (the same names and arguments as [`crate::cpu::Cpu`]).
pub struct Cuda {
    gpu: Gpu,
}

impl Cuda {
    /// Opens GPU `ordinal` for an engine with options `opts`.
    pub fn new(ordinal: usize, opts: &crate::options::Options) -> Result<Cuda> {
        opts.validate()?;
        Ok(Cuda { gpu: Gpu::new(ordinal)? })
    }

    /// The GPU.
    pub fn gpu(&mut self) -> &mut Gpu {
        &mut self.gpu
    }

    /// [`super::plastic_fwd`] on this GPU.
    pub fn plastic_fwd(
        &mut self,
        cfg: &crate::config::LayerConfig,
        params: &crate::params::Params<f32>,
        inputs: crate::params::Seq<'_, f32>,
        init: Option<&crate::params::State<f32>>,
        opts: &crate::options::Options,
    ) -> Result<(Vec<f32>, crate::params::State<f32>, Saved)> {
        super::plastic_fwd(&mut self.gpu, cfg, params, inputs, init, opts)
    }

    /// [`super::plastic_bwd`] on this GPU.
    #[allow(clippy::too_many_arguments)]
    pub fn plastic_bwd(
        &mut self,
        cfg: &crate::config::LayerConfig,
        params: &crate::params::Params<f32>,
        inputs: crate::params::Seq<'_, f32>,
        saved: &Saved,
        dy: &[f32],
        dlast: Option<&crate::params::State<f32>>,
        opts: &crate::options::Options,
    ) -> Result<crate::params::Gradients<f32>> {
        super::plastic_bwd(&mut self.gpu, cfg, params, inputs, saved, dy, dlast, opts)
    }
}
