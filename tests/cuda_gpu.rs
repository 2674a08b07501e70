//! The CUDA backend on a real GPU (`Device::Cuda(0)`): skipped, with the
//! reason, on machines without one (CI); run by `scripts/gpu-check.sh`.
//! The shared test body holds every tensor to the reference at relative
//! 1e-4 (plus the problem's own f32 sensitivity); larger episodes are
//! compared with the CPU backend.
#![cfg(feature = "cuda")]

use neuroplastic::testing::backend::{self, Case, Skip, check_device};
use neuroplastic::*;

/// Skips with the reason, unless `NEUROPLASTIC_REQUIRE_GPU=1` (set by
/// `scripts/gpu-check.sh`), where a missing GPU is a failure.
fn skip(why: &str) {
    if std::env::var("NEUROPLASTIC_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("NEUROPLASTIC_REQUIRE_GPU=1 but cuda:0 cannot run: {why}");
    }
    eprintln!("skipping cuda:0: {why}");
}

fn run(cases: &[Case]) {
    match check_device(Device::Cuda(0), cases) {
        Err(Skip(why)) => skip(&why),
        Ok(report) => {
            println!("{}", report.summary());
            assert!(report.ok(), "{}", report.summary());
            assert_eq!(report.passed, cases.len());
        }
    }
}

#[test]
fn every_layer_variant_on_the_gpu() {
    run(&backend::layer_variant_cases());
}

#[test]
fn every_modulator_variant_on_the_gpu() {
    run(&backend::modulator_cases());
}

#[test]
fn every_truncation_on_the_gpu() {
    run(&backend::truncation_cases());
}

/// Bench-sized episodes (B = 32, N = 256, T = 30): the GPU against the CPU
/// backend, every output and gradient within 1e-3 of the tensor's largest
/// magnitude.
#[test]
fn bench_sized_episodes_match_the_cpu() {
    if let Err(e) = Engine::new(LayerConfig::recurrent(Rule::Hebb, 4, 4), Device::Cuda(0), Options::default()) {
        return skip(&e.to_string());
    }
    for rule in Rule::ALL {
        let (n, b, t) = (256, 32, 30);
        let mut cfg = LayerConfig::recurrent(rule, n, 17);
        cfg.clip = 2.0;
        let mut rng = backend::Lcg(rule as u64 + 1);
        let p = backend::random_params(&cfg, &mut rng);
        let xs = rng.fill(b * t * 17, 1.0);
        let dy = rng.fill(b * t * n, 1.0);
        let run = |device| {
            let mut e = Engine::new(cfg, device, Options::default()).unwrap();
            let f = e.forward(&p, Seq::new(&xs, b, t), None).unwrap();
            let g = e.backward(&p, Seq::new(&xs, b, t), &f, &dy, None).unwrap();
            let mut v = vec![("y", f.y), ("last.hebb", f.last.hebb)];
            v.extend(g.params.named().into_iter().map(|(k, t)| (k, t.clone())));
            v.push(("inputs", g.inputs));
            v
        };
        let (want, got) = (run(Device::Cpu), run(Device::Cuda(0)));
        for ((name, w), (_, g)) in want.iter().zip(&got) {
            let scale = w.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let err = w.iter().zip(g).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-3 * scale, "{rule:?} {name}: max error {err:e}, scale {scale:e}");
        }
    }
}
