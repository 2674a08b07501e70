//! The trainer: optimizers against hand computations and PyTorch, clipping,
//! schedules, freezing, checkpoints (round trip, exact resume, atomic
//! writes), the pattern task's episodes, and errors on bad input.

use std::path::{Path, PathBuf};

use neuroplastic::io::TensorFile;
use neuroplastic::tasks::{Net, PatternTask, Task};
use neuroplastic::train::{
    Method, OptimConfig, Optimizer, StepDecay, TrainCheckpoint, TrainConfig, Trainer, WeightDecay, episode_rng,
    eval_rng,
};
use neuroplastic::{Device, Engine, Error, Options};
use rand::Rng;

/// A fresh, empty folder under the target directory (removed first if it exists).
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `steps` updates of `cfg` on two named tensors `p`, `q` from `p0`, `q0`
/// with the gradients `gs`, returning (p, q) after every update.
fn run_opt(cfg: OptimConfig, p0: &[f32], q0: &[f32], gs: &[(&[f32], &[f32])]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let mut opt = Optimizer::new(cfg).unwrap();
    let (mut p, mut q) = (p0.to_vec(), q0.to_vec());
    let mut out = Vec::new();
    for (gp, gq) in gs {
        opt.step(&mut [("p", &mut p), ("q", &mut q)], &[("p", gp), ("q", gq)]).unwrap();
        out.push((p.clone(), q.clone()));
    }
    out
}

/// Checks `got` against `want` elementwise, relative to max(|want|, 1e-3);
/// returns the largest relative error.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1e-3);
        assert!(err <= tol, "{what}[{k}]: got {g:e}, want {w:e} (relative error {err:.2e} > {tol:.0e})");
        worst = worst.max(err);
    }
    worst
}

#[test]
fn adam_two_steps_by_hand() {
    // One scalar, lr 0.1, β₁ 0.9, β₂ 0.999, ε 1e-8, gradients 0.5 then −0.25.
    let out = run_opt(OptimConfig::adam(0.1), &[1.0], &[], &[(&[0.5], &[]), (&[-0.25], &[])]);
    // Step 1: m = 0.1·0.5, v = 0.001·0.25; m̂ = 0.5, v̂ = 0.25; θ = 1 − 0.1·0.5/(0.5 + 1e-8).
    let (m1, v1) = (0.1 * 0.5, 0.001 * 0.25);
    let p1 = 1.0 - 0.1 * (m1 / 0.1) / ((v1 / 0.001f64).sqrt() + 1e-8);
    // Step 2: bias corrections 1 − 0.9², 1 − 0.999².
    let (m2, v2) = (0.9 * m1 + 0.1 * -0.25, 0.999 * v1 + 0.001 * 0.0625);
    let p2 = p1 - 0.1 * (m2 / (1.0 - 0.81)) / ((v2 / (1.0 - 0.999f64 * 0.999)).sqrt() + 1e-8);
    assert!((p1 - 0.9).abs() < 1e-7 && (p2 - 0.873367).abs() < 1e-6, "hand computation itself: {p1} {p2}");
    assert_close("p after 1", &out[0].0, &[p1], 1e-7);
    assert_close("p after 2", &out[1].0, &[p2], 1e-7);
}

// Reference numbers from PyTorch 2.15.0 (CPU, float32, the default single-tensor
// optimizers). The optimizers reproduce them bit for bit (tolerance 0), except
// under clipping, where PyTorch sums the norm in f32 and we sum it in f64
// (tolerance 1e-6; equal on these numbers). Produced by this script
// with $HOME/bench-venv/bin/python; `p`, `q` are two parameter tensors that get
// the gradients below, set by hand before each `opt.step()`:
//
//   p = torch.tensor([0.5, -1.25, 2.0, 0.0, 1e-3, -0.75], requires_grad=True)
//   q = torch.tensor([0.25, -0.5, 1.5], requires_grad=True)
//   opt = <optimizer>([p, q]); sched = <scheduler or None>
//   for gp, gq in GRADS:
//       p.grad, q.grad = torch.tensor(gp), torch.tensor(gq)
//       if clip: torch.nn.utils.clip_grad_norm_([p, q], clip)
//       opt.step(); sched and sched.step()
const P0: [f32; 6] = [0.5, -1.25, 2.0, 0.0, 1e-3, -0.75];
const Q0: [f32; 3] = [0.25, -0.5, 1.5];
const GRADS: [([f32; 6], [f32; 3]); 3] = [
    ([0.1, -0.2, 0.3, 0.0, 1e-4, -2.0], [1.0, 0.5, -0.25]),
    ([-0.05, 0.4, 0.3, 0.0, -1e-4, 1.5], [0.5, -0.5, 0.125]),
    ([0.2, 0.1, -0.6, 0.0, 2e-4, 0.25], [-1.0, 0.75, 0.0]),
];

type Trace = [([f64; 6], [f64; 3]); 3];

fn check_torch(name: &str, cfg: OptimConfig, want: &Trace, tol: f64) {
    let gs: Vec<(&[f32], &[f32])> = GRADS.iter().map(|(a, b)| (&a[..], &b[..])).collect();
    let got = run_opt(cfg, &P0, &Q0, &gs);
    let mut worst = 0.0f64;
    for (k, ((p, q), (wp, wq))) in got.iter().zip(want).enumerate() {
        worst = worst.max(assert_close(&format!("{name}: p after step {}", k + 1), p, wp, tol));
        worst = worst.max(assert_close(&format!("{name}: q after step {}", k + 1), q, wq, tol));
    }
    eprintln!("{name}: largest relative difference to PyTorch {worst:.2e}");
}

#[test]
fn adam_adamw_and_clipping_match_pytorch() {
    // torch.optim.Adam(lr=0.01)
    let adam: Trace = [
        (
            [
                0.49000000953674316,
                -1.2400000095367432,
                1.9900000095367432,
                0.0,
                -0.008998999372124672,
                -0.7400000095367432,
            ],
            [0.23999999463558197, -0.5099999904632568, 1.5099999904632568],
        ),
        (
            [
                0.4873366355895996,
                -1.2436610460281372,
                1.9800000190734863,
                0.0,
                -0.008472735993564129,
                -0.7391067743301392,
            ],
            [0.23067820072174072, -0.5094736814498901, 1.5126633644104004],
        ),
        (
            [
                0.4807555079460144,
                -1.2478175163269043,
                1.9807565212249756,
                0.0,
                -0.013454804196953773,
                -0.739055871963501,
            ],
            [0.22957037389278412, -0.51384437084198, 1.5147221088409424],
        ),
    ];
    check_torch("Adam", OptimConfig::adam(0.01), &adam, 0.0);

    // torch.optim.Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1): L2 decay.
    let adam_l2: Trace = [
        (
            [
                0.49000006914138794,
                -1.2400000095367432,
                1.9900000095367432,
                0.0,
                -0.008950250223279,
                -0.7400000095367432,
            ],
            [0.24000000953674316, -0.5099999904632568, 1.5099998712539673],
        ),
        (
            [
                0.4837515354156494,
                -1.2402949333190918,
                1.9800010919570923,
                0.0,
                -0.002510039135813713,
                -0.7392691373825073,
            ],
            [0.23081371188163757, -0.5078916549682617, 1.5047643184661865],
        ),
        (
            [
                0.4753658175468445,
                -1.240107774734497,
                1.9772288799285889,
                0.0,
                0.0025050449185073376,
                -0.7392377257347107,
            ],
            [0.2303515374660492, -0.511774480342865, 1.498155951499939],
        ),
    ];
    let cfg = OptimConfig {
        method: Method::Adam { beta1: 0.8, beta2: 0.99, eps: 1e-6 },
        weight_decay: WeightDecay::L2(0.1),
        ..OptimConfig::adam(0.01)
    };
    check_torch("Adam + L2", cfg, &adam_l2, 0.0);

    // torch.optim.Adam(lr=0.01, betas=(0.3, 0.999)): β₁ < 0.5 takes PyTorch's other lerp branch.
    let adam_low_beta: Trace = [
        (
            [
                0.49000000953674316,
                -1.2400000095367432,
                1.9900000095367432,
                0.0,
                -0.008998998440802097,
                -0.7400000095367432,
            ],
            [0.23999999463558197, -0.5099999904632568, 1.5099999904632568],
        ),
        (
            [
                0.4919463098049164,
                -1.2482693195343018,
                1.9800000190734863,
                0.0,
                -0.0036149215884506702,
                -0.7439165711402893,
            ],
            [0.2322147637605667, -0.5046153664588928, 1.5080536603927612],
        ),
        (
            [
                0.48139894008636475,
                -1.2537624835968018,
                1.9881881475448608,
                0.0,
                -0.01271790824830532,
                -0.7464963793754578,
            ],
            [0.23852823674678802, -0.5124114751815796, 1.5073846578598022],
        ),
    ];
    let cfg = OptimConfig { method: Method::Adam { beta1: 0.3, beta2: 0.999, eps: 1e-8 }, ..OptimConfig::adam(0.01) };
    check_torch("Adam β₁ 0.3", cfg, &adam_low_beta, 0.0);

    // torch.optim.AdamW(lr=0.01, weight_decay=0.1): decoupled decay.
    let adamw: Trace = [
        (
            [
                0.4895000159740448,
                -1.2387499809265137,
                1.9880000352859497,
                0.0,
                -0.008999999612569809,
                -0.7392500042915344,
            ],
            [0.2397499978542328, -0.5095000267028809, 1.5084999799728394],
        ),
        (
            [
                0.48634713888168335,
                -1.2411723136901855,
                1.976012110710144,
                0.0,
                -0.008464735932648182,
                -0.737617552280426,
            ],
            [0.23018845915794373, -0.5084642171859741, 1.5096548795700073],
        ),
        (
            [
                0.47927966713905334,
                -1.24408757686615,
                1.9747925996780396,
                0.0,
                -0.013438340276479721,
                -0.7368290424346924,
            ],
            [0.22885045409202576, -0.5123264193534851, 1.5102039575576782],
        ),
    ];
    check_torch(
        "AdamW",
        OptimConfig { weight_decay: WeightDecay::Decoupled(0.1), ..OptimConfig::adam(0.01) },
        &adamw,
        0.0,
    );

    // torch.optim.Adam(lr=0.01) after torch.nn.utils.clip_grad_norm_([p, q], 0.5).
    let clipped: Trace = [
        (
            [
                0.49000000953674316,
                -1.2400000095367432,
                1.9900000095367432,
                0.0,
                -0.008995330892503262,
                -0.7400000095367432,
            ],
            [0.23999999463558197, -0.5099999904632568, 1.5099999904632568],
        ),
        (
            [
                0.48859164118766785,
                -1.2446396350860596,
                1.9800302982330322,
                0.0,
                -0.007023165002465248,
                -0.7405664920806885,
            ],
            [0.2302873581647873, -0.5080270767211914, 1.5114083290100098],
        ),
        (
            [
                0.48222029209136963,
                -1.2498421669006348,
                1.9822089672088623,
                0.0,
                -0.012015269137918949,
                -0.7419117093086243,
            ],
            [0.23098541796207428, -0.512445867061615, 1.5124969482421875],
        ),
    ];
    check_torch("Adam + clip 0.5", OptimConfig { clip_norm: Some(0.5), ..OptimConfig::adam(0.01) }, &clipped, 1e-6);
}

#[test]
fn sgd_momentum_and_step_decay_match_pytorch() {
    // torch.optim.SGD(lr=0.1, momentum=0.9)
    let sgd_m: Trace = [
        (
            [
                0.49000000953674316,
                -1.2300000190734863,
                1.9700000286102295,
                0.0,
                0.0009900000877678394,
                -0.550000011920929,
            ],
            [0.15000000596046448, -0.550000011920929, 1.524999976158142],
        ),
        (
            [
                0.4860000014305115,
                -1.2519999742507935,
                1.9129999876022339,
                0.0,
                0.0009910000953823328,
                -0.5200000405311584,
            ],
            [0.010000006295740604, -0.5450000166893005, 1.534999966621399],
        ),
        (
            [
                0.46239998936653137,
                -1.2818000316619873,
                1.9217000007629395,
                0.0,
                0.0009719000663608313,
                -0.518000066280365,
            ],
            [-0.015999993309378624, -0.6155000329017639, 1.5439999103546143],
        ),
    ];
    check_torch("SGD momentum", OptimConfig::sgd(0.1, 0.9), &sgd_m, 0.0);

    // torch.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    let nesterov: Trace = [
        (
            [
                0.4800499975681305,
                -1.209625005722046,
                1.9392000436782837,
                0.0,
                0.0009791000047698617,
                -0.36857500672340393,
            ],
            [0.059524986892938614, -0.5940499901771545, 1.5446499586105347],
        ),
        (
            [
                0.48013290762901306,
                -1.2661142349243164,
                1.852595567703247,
                0.0,
                0.0009873297531157732,
                -0.49026721715927124,
            ],
            [-0.11679062247276306, -0.5380163192749023, 1.5370001792907715],
        ),
        (
            [
                0.4372273087501526,
                -1.2986376285552979,
                1.9138768911361694,
                0.0,
                0.0009467417257837951,
                -0.5116904377937317,
            ],
            [-0.040199194103479385, -0.6745983958244324, 1.5398352146148682],
        ),
    ];
    let cfg = OptimConfig {
        method: Method::Sgd { momentum: 0.9, nesterov: true },
        weight_decay: WeightDecay::L2(0.01),
        ..OptimConfig::sgd(0.1, 0.9)
    };
    check_torch("SGD Nesterov + L2", cfg, &nesterov, 0.0);

    // torch.optim.SGD(lr=0.1) with StepLR(step_size=2, gamma=0.5) stepped after each update.
    let decayed: Trace = [
        (
            [
                0.49000000953674316,
                -1.2300000190734863,
                1.9700000286102295,
                0.0,
                0.0009900000877678394,
                -0.550000011920929,
            ],
            [0.15000000596046448, -0.550000011920929, 1.524999976158142],
        ),
        (
            [
                0.4950000047683716,
                -1.2699999809265137,
                1.940000057220459,
                0.0,
                0.0010000000474974513,
                -0.699999988079071,
            ],
            [0.10000000894069672, -0.5, 1.5124999284744263],
        ),
        (
            [
                0.48500001430511475,
                -1.274999976158142,
                1.9700000286102295,
                0.0,
                0.0009900000877678394,
                -0.7124999761581421,
            ],
            [0.15000000596046448, -0.5375000238418579, 1.5124999284744263],
        ),
    ];
    let cfg = OptimConfig { decay: Some(StepDecay { gamma: 0.5, every: 2 }), ..OptimConfig::sgd(0.1, 0.0) };
    check_torch("SGD + StepLR", cfg, &decayed, 0.0);
}

#[test]
fn plain_sgd_by_hand() {
    let out = run_opt(OptimConfig::sgd(0.5, 0.0), &[1.0, -2.0], &[3.0], &[(&[0.25, -1.0], &[2.0])]);
    assert_eq!(out[0].0, vec![1.0 - 0.125, -2.0 + 0.5]);
    assert_eq!(out[0].1, vec![3.0 - 1.0]);
}

#[test]
fn clipping_scales_the_global_norm_down_and_only_down() {
    // With SGD at lr 1 the update is minus the clipped gradient.
    let (gp, gq) = ([3.0f32, 0.0, -4.0], [12.0f32]); // ‖g‖ = 13
    for (max, want_norm) in [(2.6, 2.6), (13.5, 13.0), (100.0, 13.0)] {
        let cfg = OptimConfig { clip_norm: Some(max), ..OptimConfig::sgd(1.0, 0.0) };
        let mut opt = Optimizer::new(cfg).unwrap();
        let (mut p, mut q) = (vec![0.0f32; 3], vec![0.0f32]);
        let st = opt.step(&mut [("p", &mut p), ("q", &mut q)], &[("p", &gp), ("q", &gq)]).unwrap();
        assert!((st.grad_norm - 13.0).abs() < 1e-12, "reported norm is the norm before clipping");
        assert_eq!(st.clipped, max < 13.0);
        let norm = p.iter().chain(&q).map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - want_norm).abs() < 1e-5 * want_norm, "max {max}: update norm {norm}, want {want_norm}");
        // The direction is kept: p[2]/p[0] = −4/3.
        assert!((p[2] / p[0] - (-4.0 / 3.0)).abs() < 1e-6);
    }
    // Frozen tensors do not count in the norm.
    let cfg = OptimConfig { clip_norm: Some(1.0), frozen: vec!["q".into()], ..OptimConfig::sgd(1.0, 0.0) };
    let mut opt = Optimizer::new(cfg).unwrap();
    let (mut p, mut q) = (vec![0.0f32; 3], vec![7.0f32]);
    let st = opt.step(&mut [("p", &mut p), ("q", &mut q)], &[("p", &gp), ("q", &gq)]).unwrap();
    assert!((st.grad_norm - 5.0).abs() < 1e-12);
    assert_eq!(q, vec![7.0]);
}

#[test]
fn step_decay_schedule() {
    let cfg = OptimConfig { decay: Some(StepDecay { gamma: 0.5, every: 3 }), ..OptimConfig::sgd(1.0, 0.0) };
    let want = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25];
    for (k, w) in want.iter().enumerate() {
        assert_eq!(cfg.lr_at(k as u64), *w);
    }
    let mut opt = Optimizer::new(cfg).unwrap();
    let mut p = vec![0.0f32];
    let mut lrs = Vec::new();
    for _ in 0..7 {
        lrs.push(opt.step(&mut [("p", &mut p)], &[("p", &[1.0])]).unwrap().lr);
    }
    assert_eq!(lrs, want);
    assert_eq!(p, vec![-4.75]);
}

#[test]
fn frozen_parameters_never_move() {
    for method in [Method::adam(), Method::Sgd { momentum: 0.9, nesterov: false }] {
        let cfg = OptimConfig {
            method,
            weight_decay: WeightDecay::Decoupled(0.5),
            frozen: vec!["q".into()],
            ..OptimConfig::adam(0.1)
        };
        let mut opt = Optimizer::new(cfg).unwrap();
        let (mut p, mut q) = (vec![1.0f32, 2.0], vec![3.0f32]);
        for _ in 0..3 {
            // A non-finite gradient of a frozen tensor is ignored.
            opt.step(&mut [("p", &mut p), ("q", &mut q)], &[("p", &[1.0, -1.0]), ("q", &[f32::NAN])]).unwrap();
        }
        assert_eq!(q, vec![3.0], "{method:?}");
        assert!(p[0] < 1.0 && p[1] > 1.0, "{method:?}: p moved: {p:?}");
        assert!(!opt.state().m.contains_key("q") && opt.state().m.contains_key("p"));
    }
    // Freezing a name that does not exist is an error.
    let mut opt = Optimizer::new(OptimConfig { frozen: vec!["alpah".into()], ..OptimConfig::adam(0.1) }).unwrap();
    let mut p = vec![1.0f32];
    let e = opt.step(&mut [("p", &mut p)], &[("p", &[1.0])]).unwrap_err().to_string();
    assert!(e.contains("alpah") && e.contains("known: p"), "{e}");
}

#[test]
fn non_finite_or_misshapen_gradients_are_errors_and_change_nothing() {
    let mut opt = Optimizer::new(OptimConfig::adam(0.1)).unwrap();
    let (mut p, mut q) = (vec![1.0f32, 2.0], vec![3.0f32]);
    let e = opt.step(&mut [("p", &mut p), ("q", &mut q)], &[("p", &[1.0, 1.0]), ("q", &[f32::INFINITY])]).unwrap_err();
    assert!(matches!(&e, Error::NonFinite { arg, .. } if arg == "grad.q"), "{e}");
    assert_eq!((p.clone(), q.clone(), opt.steps()), (vec![1.0, 2.0], vec![3.0], 0));
    let e = opt.step(&mut [("p", &mut p), ("q", &mut q)], &[("p", &[1.0]), ("q", &[1.0])]).unwrap_err().to_string();
    assert!(e.contains("grad.p") && e.contains("(2,)"), "{e}");
    let e = opt.step(&mut [("p", &mut p)], &[("q", &[1.0, 1.0])]).unwrap_err().to_string();
    assert!(e.contains("`q` is paired with parameter `p`"), "{e}");
    assert_eq!((p, q, opt.steps()), (vec![1.0, 2.0], vec![3.0], 0));
}

#[test]
fn bad_optimizer_settings_are_named() {
    let adam = OptimConfig::adam(1e-3);
    let cases: Vec<(OptimConfig, &str)> = vec![
        (OptimConfig::adam(0.0), "lr"),
        (OptimConfig::adam(f64::NAN), "lr"),
        (OptimConfig { method: Method::Adam { beta1: 1.0, beta2: 0.999, eps: 1e-8 }, ..adam.clone() }, "beta1"),
        (OptimConfig { method: Method::Adam { beta1: 0.9, beta2: -0.1, eps: 1e-8 }, ..adam.clone() }, "beta2"),
        (OptimConfig { method: Method::Adam { beta1: 0.9, beta2: 0.999, eps: 0.0 }, ..adam.clone() }, "eps"),
        (OptimConfig::sgd(0.1, 1.0), "momentum"),
        (OptimConfig { method: Method::Sgd { momentum: 0.0, nesterov: true }, ..adam.clone() }, "nesterov"),
        (OptimConfig { weight_decay: WeightDecay::L2(-1.0), ..adam.clone() }, "weight_decay"),
        (OptimConfig { clip_norm: Some(0.0), ..adam.clone() }, "clip_norm"),
        (OptimConfig { decay: Some(StepDecay { gamma: 0.0, every: 1 }), ..adam.clone() }, "decay.gamma"),
        (OptimConfig { decay: Some(StepDecay { gamma: 0.5, every: 0 }), ..adam.clone() }, "decay.every"),
    ];
    for (cfg, name) in cases {
        let e = Optimizer::new(cfg).unwrap_err().to_string();
        assert!(e.starts_with(name), "expected an error about {name}, got: {e}");
    }
}

/// The small pattern task used by the trainer tests: 12 bits, T = 11.
fn small_task(extra: usize) -> PatternTask {
    PatternTask { bits: 12, patterns: 2, cycles: 1, show: 3, blank: 1, test: 3, extra, ..PatternTask::default() }
}

fn trainer(task: PatternTask, net: Net, cfg: TrainConfig) -> Trainer<PatternTask> {
    let (model, frozen) = task.model(net, 0.01, 0.01, cfg.seed).unwrap();
    let engine = Engine::new(model.cfg, Device::Cpu, Options::default()).unwrap();
    let cfg = TrainConfig { optim: OptimConfig { frozen, ..cfg.optim }, ..cfg };
    Trainer::new(task, model, engine, cfg).unwrap()
}

fn train_cfg(seed: u64, batch: usize, optim: OptimConfig) -> TrainConfig {
    TrainConfig { seed, batch, eval_every: 4, eval_episodes: 3, optim }
}

#[test]
fn resume_continues_bit_for_bit() {
    let dir = scratch("resume");
    let k = 7u64;
    let optims = [
        OptimConfig {
            clip_norm: Some(2.0),
            decay: Some(StepDecay { gamma: 0.7, every: 5 }),
            weight_decay: WeightDecay::Decoupled(0.01),
            ..OptimConfig::adam(3e-3)
        },
        OptimConfig { method: Method::Sgd { momentum: 0.9, nesterov: true }, ..OptimConfig::sgd(1e-2, 0.9) },
    ];
    for (case, optim) in optims.into_iter().enumerate() {
        let cfg = train_cfg(11 + case as u64, 2, optim);
        let mut straight = trainer(small_task(3), Net::Plastic, cfg.clone());
        let a: Vec<f64> = (0..2 * k).map(|_| straight.step().unwrap().loss).collect();

        let mut first = trainer(small_task(3), Net::Plastic, cfg.clone());
        let mut b: Vec<f64> = (0..k).map(|_| first.step().unwrap().loss).collect();
        let file = dir.join(format!("ck{case}.safetensors"));
        first.save(&file).unwrap();
        drop(first);
        let ck = TrainCheckpoint::read(&file).unwrap();
        let engine = Engine::new(ck.model.cfg, Device::Cpu, Options::default()).unwrap();
        let mut resumed = Trainer::resume(small_task(3), engine, ck).unwrap();
        assert_eq!(resumed.step_count(), k);
        b.extend((0..k).map(|_| resumed.step().unwrap().loss));

        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "case {case}: losses differ after resuming");
        assert!(a.iter().all(|l| l.is_finite() && *l > 0.0));
        assert_eq!(straight.model(), resumed.model(), "case {case}: parameters differ");
        assert_eq!(straight.optimizer().state(), resumed.optimizer().state(), "case {case}: optimizer state differs");
        // The run did something: the parameters moved.
        let init = small_task(3).model(Net::Plastic, 0.01, 0.01, 11 + case as u64).unwrap().0;
        assert_ne!(init.params.w, straight.model().params.w);
    }
}

#[test]
fn checkpoint_round_trip() {
    let dir = scratch("roundtrip");
    let cfg = train_cfg(5, 1, OptimConfig { clip_norm: Some(1.5), ..OptimConfig::adam(1e-3) });
    let mut t = trainer(small_task(2), Net::NonPlastic, cfg);
    t.run(9, None, &mut |_| Ok(())).unwrap();
    let ck = t.checkpoint();
    let file = dir.join("ck.safetensors");
    ck.write(&file).unwrap();
    let back = TrainCheckpoint::read(&file).unwrap();
    assert_eq!(back.task, "pattern");
    assert_eq!(back.task_config, small_task(2).to_json());
    assert_eq!(back.model, ck.model);
    assert!(back.model.head.is_some());
    assert_eq!(back.config, ck.config);
    assert!(back.config.optim.frozen.contains(&"alpha".to_string()));
    assert_eq!(back.optim, ck.optim);
    assert_eq!(back.optim.step, 9);
    assert_eq!(back.step, 9);
    assert_eq!(back.acc.map(f64::to_bits), ck.acc.map(f64::to_bits));
    assert_eq!(back.log.len(), ck.log.len());
    assert_eq!(back.log.len(), 4, "rows at updates 0, 4, 8 and the end (9)");
    for (x, y) in back.log.iter().zip(&ck.log) {
        assert_eq!((x.step, x.episodes), (y.step, y.episodes));
        for (u, v) in [
            (x.train_loss, y.train_loss),
            (x.train_err, y.train_err),
            (x.eval_loss, y.eval_loss),
            (x.eval_err, y.eval_err),
            (x.lr, y.lr),
            (x.seconds, y.seconds),
        ] {
            assert_eq!(u.to_bits(), v.to_bits());
        }
    }
    // The generator resumes at the same position.
    let (mut r1, mut r2) = (ck.rng.clone(), back.rng.clone());
    for _ in 0..100 {
        assert_eq!(r1.next_u32(), r2.next_u32());
    }
    // Parameters are stored under their model-file names, loadable by PyTorch users.
    let f = TensorFile::read(&file).unwrap();
    for name in ["w", "alpha", "eta", "head.out.weight", "head.out.bias", "opt.m.w", "opt.v.w", "rng.seed"] {
        assert!(f.has(name), "missing {name}");
    }
    assert!(!f.has("opt.m.alpha"), "frozen α has no moments");
    assert_eq!(f.meta("neuroplastic.rule").unwrap(), "hebb");
}

#[test]
fn checkpoint_writes_are_atomic() {
    let dir = scratch("atomic");
    let cfg = train_cfg(1, 1, OptimConfig::adam(1e-3));
    let mut t = trainer(small_task(0), Net::Plastic, cfg);
    let file = dir.join("ck.safetensors");
    t.save(&file).unwrap();
    t.step().unwrap();
    t.save(&file).unwrap();
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, vec!["ck.safetensors".to_string()], "no temporary file is left behind");
    assert_eq!(TrainCheckpoint::read(&file).unwrap().step, 1);

    // A missing folder: an error naming the file, nothing created.
    let missing = dir.join("no/such/dir/ck.safetensors");
    let e = t.save(&missing).unwrap_err();
    assert!(matches!(&e, Error::Io { path, .. } if path.contains("no/such/dir")), "{e}");
    assert!(!dir.join("no").exists());

    // The target is a folder with content: the rename fails, the folder and
    // its content survive, and the temporary file is removed.
    let busy = dir.join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"old").unwrap();
    assert!(t.save(&busy).is_err());
    assert_eq!(std::fs::read(busy.join("keep")).unwrap(), b"old");
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    names.sort();
    assert_eq!(names, vec!["busy".to_string(), "ck.safetensors".to_string()]);

    // A read-only folder: the old checkpoint survives, byte for byte.
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    let old = ro.join("ck.safetensors");
    t.save(&old).unwrap();
    let before = std::fs::read(&old).unwrap();
    t.step().unwrap();
    set_readonly(&ro, true);
    let probe = std::fs::write(ro.join("probe"), b"x").is_ok();
    if probe {
        // Permission bits do not bind this user (root).
        eprintln!("skipping the read-only part: this user can write into read-only folders");
        let _ = std::fs::remove_file(ro.join("probe"));
    } else {
        assert!(t.save(&old).is_err(), "writing into a read-only folder must fail");
        assert_eq!(std::fs::read(&old).unwrap(), before);
        assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 1);
    }
    set_readonly(&ro, false);
}

fn set_readonly(p: &Path, ro: bool) {
    let mut perm = std::fs::metadata(p).unwrap().permissions();
    perm.set_readonly(ro);
    std::fs::set_permissions(p, perm).unwrap();
}

#[test]
fn bad_checkpoints_are_named_errors() {
    let dir = scratch("badck");
    let mut t = trainer(small_task(0), Net::Plastic, train_cfg(2, 1, OptimConfig::adam(1e-3)));
    t.step().unwrap();
    let good = t.checkpoint().to_file().unwrap();
    let path = dir.join("ck.safetensors");
    let check = |f: &TensorFile, want: &str| {
        f.write(&path).unwrap();
        let e = TrainCheckpoint::read(&path).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("ck.safetensors"), "expected `{want}` in: {e}");
    };
    let mut f = good.clone();
    f.tensors.remove("rng.seed");
    check(&f, "rng.seed");
    let mut f = good.clone();
    f.put_f32("w", &[3, 4], vec![0.0; 12]);
    check(&f, "`w`");
    let mut f = good.clone();
    f.put_f32("bogus", &[1], vec![0.0]);
    check(&f, "bogus");
    let mut f = good.clone();
    f.put_f32("opt.m.w", &[2], vec![0.0; 2]);
    check(&f, "opt.m.w");
    let mut f = good.clone();
    f.metadata.insert("neuroplastic.train".into(), "{not json".into());
    check(&f, "neuroplastic.train");
    let mut f = good.clone();
    f.metadata.remove("neuroplastic.rule");
    check(&f, "neuroplastic.rule");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    check(&TensorFile::new(), "ck.safetensors");
    let missing = TrainCheckpoint::read(dir.join("absent.safetensors")).unwrap_err().to_string();
    assert!(missing.contains("absent.safetensors"), "{missing}");

    // Resuming on another task is refused.
    good.write(&path).unwrap();
    let ck = TrainCheckpoint::read(&path).unwrap();
    let engine = Engine::new(ck.model.cfg, Device::Cpu, Options::default()).unwrap();
    let other = PatternTask { degrade: 0.25, ..small_task(0) };
    let e = Trainer::resume(other, engine, ck).err().unwrap().to_string();
    assert!(e.contains("task"), "{e}");
}

#[test]
fn trainer_rejects_inconsistent_setups() {
    let task = small_task(0);
    let (model, frozen) = task.model(Net::Plastic, 0.01, 0.01, 0).unwrap();
    let engine = || Engine::new(model.cfg, Device::Cpu, Options::default()).unwrap();
    let cfg = TrainConfig {
        optim: OptimConfig { frozen, ..OptimConfig::adam(1e-3) },
        ..train_cfg(0, 1, OptimConfig::adam(1.0))
    };
    // Episodes of another size.
    let e = Trainer::new(small_task(1), model.clone(), engine(), cfg.clone()).err().unwrap().to_string();
    assert!(e.contains("task") && e.contains("inputs"), "{e}");
    // An engine for another layer.
    let (other, _) = small_task(1).model(Net::Plastic, 0.01, 0.01, 0).unwrap();
    let e = Trainer::new(
        task.clone(),
        model.clone(),
        Engine::new(other.cfg, Device::Cpu, Options::default()).unwrap(),
        cfg.clone(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("engine"), "{e}");
    // Unknown frozen name, zero batch, zero evaluation episodes.
    let mut bad = cfg.clone();
    bad.optim.frozen.push("head.out.weight".into());
    let e = Trainer::new(task.clone(), model.clone(), engine(), bad).err().unwrap().to_string();
    assert!(e.contains("head.out.weight"), "{e}");
    let e = Trainer::new(task.clone(), model.clone(), engine(), TrainConfig { batch: 0, ..cfg.clone() }).err().unwrap();
    assert!(e.to_string().contains("batch"), "{e}");
    let e = Trainer::new(task.clone(), model.clone(), engine(), TrainConfig { eval_episodes: 0, ..cfg.clone() })
        .err()
        .unwrap();
    assert!(e.to_string().contains("eval_episodes"), "{e}");
    // Bad task settings.
    for (t, name) in [
        (PatternTask { bits: 0, ..task.clone() }, "bits"),
        (PatternTask { show: 0, ..task.clone() }, "show"),
        (PatternTask { degrade: 1.5, ..task.clone() }, "degrade"),
    ] {
        let e = t.model(Net::Plastic, 0.01, 0.01, 0).unwrap_err().to_string();
        assert!(e.starts_with(name), "{e}");
    }
    let e = task.model(Net::Plastic, 1.5, 0.01, 0).unwrap_err().to_string();
    assert!(e.starts_with("eta"), "{e}");
}

#[test]
fn pattern_episodes_follow_the_protocol() {
    let task = PatternTask::default();
    assert_eq!(task.steps(), 106);
    let (b, t_len, n) = (3, 106, 1000);
    let ep = task.sample(&mut episode_rng(7), b);
    assert_eq!(
        (ep.batch, ep.steps, ep.inputs.len(), ep.targets.len(), ep.mask.len()),
        (b, t_len, b * t_len * n, b * t_len * n, b * t_len)
    );
    let mut zeroed = 0usize;
    for e in 0..b {
        let row = |t: usize| &ep.inputs[(e * t_len + t) * n..(e * t_len + t + 1) * n];
        // Two cycles of 5 patterns: steps 10c..10c+6 show one, the next 4 are blank.
        let mut shown = Vec::new();
        for slot in 0..10 {
            let first = row(10 * slot);
            assert!(first.iter().all(|&x| x == 20.0 || x == -20.0), "inputs are ±20");
            for s in 0..6 {
                assert_eq!(row(10 * slot + s), first);
            }
            for s in 6..10 {
                assert!(row(10 * slot + s).iter().all(|&x| x == 0.0));
            }
            shown.push(first.to_vec());
        }
        // Each cycle shows the 5 distinct patterns once (a permutation).
        for c in 0..2 {
            let cyc = &shown[5 * c..5 * c + 5];
            for i in 0..5 {
                for j in 0..i {
                    assert_ne!(cyc[i], cyc[j]);
                }
                assert!(shown[5 * (1 - c)..5 * (1 - c) + 5].contains(&cyc[i]));
            }
        }
        // The test: 6 steps of one pattern with bits zeroed; the target is that full pattern.
        let test = row(100);
        for s in 100..106 {
            assert_eq!(row(s), test);
        }
        let last = e * t_len + 105;
        let target = &ep.targets[last * n..(last + 1) * n];
        assert!(shown.iter().any(|p| p.iter().zip(target).all(|(&x, &t)| x == 20.0 * t)));
        for (&x, &t) in test.iter().zip(target) {
            assert!(x == 0.0 || x == 20.0 * t);
        }
        zeroed += test.iter().filter(|&&x| x == 0.0).count();
        for t in 0..t_len {
            assert_eq!(ep.mask[e * t_len + t], if t == 105 { 1.0 } else { 0.0 });
        }
    }
    let frac = zeroed as f64 / (b * n) as f64;
    assert!((frac - 0.5).abs() < 0.05, "about half the test bits are zeroed, got {frac}");
    // Seeded: the same generator state gives the same episodes, another seed others.
    assert_eq!(task.sample(&mut episode_rng(7), b), ep);
    assert_ne!(task.sample(&mut episode_rng(8), b), ep);
    assert_ne!(task.sample(&mut eval_rng(7, 0), b), ep);
    assert_ne!(task.sample(&mut eval_rng(7, 0), b), task.sample(&mut eval_rng(7, 1), b));
}

#[test]
fn pattern_models_and_scores() {
    let task = small_task(5);
    let n = task.neurons();
    let ep = task.sample(&mut episode_rng(1), 2);
    assert_eq!(ep.inputs.len(), 2 * 11 * n);
    for r in 0..2 * 11 {
        assert!(ep.inputs[r * n + 12..(r + 1) * n].iter().all(|&x| x == 0.0), "extra neurons get no input");
    }
    assert_eq!(ep.targets.len(), 2 * 11 * 12, "targets cover the pattern neurons only");

    let (plastic, fp) = task.model(Net::Plastic, 0.01, 0.01, 3).unwrap();
    let (flat, fnp) = task.model(Net::NonPlastic, 0.01, 0.01, 3).unwrap();
    assert_eq!(plastic.params.w, flat.params.w, "one seed, one w");
    assert!(flat.params.alpha.iter().all(|&a| a == 0.0));
    let std = (plastic.params.alpha.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / (n * n) as f64).sqrt();
    assert!((std - 0.01).abs() < 0.0015, "α ~ 0.01·N(0, 1), got std {std}");
    assert_eq!(plastic.params.eta, vec![0.01]);
    assert!(fp.contains(&"eta".to_string()) && !fp.contains(&"alpha".to_string()));
    assert!(fnp.contains(&"alpha".to_string()) && fnp.contains(&"head.out.weight".to_string()));
    let head = plastic.head.as_ref().unwrap();
    for o in 0..12 {
        for j in 0..n {
            assert_eq!(head.weight[o * n + j], if o == j { 1.0 } else { 0.0 });
        }
    }
    // The error rate counts wrong signs on masked steps only.
    let mut yhat = ep.targets.clone();
    assert_eq!(task.error(&ep, &yhat), 0.0);
    yhat.iter_mut().for_each(|y| *y = -*y);
    assert_eq!(task.error(&ep, &yhat), 1.0);
    let last = 10;
    for o in 0..3 {
        yhat[last * 12 + o] = -yhat[last * 12 + o];
    }
    assert_eq!(task.error(&ep, &yhat), 1.0 - 3.0 / 24.0);
}
