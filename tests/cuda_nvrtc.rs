//! NVRTC compile check, on every machine (no GPU needed): every kernel of
//! `kernels/*.cu` compiles for `compute_80` (PTX) and for `sm_90` (a cubin,
//! through NVRTC's ptxas with `--ptxas-options=-v`), with no spills and within
//! the register budget below. NVRTC comes from PyPI
//! (`nvidia-cuda-nvrtc-cu12==12.8.93`, pinned to cudarc's `cuda-12080`);
//! `.ci/run` installs it and sets `NEUROPLASTIC_REQUIRE_NVRTC=1`, which turns
//! a missing library into a failure. Elsewhere a missing library is a skip
//! with a message.
#![cfg(feature = "cuda")]

use neuroplastic::cuda;

/// Registers per thread a kernel may use. Every kernel runs 256-thread
/// blocks; at 96 registers two such blocks (16 warps) still fit in one SM's
/// 64 K registers, enough to keep the trace streams in flight. The trace pass
/// of the backward step holds a column tile's δα and the recomputed trace
/// in registers; everything else is far below.
fn budget(kernel: &str) -> u32 {
    match kernel {
        "plastic_bwd_f32" => 96,
        _ => 64,
    }
}

/// Whether NVRTC is present; panics (in CI) or says why it skips.
fn nvrtc_or_skip() -> bool {
    if cuda::nvrtc_available() {
        return true;
    }
    if std::env::var("NEUROPLASTIC_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
        panic!(
            "NEUROPLASTIC_REQUIRE_NVRTC=1 but libnvrtc.so.12 cannot be loaded: `.ci/run` installs nvidia-cuda-nvrtc-cu12==12.8.93 and puts it on LD_LIBRARY_PATH"
        );
    }
    eprintln!(
        "skipping: libnvrtc.so.12 not found (pip install nvidia-cuda-nvrtc-cu12==12.8.93 and add its nvidia/cuda_nvrtc/lib to LD_LIBRARY_PATH, or run .ci/run)"
    );
    false
}

#[test]
fn every_kernel_compiles_for_compute_80() {
    if !nvrtc_or_skip() {
        return;
    }
    let c = cuda::nvrtc_compile("compute_80", &[]).unwrap();
    let ptx = String::from_utf8_lossy(&c.image);
    for k in cuda::KERNELS {
        assert!(ptx.contains(&format!(".entry {k}(")), "{k} is missing from the PTX");
    }
    assert!(!c.log.contains("warning"), "NVRTC warnings:\n{}", c.log);
}

/// One kernel's line of the ptxas report.
#[derive(Debug)]
struct Report {
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
    stack: u32,
}

/// Parses `--ptxas-options=-v` output: per entry function, its stack frame,
/// spills and registers.
fn parse(log: &str) -> Vec<(String, Report)> {
    let num = |s: &str, before: &str| -> u32 {
        let head = &s[..s.find(before).unwrap_or_else(|| panic!("no '{before}' in '{s}'"))];
        head.split_whitespace()
            .last()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no number before '{before}' in '{s}'"))
    };
    let mut out: Vec<(String, Report)> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap().to_string();
            out.push((
                name,
                Report { registers: u32::MAX, spill_stores: u32::MAX, spill_loads: u32::MAX, stack: u32::MAX },
            ));
        } else if let Some((_, r)) = out.last_mut() {
            if line.contains("spill stores") {
                r.stack = num(line, "bytes stack frame");
                r.spill_stores = num(line, "bytes spill stores");
                r.spill_loads = num(line, "bytes spill loads");
            } else if line.contains("Used") && line.contains("registers") {
                r.registers = num(line, "registers");
            }
        }
    }
    out
}

#[test]
fn every_kernel_assembles_for_sm_90_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    let c = cuda::nvrtc_compile("sm_90", &["--ptxas-options=-v"]).unwrap();
    assert!(c.image.starts_with(b"\x7fELF"), "the sm_90 image is not a cubin");
    let reports = parse(&c.log);
    let mut problems = Vec::new();
    for k in cuda::KERNELS {
        let Some((_, r)) = reports.iter().find(|(n, _)| n == k) else {
            problems.push(format!("{k}: not in the ptxas report"));
            continue;
        };
        eprintln!("{k}: {r:?}");
        if r.spill_stores != 0 || r.spill_loads != 0 || r.stack != 0 {
            problems.push(format!("{k} spills: {r:?}"));
        }
        if r.registers > budget(k) {
            problems.push(format!("{k} uses {} registers, budget {}", r.registers, budget(k)));
        }
    }
    assert!(problems.is_empty(), "{}\nptxas log:\n{}", problems.join("\n"), c.log);
}

#[test]
fn a_compile_error_is_an_error_with_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    // An architecture NVRTC 12.8 does not know: an error value, not a panic.
    let e = cuda::nvrtc_compile("compute_10", &[]).unwrap_err().to_string();
    assert!(e.contains("NVRTC failed to compile") && e.contains("compute_10"), "{e}");
}

#[test]
fn a_missing_gpu_is_an_error_not_a_panic() {
    match cuda::Gpu::new(0) {
        Ok(g) => eprintln!("found {} ({})", g.name(), g.arch()),
        Err(e) => {
            let e = e.to_string();
            eprintln!("no GPU here: {e}");
            assert!(e.starts_with("cuda:0 backend unavailable"), "{e}");
            assert!(e.contains("libcuda") || e.contains("libnvrtc") || e.contains("device"), "{e}");
        }
    }
    // A device that no machine has.
    let e = cuda::Gpu::new(1 << 20).err().expect("no machine has 2^20 GPUs").to_string();
    assert!(e.contains("cuda:1048576 backend unavailable"), "{e}");
}
