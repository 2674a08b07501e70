//! A2C training runs: bitwise the same on one and two threads, resumed from a
//! checkpoint exactly where they stopped, and bad settings are clear errors.

use neuroplastic::rl::{CueRewardConfig, MazeConfig, RunConfig, RunState, TaskConfig, Variant};
use neuroplastic::{Device, Engine};

fn small(task: TaskConfig, variant: Variant) -> RunConfig {
    RunConfig { hidden: 12, batch: 5, lr: 3e-3, ..RunConfig::paper(task, variant, 4, 17) }
}

fn cue() -> TaskConfig {
    TaskConfig::CueReward(CueRewardConfig { cues: 4, bits: 6, steps: 20 })
}

fn maze() -> TaskConfig {
    TaskConfig::Maze(MazeConfig { steps: 25, ..MazeConfig::default() })
}

fn train(cfg: RunConfig, threads: usize, updates: usize) -> RunState {
    let mut st = RunState::new(cfg).unwrap();
    let mut engine: Engine = st.engine(Device::Cpu, Some(threads)).unwrap();
    for _ in 0..updates {
        st.update(&mut engine).unwrap();
    }
    st
}

#[test]
fn runs_are_bitwise_the_same_on_one_and_two_threads() {
    for (task, v) in [(cue(), Variant::Modulated), (maze(), Variant::Retroactive), (cue(), Variant::Rnn)] {
        let a = train(small(task, v), 1, 3);
        let b = train(small(task, v), 2, 3);
        assert_eq!(a.agent, b.agent, "{v:?}");
        assert_eq!(a.rewards, b.rewards);
        assert_eq!(a.losses, b.losses);
        // The parameters moved.
        assert_ne!(a.agent, RunState::new(small(task, v)).unwrap().agent);
    }
}

#[test]
fn rnn_keeps_alpha_at_zero() {
    let st = train(small(maze(), Variant::Rnn), 2, 3);
    assert!(st.agent.model.params.alpha.iter().all(|&a| a == 0.0));
}

#[test]
fn a_resumed_run_continues_exactly() {
    let dir = std::env::temp_dir().join(format!("neuroplastic-rl-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ck.safetensors");
    for (task, v) in [(cue(), Variant::Plastic), (maze(), Variant::Modulated)] {
        let whole = train(small(task, v), 2, 4);
        let half = train(small(task, v), 2, 2);
        half.write(&path).unwrap();
        let mut back = RunState::read(&path).unwrap();
        assert_eq!(back.agent, half.agent);
        let mut engine = back.engine(Device::Cpu, Some(1)).unwrap();
        for _ in 0..2 {
            back.update(&mut engine).unwrap();
        }
        assert_eq!(back.agent, whole.agent, "{v:?}");
        assert_eq!(back.rewards, whole.rewards);
        assert_eq!(back.opt.state(), whole.opt.state());
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_settings_are_clear_errors() {
    let e = RunState::new(RunConfig { batch: 0, ..small(cue(), Variant::Plastic) }).unwrap_err().to_string();
    assert!(e.contains("batch"), "{e}");
    let e = Variant::parse("hebbian").unwrap_err().to_string();
    assert!(e.contains("unknown variant `hebbian`") && e.contains("modulated"), "{e}");
    let e = RunState::new(small(TaskConfig::Maze(MazeConfig { size: 10, ..MazeConfig::default() }), Variant::Rnn))
        .unwrap_err()
        .to_string();
    assert!(e.contains("maze size"), "{e}");
    let e = RunState::new(small(TaskConfig::CueReward(CueRewardConfig { cues: 1, bits: 4, steps: 10 }), Variant::Rnn))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cues"), "{e}");
}

#[test]
fn learned_rates_stay_in_the_unit_interval() {
    // A learning rate so large that Adam's first steps (±lr per parameter) throw η and η_e
    // out of [0, 1]: the runs must go on, with the rates projected back.
    let mut clamped = 0;
    for seed in 0..4 {
        for v in [Variant::Plastic, Variant::Retroactive] {
            let cfg = RunConfig { lr: 0.5, seed, ..small(cue(), v) };
            let st = train(cfg, 2, 3);
            let p = &st.agent.model.params;
            for &r in p.eta.iter().chain(&p.eta_e) {
                assert!((0.0..=1.0).contains(&r), "{v:?} seed {seed}: rate {r}");
                clamped += (r == 0.0 || r == 1.0) as usize;
            }
        }
    }
    assert!(clamped > 0, "no rate reached a bound: the test proves nothing");
}

#[test]
fn bad_actions_and_empty_batches_are_clear_errors() {
    use neuroplastic::rl::agent::{Agent, batch_grads};
    use neuroplastic::rl::run::action_rng;
    use neuroplastic::rl::{A2cConfig, Maze};
    use neuroplastic::train::episode_rng;
    let cfg = MazeConfig { steps: 4, ..MazeConfig::default() };
    let agent = Agent::new(Variant::Modulated, 9, 4, 8, 0).unwrap();
    let mut engine = Engine::new(agent.model.cfg, Device::Cpu, Default::default()).unwrap();
    let mut rng = episode_rng(0);
    let mut envs: Vec<Maze> = (0..2).map(|_| Maze::new(cfg, &mut rng).unwrap()).collect();
    // A caller replaying actions gives one the maze does not have (4 actions: 0..4).
    let forced = [0, 1, 2, 3, 0, 7, 1, 1];
    let e = batch_grads(
        &agent,
        &mut engine,
        &A2cConfig::default(),
        &mut envs,
        4,
        &mut rng,
        &mut action_rng(0),
        Some(&forced),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("action") && e.contains("0..4"), "{e}");
    // Forced actions of the wrong length.
    let e = batch_grads(
        &agent,
        &mut engine,
        &A2cConfig::default(),
        &mut envs,
        4,
        &mut rng,
        &mut action_rng(0),
        Some(&[0; 3]),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("forced actions"), "{e}");
    // No environments: an empty batch.
    let mut none: Vec<Maze> = Vec::new();
    let e = batch_grads(&agent, &mut engine, &A2cConfig::default(), &mut none, 4, &mut rng, &mut action_rng(0), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("batch"), "{e}");
}
