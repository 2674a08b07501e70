//! The f32 CPU backend against the f64 reference on random small shapes that
//! are not multiples of the SIMD width: every rule, `α` shape, activation,
//! topology, input map, modulator option, fixed or learned rate, truncation,
//! checkpoint interval, with and without an initial state and `dlast`.
//!
//! The test body is the library's `neuroplastic::testing::backend` (feature
//! `testing`), which every backend's test calls the same way; its docs give
//! the bound each tensor is held to (relative 1e−4 plus the problem's own f32
//! sensitivity; 1e−2 for the gradients of ill-conditioned cases) and when a
//! case is skipped (a pre-clip value within rounding of `±c_max`, or a
//! divergent trajectory). The case lists are `layer_variant_cases`,
//! `modulator_cases` and `truncation_cases` there; the random shapes are
//! below.

use neuroplastic::testing::backend::{
    Case, Checked, EngineDriver, check_case, check_cases, layer_variant_cases, modulator_cases, truncation_cases,
};
use neuroplastic::*;
use proptest::prelude::*;

fn cpu() -> EngineDriver {
    EngineDriver::new(Device::Cpu).expect("the CPU backend runs everywhere")
}

/// Runs the cases on the CPU and fails with the first mismatches.
fn check_all(cases: &[Case]) {
    let report = check_cases(cases, &mut cpu());
    println!("{}", report.summary());
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(report.passed, cases.len());
}

/// Every rule × α shape × activation × topology × rate mode, on one awkward shape.
#[test]
fn every_layer_variant() {
    check_all(&layer_variant_cases());
}

/// Every modulator option for both modulated rules.
#[test]
fn every_modulator_variant() {
    check_all(&modulator_cases());
}

/// Every truncation variant (including cuts at step 0 and windows that do not
/// divide T) with every rule, with and without init state and `dlast`.
#[test]
fn every_truncation() {
    check_all(&truncation_cases());
}

/// The test body can fail: a backend whose gradient of `W` is off by 1% in
/// one entry is reported, with the tensor and the entry.
#[test]
fn a_wrong_backend_is_caught() {
    use neuroplastic::testing::backend::{Driver, FnDriver};
    let mut cpu = cpu();
    let mut wrong = FnDriver {
        name: "cpu-with-a-bug".into(),
        run: |p: &neuroplastic::testing::backend::Problem| {
            let mut out = cpu.run(p)?;
            let scale = out.grads.params.w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            out.grads.params.w[3] += 0.01 * scale;
            Ok(out)
        },
    };
    let cases = &layer_variant_cases()[..2];
    let report = check_cases(cases, &mut wrong);
    assert_eq!(report.failures.len(), 2, "{}", report.summary());
    assert!(report.failures[0].contains("grad w") && report.failures[0].contains("[3]"), "{}", report.failures[0]);
    assert!(report.summary().starts_with("cpu-with-a-bug: 0 cases passed, 2 failed"), "{}", report.summary());
}

/// CUDA through the same body: skipped with the engine's reason where this
/// build or machine has no GPU, checked otherwise.
#[test]
fn cuda_runs_the_same_body_or_says_why_not() {
    match neuroplastic::testing::backend::check_device(Device::Cuda(0), &modulator_cases()[..4]) {
        Err(skip) => {
            println!("skipping cuda:0: {}", skip.0);
            assert!(skip.0.contains("cuda"), "{}", skip.0);
        }
        Ok(report) => assert!(report.ok(), "{}", report.summary()),
    }
}

fn any_case() -> impl Strategy<Value = Case> {
    let shape = (1usize..=19, 1usize..=19, 1usize..=6, 1usize..=12);
    let kind = (0usize..4, 0usize..3, any::<bool>(), 0usize..3, any::<bool>(), any::<bool>(), any::<bool>());
    let modu = (1usize..=3, 0usize..3, any::<bool>(), any::<bool>(), any::<bool>(), 0usize..4);
    let run = (any::<u64>(), 0usize..5, 1usize..=12, 0usize..4, 1usize..=12, any::<bool>(), any::<bool>());
    (shape, kind, modu, run).prop_map(
        |((n, x, batch, steps), (rule, alpha, tanh, topo, bias, fixed, _), (k, ma, mb, mf, mfb, clip), run)| {
            let (seed, trunc, kk, ck, cc, init, dlast) = run;
            let rule = Rule::ALL[rule];
            let mut cfg = match topo {
                0 => LayerConfig::recurrent(rule, n, x),
                1 => LayerConfig { input_map: InputMap::Direct, ..LayerConfig::recurrent(rule, n, n) },
                _ => LayerConfig::feed_forward(rule, x, n),
            };
            cfg.alpha = AlphaShape::ALL[alpha];
            cfg.activation = if tanh { Activation::Tanh } else { Activation::Identity };
            cfg.bias = bias;
            cfg.eta = if fixed { EtaMode::Fixed } else { EtaMode::Learned };
            cfg.modulator =
                ModulatorConfig { k, activation: ModActivation::ALL[ma], bias: mb, fanout: mf, fanout_bias: mfb };
            cfg.clip = [0.15, 0.4, 1.0, 3.0][clip];
            let truncate = match trunc {
                0 | 1 => Truncation::None,
                2 => Truncation::Last(kk),
                3 => Truncation::Windows(kk),
                _ => Truncation::Last(steps),
            };
            let checkpoint = match ck {
                0 => Checkpoint::Auto,
                1 => Checkpoint::All,
                _ => Checkpoint::Every(cc),
            };
            Case { cfg, batch, steps, seed, truncate, checkpoint, init, dlast }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, max_global_rejects: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_match_reference(case in any_case()) {
        match check_case(&case, &mut cpu()) {
            Ok(Checked::Pass(_)) => {}
            Ok(Checked::Skipped(why)) => prop_assume!(false, "{}", why),
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}
