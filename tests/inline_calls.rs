//! Calls too small to share between threads (`cpu::runs_inline`) run on the
//! calling thread and never wait for a pool. The check: every thread of
//! rayon's global pool is kept busy, and small calls must still finish; a
//! large call, which does use the pool, must wait (so the check can fail).
//! One test in its own binary, since it holds the global pool.

use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use neuroplastic::{Device, Engine, LayerConfig, Options, Params, Rule, Seq};

/// A forward and backward pass of `cfg` on `b` episodes of `t` steps, and the
/// same episodes run step by step.
fn calls(cfg: LayerConfig, b: usize, t: usize) {
    let mut p = Params::<f32>::zeros(&cfg);
    p.w.iter_mut().enumerate().for_each(|(k, w)| *w = ((k % 7) as f32 - 3.0) * 0.02);
    p.u.iter_mut().for_each(|u| *u = 0.1);
    p.alpha.iter_mut().for_each(|a| *a = 0.05);
    p.mod_v.iter_mut().for_each(|v| *v = 0.1);
    p.eta.iter_mut().for_each(|e| *e = 0.1);
    p.eta_e.iter_mut().for_each(|e| *e = 0.1);
    let x: Vec<f32> = (0..b * t * cfg.inputs).map(|k| (k % 5) as f32 * 0.1).collect();
    let mut engine = Engine::new(cfg, Device::Cpu, Options::default()).unwrap();
    let fwd = engine.forward(&p, Seq::new(&x, b, t), None).unwrap();
    let dy = vec![0.1f32; b * t * cfg.n];
    engine.backward(&p, Seq::new(&x, b, t), &fwd, &dy, None).unwrap();
    let mut st = engine.stepper(&p, b, t, None).unwrap();
    for k in 0..t {
        let step: Vec<f32> =
            (0..b).flat_map(|e| x[(e * t + k) * cfg.inputs..(e * t + k + 1) * cfg.inputs].to_vec()).collect();
        st.step(&step).unwrap();
    }
    st.backward(&dy, None).unwrap();
}

#[test]
fn small_calls_never_wait_for_the_pool() {
    assert!(neuroplastic::cpu::runs_inline(&LayerConfig::recurrent(Rule::Modulated, 64, 8), 1, 20));
    assert!(!neuroplastic::cpu::runs_inline(&LayerConfig::recurrent(Rule::Hebb, 400, 8), 2, 8));

    // Occupy every thread of the global pool until `release` is dropped.
    let threads = rayon::current_num_threads();
    let (release, wait) = mpsc::channel::<()>();
    let wait = Arc::new(Mutex::new(wait));
    let busy = Arc::new(Barrier::new(threads + 1));
    for _ in 0..threads {
        let (wait, busy) = (wait.clone(), busy.clone());
        rayon::spawn(move || {
            busy.wait();
            let _ = wait.lock().unwrap().recv();
        });
    }
    busy.wait();

    // A call that uses the pool waits for it: the check can see a wait.
    let (done, finished) = mpsc::channel();
    let large = std::thread::spawn(move || {
        calls(LayerConfig::recurrent(Rule::Hebb, 400, 8), 2, 8);
        done.send(()).unwrap();
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(2)).is_err(),
        "a call of 2 × 8 steps of 400 neurons finished while the pool was busy: it did not use the pool, so this \
         test cannot tell"
    );

    // Small calls of every rule finish without it.
    let (done, small_done) = mpsc::channel();
    std::thread::spawn(move || {
        for rule in Rule::ALL {
            calls(LayerConfig::recurrent(rule, 64, 8), 1, 20);
            calls(LayerConfig::recurrent(rule, 16, 3), 4, 10);
            calls(LayerConfig::feed_forward(rule, 24, 30), 2, 5);
        }
        done.send(()).unwrap();
    });
    let small = small_done.recv_timeout(Duration::from_secs(60));
    drop(release);
    large.join().unwrap();
    finished.recv().unwrap();
    assert!(small.is_ok(), "a small call waited for the busy pool: a parallel loop of it was handed to the pool");
}
