//! Finite-difference check of the whole A2C loss gradient through the
//! step-at-a-time path, for every variant, in f64 on small sizes: the
//! actions of one seeded batch are replayed (so the inputs, which depend on
//! them, stay the same) and the advantages of the policy term are held at
//! their unperturbed values (the loss's stop-gradient). The CPU engine's f32
//! gradient of the same batch is then compared with the f64 one.

use neuroplastic::rl::Variant;
use neuroplastic::rl::a2c::A2cConfig;
use neuroplastic::rl::agent::{Agent, batch_grads, batch_grads_f64};
use neuroplastic::rl::env::{CueReward, CueRewardConfig, Env, Maze, MazeConfig};
use neuroplastic::rl::run::action_rng;
use neuroplastic::train::episode_rng;
use neuroplastic::{Device, Engine, Options, Params};

const A2C: A2cConfig = A2cConfig { gamma: 0.8, value_coef: 0.2, entropy_coef: 0.05 };

fn fd_check<E: Env>(variant: Variant, make: impl Fn(&mut neuroplastic::train::TaskRng) -> Vec<E>, steps: usize) {
    let probe = make(&mut episode_rng(0));
    let (obs, na) = (probe[0].obs_size(), probe[0].actions());
    let mut agent = Agent::new(variant, obs, na, 6, 11).unwrap();
    // Larger α and η than at initialisation, so that plasticity matters.
    let cfg = agent.model.cfg;
    for (k, a) in agent.model.params.alpha.iter_mut().enumerate() {
        if variant != Variant::Rnn {
            *a = ((k * 7 % 11) as f32 - 5.0) * 0.08;
        }
    }
    let p: Params<f64> = agent.model.params.map(f64::from);
    let (hw, hb) = agent.head64();
    let run = |p: &Params<f64>, hw: &[f64], hb: &[f64], forced: Option<&[usize]>, det: Option<&[f64]>| {
        let mut envs = make(&mut episode_rng(5));
        batch_grads_f64(&cfg, p, (hw, hb), &A2C, &mut envs, steps, &mut episode_rng(6), &mut action_rng(7), forced, det)
            .unwrap()
    };
    let r0 = run(&p, &hw, &hb, None, None);
    let (ro, l0, g, (dw, db)) = (r0.rollout, r0.loss, r0.layer, r0.head);
    let acts = ro.actions.clone();
    let det = l0.advantages.clone();
    // The replay reproduces the batch.
    let r2 = run(&p, &hw, &hb, Some(&acts), Some(&det));
    let (ro2, l2) = (r2.rollout, r2.loss);
    assert_eq!(ro2, ro);
    assert_eq!(l2.loss, l0.loss);
    let loss = |p: &Params<f64>, hw: &[f64], hb: &[f64]| run(p, hw, hb, Some(&acts), Some(&det)).loss.loss;
    let eps = 1e-6;
    let mut checked = 0;
    let close = |fd: f64, an: f64, what: &str| {
        assert!(
            (fd - an).abs() <= 1e-7 + 1e-5 * an.abs().max(fd.abs()),
            "{variant:?} {what}: analytic {an:e}, finite differences {fd:e}"
        );
    };
    let frozen = variant.frozen();
    for (name, _) in p.named() {
        if frozen.iter().any(|f| f == name) {
            continue;
        }
        let len = p.named().iter().find(|(n, _)| *n == name).unwrap().1.len();
        for k in 0..len {
            let at = |d: f64| {
                let mut q = p.clone();
                for (n, v) in q.named_mut() {
                    if n == name {
                        v[k] += d;
                    }
                }
                loss(&q, &hw, &hb)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            let an = g.params.named().iter().find(|(n, _)| *n == name).unwrap().1[k];
            close(fd, an, &format!("{name}[{k}]"));
            checked += 1;
        }
    }
    for k in 0..hw.len() {
        let (mut a, mut b) = (hw.clone(), hw.clone());
        a[k] += eps;
        b[k] -= eps;
        close((loss(&p, &a, &hb) - loss(&p, &b, &hb)) / (2.0 * eps), dw[k], &format!("head.out.weight[{k}]"));
    }
    for k in 0..hb.len() {
        let (mut a, mut b) = (hb.clone(), hb.clone());
        a[k] += eps;
        b[k] -= eps;
        close((loss(&p, &hw, &a) - loss(&p, &hw, &b)) / (2.0 * eps), db[k], &format!("head.out.bias[{k}]"));
        checked += 1;
    }
    assert!(checked > 50, "{checked} entries checked");
    // Non-trivial gradients everywhere they should be.
    assert!(g.params.w.iter().any(|v| v.abs() > 1e-6));
    if variant != Variant::Rnn {
        assert!(g.params.alpha.iter().any(|v| v.abs() > 1e-6), "{variant:?}: dα is zero");
    }
    if matches!(variant, Variant::Modulated | Variant::Retroactive) {
        assert!(g.params.mod_v.iter().any(|v| v.abs() > 1e-7), "{variant:?}: dV is zero");
    }

    // The CPU engine (f32, step-at-a-time) on the same batch agrees to f32 precision.
    let mut engine = Engine::new(cfg, Device::Cpu, Options::default()).unwrap();
    let mut envs = make(&mut episode_rng(5));
    let g32 =
        batch_grads(&agent, &mut engine, &A2C, &mut envs, steps, &mut episode_rng(6), &mut action_rng(7), Some(&acts))
            .unwrap();
    assert_eq!(g32.rollout.actions, acts);
    let scale = g.params.w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for ((name, a), (_, b)) in g32.grads.layer.params.named().into_iter().zip(g.params.named()) {
        for (x, y) in a.iter().zip(b.iter()) {
            assert!((*x as f64 - y).abs() <= 2e-4 * scale.max(y.abs()), "{variant:?} cpu vs f64 {name}: {x} vs {y}");
        }
    }
}

#[test]
fn a2c_gradient_cue_reward_every_variant() {
    let cfg = CueRewardConfig { cues: 3, bits: 4, steps: 12 };
    for v in Variant::ALL {
        fd_check(v, |rng| (0..2).map(|_| CueReward::new(cfg, rng).unwrap()).collect(), 12);
    }
}

#[test]
fn a2c_gradient_maze_every_variant() {
    let cfg = MazeConfig { size: 7, steps: 9, reward: 10.0, wall: -0.1 };
    for v in Variant::ALL {
        fd_check(v, |rng| (0..2).map(|_| Maze::new(cfg, rng).unwrap()).collect(), 9);
    }
}
