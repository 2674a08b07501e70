// Compiles the CUDA kernels of ../kernels as C++ for the emulation, twice:
// once as they are, once with one barrier removed (NP_TEST_DROP_BARRIER) and
// every kernel renamed `faulty_*`, for the test that shows the emulation
// catches a missing __syncthreads.
const KERNELS: [&str; 8] = include!("../kernels/names.rs");

fn base() -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true).include("cpp").include("../kernels").opt_level(2).flag_if_supported("-std=c++14");
    // The kernels' f32 arithmetic must not be reassociated or fused
    // differently from one build to the next.
    b.flag_if_supported("-ffp-contract=off");
    b.flag_if_supported("-Wno-unused-parameter");
    b
}

fn main() {
    for f in ["cpp/emu.h", "cpp/runtime.cpp", "cpp/kernels.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for f in ["names.rs", "common.cuh", "plastic_fwd.cu", "plastic_bwd.cu", "plastic_grad.cu"] {
        println!("cargo:rerun-if-changed=../kernels/{f}");
    }
    base().file("cpp/runtime.cpp").file("cpp/kernels.cpp").compile("np_emu");
    let mut faulty = base();
    faulty.define("NP_TEST_DROP_BARRIER", None);
    for k in KERNELS {
        faulty.define(k, Some(format!("faulty_{k}").as_str()));
    }
    faulty.file("cpp/kernels.cpp").compile("np_emu_faulty");
}
