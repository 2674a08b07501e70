// Warns when the crate is built without the SIMD extensions its CPU kernels
// are tuned for: `wide` picks its vector width at compile time, so a build for
// a generic x86-64 target runs the kernels on 128-bit SSE2 lanes, without FMA.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch != "x86_64" {
        return;
    }
    let feats = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let has = |f: &str| feats.split(',').any(|x| x == f);
    if !(has("avx2") && has("fma")) {
        println!(
            "cargo:warning=neuroplastic: built without AVX2/FMA, the CPU kernels use 128-bit SSE lanes and run about 2x slower; build with RUSTFLAGS=\"-C target-cpu=native\" (see README, \"Getting the fast path\")"
        );
    }
}
