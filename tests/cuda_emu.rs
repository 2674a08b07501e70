//! The CUDA kernels (`kernels/*.cu`) run on the CPU through the emulation of
//! the `neuroplastic-emu` crate (each block's threads are fibers resumed in a
//! seeded random order at every barrier and warp shuffle), driven by the
//! CUDA backend's own episode driver (`cuda::forward`, `cuda::backward`),
//! and compared with the f64 reference and with the CPU backend: every rule,
//! α shape, activation, topology and modulator option, on odd shapes (more
//! than one block of rows, more than one column tile), several seeds,
//! checkpoint intervals and truncations. One test shows that a missing
//! `__syncthreads` in a kernel gives wrong answers here.

#[allow(dead_code)] // Shared with other tests; this one draws through `vec`.
mod common;

use std::ffi::c_void;

use common::Rng;
use neuroplastic::cuda::{self, Launcher, NpArgs};
use neuroplastic::testing::backend::{self, FnDriver, Outputs, Problem, check_cases};
use neuroplastic::{
    Activation, Checkpoint, Device, Engine, Error, InputMap, LayerConfig, Options, Params, Result, Rule, Seq, State,
    Truncation, reference,
};

/// A host allocation that the emulated kernels read and write through its
/// address, as GPU kernels would through a device pointer.
struct HostBuf {
    ptr: *mut f32,
    len: usize,
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` come from `Box::into_raw` of a boxed slice.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
    }
}

/// The emulated device: launches go to `neuroplastic_emu::launch`, each with
/// its own scheduling seed.
struct Emu {
    seed: u64,
    faulty: bool,
    launches: u64,
}

impl Emu {
    fn new(seed: u64) -> Self {
        Emu { seed, faulty: false, launches: 0 }
    }
}

impl Launcher for Emu {
    type Buf = HostBuf;
    fn alloc(&mut self, len: usize) -> Result<HostBuf> {
        self.upload(&vec![0.0; len])
    }
    fn upload(&mut self, data: &[f32]) -> Result<HostBuf> {
        // One element at least, so that every buffer has an address.
        let mut v = data.to_vec();
        if v.is_empty() {
            v.push(0.0);
        }
        let len = v.len();
        Ok(HostBuf { ptr: Box::into_raw(v.into_boxed_slice()) as *mut f32, len })
    }
    fn download(&mut self, buf: &HostBuf, len: usize) -> Result<Vec<f32>> {
        assert!(len <= buf.len);
        // SAFETY: in bounds; no launch runs while this copy is made.
        Ok(unsafe { std::slice::from_raw_parts(buf.ptr, len) }.to_vec())
    }
    fn addr(&mut self, buf: &HostBuf) -> u64 {
        buf.ptr as u64
    }
    fn launch(&mut self, kernel: &'static str, grid: (u32, u32), threads: u32, args: &NpArgs) -> Result<()> {
        self.launches += 1;
        let seed = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(self.launches);
        // SAFETY: every address in `args` is a live HostBuf of the size the
        // driver computed for the launch's shapes.
        unsafe {
            neuroplastic_emu::launch(kernel, self.faulty, grid, threads, args as *const NpArgs as *const c_void, seed)
        }
        .map_err(|message| Error::Config { arg: "emulated launch".into(), message })
    }
}

/// Everything a case produces, as named f64 tensors.
fn outputs(y: &[f32], last: &State<f32>, g: &neuroplastic::Gradients<f32>) -> Vec<(String, Vec<f64>)> {
    let to = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mut v = vec![
        ("y".to_string(), to(y)),
        ("last.h".into(), to(&last.h)),
        ("last.hebb".into(), to(&last.hebb)),
        ("last.elig".into(), to(&last.elig)),
    ];
    v.extend(g.params.named().into_iter().map(|(n, t)| (format!("grad {n}"), to(t))));
    v.extend([
        ("grad inputs".into(), to(&g.inputs)),
        ("grad init.h".into(), to(&g.init.h)),
        ("grad init.hebb".into(), to(&g.init.hebb)),
        ("grad init.elig".into(), to(&g.init.elig)),
    ]);
    v
}

/// Largest error relative to the tensor's largest magnitude (and to the
/// largest gradient, for gradients far smaller than the others).
fn compare(what: &str, got: &[(String, Vec<f64>)], want: &[(String, Vec<f64>)], tol: f64) -> Vec<String> {
    let gmax = want[4..].iter().flat_map(|(_, v)| v).fold(0.0f64, |m, v| m.max(v.abs()));
    let mut errs = Vec::new();
    for (k, ((name, a), (_, w))) in got.iter().zip(want).enumerate() {
        if a.len() != w.len() {
            errs.push(format!("{what} {name}: {} elements, expected {}", a.len(), w.len()));
            continue;
        }
        let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(if k >= 4 { 1e-3 * gmax } else { 1e-6 });
        let (at, err) = a.iter().zip(w).enumerate().fold((0, 0.0f64), |(bi, be), (i, (a, w))| {
            let e = (a - w).abs();
            if e > be || e.is_nan() { (i, e) } else { (bi, be) }
        });
        if err.is_nan() || err > tol * scale {
            errs.push(format!(
                "{what} {name}: max error {err:e} at {at} (got {}, want {}), scale {scale:e}",
                a[at], w[at]
            ));
        }
    }
    errs
}

struct Case {
    cfg: LayerConfig,
    batch: usize,
    steps: usize,
    seed: u64,
    checkpoint: Checkpoint,
    truncate: Truncation,
    init: bool,
    dlast: bool,
}

fn case(cfg: LayerConfig, seed: u64) -> Case {
    Case {
        cfg,
        batch: 3,
        steps: 5,
        seed,
        checkpoint: Checkpoint::Every(2),
        truncate: Truncation::None,
        init: true,
        dlast: true,
    }
}

struct Data {
    p: Params<f32>,
    xs: Vec<f32>,
    init: Option<State<f32>>,
    dy: Vec<f32>,
    dlast: Option<State<f32>>,
}

fn data(c: &Case) -> Data {
    let cfg = &c.cfg;
    let mut rng = Rng::new(c.seed);
    let mut f = |len: usize, s: f64| rng.vec(len, -s, s).into_iter().map(|v| v as f32).collect::<Vec<f32>>();
    let mut p = Params::<f32>::zeros(cfg);
    let (i, n) = (cfg.pre() as f64, cfg.n as f64);
    let gain = if cfg.activation == Activation::Identity { 0.5 } else { 1.0 };
    p.w = f(p.w.len(), gain * 1.2 / i.sqrt());
    p.alpha = f(p.alpha.len(), gain * 0.8 / i.sqrt().min(2.0));
    p.u = f(p.u.len(), 1.0 / (cfg.inputs.max(1) as f64).sqrt());
    p.b = f(p.b.len(), 0.3);
    p.mod_v = f(p.mod_v.len(), 2.0 / n.sqrt());
    p.mod_c = f(p.mod_c.len(), 0.5);
    p.fanout = f(p.fanout.len(), 1.0);
    p.fanout_bias = f(p.fanout_bias.len(), 0.5);
    for e in p.eta.iter_mut().chain(p.eta_e.iter_mut()) {
        *e = 0.5 + 0.4 * f(1, 1.0)[0];
    }
    let xs = f(c.batch * c.steps * cfg.inputs, 1.0);
    let mut state = |s: f64| {
        let mut st = State::<f32>::zeros(cfg, c.batch);
        st.h = f(st.h.len(), s);
        st.hebb = f(st.hebb.len(), s);
        st.elig = f(st.elig.len(), s);
        st
    };
    let init = c.init.then(|| state(0.6));
    let dlast = c.dlast.then(|| state(1.0));
    let dy = f(c.batch * c.steps * cfg.n, 1.0);
    Data { p, xs, init, dy, dlast }
}

/// The smallest relative distance of a pre-clip value from the clip bound:
/// f32 and f64 may disagree on which side of it a value near it falls.
fn clip_margin(c: &Case, d: &Data) -> f64 {
    let p = d.p.map(f64::from);
    let xs: Vec<f64> = d.xs.iter().map(|&v| v as f64).collect();
    let init = d.init.as_ref().map(|s| s.map(f64::from));
    let z = reference::preclip(&c.cfg, &p, Seq::new(&xs, c.batch, c.steps), init.as_ref()).unwrap();
    z.iter().fold(f64::INFINITY, |m, z| m.min((z.abs() - c.cfg.clip).abs() / c.cfg.clip))
}

fn run_emu(c: &Case, d: &Data, emu: &mut Emu) -> Result<Vec<(String, Vec<f64>)>> {
    let xs = Seq::new(&d.xs, c.batch, c.steps);
    let opts = Options { checkpoint: c.checkpoint, truncate: c.truncate, ..Options::default() };
    let (y, last, saved) = cuda::plastic_fwd(emu, &c.cfg, &d.p, xs, d.init.as_ref(), &opts)?;
    let g = cuda::plastic_bwd(emu, &c.cfg, &d.p, xs, &saved, &d.dy, d.dlast.as_ref(), &opts)?;
    Ok(outputs(&y, &last, &g))
}

fn run_on(c: &Case, d: &Data, device: Device) -> Vec<(String, Vec<f64>)> {
    let opts = Options { checkpoint: c.checkpoint, truncate: c.truncate, ..Options::default() };
    let mut eng = Engine::new(c.cfg, device, opts).unwrap();
    let xs = Seq::new(&d.xs, c.batch, c.steps);
    let fwd = eng.forward(&d.p, xs, d.init.as_ref()).unwrap();
    let g = eng.backward(&d.p, xs, &fwd, &d.dy, d.dlast.as_ref()).unwrap();
    outputs(&fwd.y, &fwd.last, &g)
}

/// Runs `c` through the emulation (two scheduling seeds) and compares with
/// the reference (f64) and the CPU backend. Moves to the next data seed while
/// the trajectory passes within 1e-4 of a clip bound.
fn check(mut c: Case) {
    let mut d = data(&c);
    while c.cfg.rule.is_clipped() && clip_margin(&c, &d) < 1e-4 {
        c.seed += 1000;
        d = data(&c);
    }
    let want = run_on(&c, &d, Device::Reference);
    let cpu = run_on(&c, &d, Device::Cpu);
    let mut errs = Vec::new();
    for sched in [1, 2] {
        let got = run_emu(&c, &d, &mut Emu::new(c.seed ^ sched)).unwrap();
        errs.extend(compare("emulated CUDA vs reference", &got, &want, 2e-4));
        errs.extend(compare("emulated CUDA vs CPU", &got, &cpu, 2e-4));
    }
    assert!(
        errs.is_empty(),
        "{:?} B = {} T = {} seed {} {:?} {:?}\n{}",
        c.cfg,
        c.batch,
        c.steps,
        c.seed,
        c.checkpoint,
        c.truncate,
        errs.join("\n")
    );
}

fn layer(rule: Rule, recurrent: bool, n: usize, x: usize) -> LayerConfig {
    if recurrent { LayerConfig::recurrent(rule, n, x) } else { LayerConfig::feed_forward(rule, x, n) }
}

/// The emulated CUDA backend as a driver of the shared test body
/// (`neuroplastic::testing::backend`, the one the CPU backend's tests use):
/// a fresh emulated device per problem, scheduling seeds varying by problem.
fn emulated() -> FnDriver<impl FnMut(&Problem) -> std::result::Result<Outputs, String>> {
    let mut count = 0u64;
    FnDriver {
        name: "cuda-emulated".into(),
        run: move |p: &Problem| {
            count += 1;
            let mut emu = Emu::new(count);
            let s = |e: Error| e.to_string();
            let xs = Seq::new(&p.inputs, p.batch, p.steps);
            let (y, last, saved) =
                cuda::plastic_fwd(&mut emu, &p.cfg, &p.params, xs, p.init.as_ref(), &p.opts).map_err(s)?;
            let grads = cuda::plastic_bwd(&mut emu, &p.cfg, &p.params, xs, &saved, &p.dy, p.dlast.as_ref(), &p.opts)
                .map_err(s)?;
            Ok(Outputs { y, last, grads })
        },
    }
}

fn check_shared(cases: &[backend::Case]) {
    let report = check_cases(cases, &mut emulated());
    println!("{}", report.summary());
    assert!(report.ok(), "{}", report.summary());
    assert_eq!(report.passed, cases.len());
}

/// Every rule × α shape × activation × topology × rate mode (N = 11: two
/// blocks of rows, the second partly empty), against the reference.
#[test]
fn every_layer_variant() {
    check_shared(&backend::layer_variant_cases());
}

/// Every modulator option (K, μ, bias, fan-out, fan-out bias), against the reference.
#[test]
fn every_modulator_variant() {
    check_shared(&backend::modulator_cases());
}

/// Every truncation with every rule under three checkpoint policies, against the reference.
#[test]
fn every_truncation() {
    check_shared(&backend::truncation_cases());
}

/// Whole episodes against the CPU backend as well as the reference, on
/// every rule, both topologies, several checkpoint intervals and truncations,
/// and batches split into several chunks of the backward pass.
#[test]
fn episodes_match_the_cpu_backend() {
    let mut seed = 400;
    for rule in Rule::ALL {
        for recurrent in [true, false] {
            for (checkpoint, truncate) in [
                (Checkpoint::All, Truncation::None),
                (Checkpoint::Every(3), Truncation::Last(5)),
                (Checkpoint::Every(4), Truncation::Windows(3)),
            ] {
                let mut cfg = layer(rule, recurrent, 9, 6);
                cfg.clip = 0.5;
                let mut c = case(cfg, seed);
                (c.steps, c.checkpoint, c.truncate) = (7, checkpoint, truncate);
                // B = 11: two chunks of episodes in the backward pass (8 and 3).
                if checkpoint == Checkpoint::All {
                    (c.batch, c.steps) = (11, 4);
                }
                check(c);
                seed += 1;
            }
        }
    }
}

/// Every kernel, one step at a time (T = 1: the drive, the step, the final
/// update, the backward pass and finish, the first step's pass, the gradient
/// kernels), on odd shapes (N = 1, 9, 33 rows: a partial block of rows; B = 1
/// and 9: one and two chunks of episodes) over three seeds each, against the
/// reference and the CPU backend.
#[test]
fn single_steps_on_odd_shapes() {
    let mut seed = 600;
    for rule in Rule::ALL {
        for (n, x, batch, recurrent) in [(1, 3, 1, true), (9, 5, 9, false), (33, 2, 2, true)] {
            for _ in 0..3 {
                let mut cfg = layer(rule, recurrent, n, x);
                cfg.clip = 0.3;
                cfg.bias = seed % 2 == 0;
                let mut c = case(cfg, seed);
                (c.batch, c.steps, c.checkpoint) = (batch, 1, Checkpoint::Auto);
                check(c);
                seed += 1;
            }
        }
    }
}

#[test]
fn direct_input_and_wide_rows() {
    // Direct input map; a feed-forward layer with I = 133 > 128 columns (two
    // column tiles of the backward pass) and N = 17 (three blocks of rows).
    for (seed, rule) in Rule::ALL.into_iter().enumerate() {
        let mut cfg = LayerConfig::recurrent(rule, 13, 13);
        cfg.input_map = InputMap::Direct;
        check(case(cfg, 200 + seed as u64));
        let mut cfg = LayerConfig::feed_forward(rule, 133, 17);
        cfg.clip = 0.5;
        let mut c = case(cfg, 300 + seed as u64);
        c.batch = 2;
        c.steps = 3;
        check(c);
    }
}

/// The emulation is only worth something if it catches races: the build of
/// the kernels without the first barrier of `np_block_sum` (the modulator's
/// reduction over the block, in the forward and backward kernels) must give
/// wrong outputs for some scheduling seed, while the correct build never does.
#[test]
fn missing_barrier_is_caught() {
    let mut cfg = LayerConfig::recurrent(Rule::Modulated, 70, 3);
    cfg.clip = 10.0;
    let c = case(cfg, 7);
    let d = data(&c);
    let want = run_on(&c, &d, Device::Reference);
    let mut caught = 0;
    for sched in 0..4 {
        let good = run_emu(&c, &d, &mut Emu::new(sched)).unwrap();
        let errs = compare("correct build", &good, &want, 2e-4);
        assert!(errs.is_empty(), "{}", errs.join("\n"));
        let mut emu = Emu::new(sched);
        emu.faulty = true;
        match run_emu(&c, &d, &mut emu) {
            Ok(bad) => caught += !compare("faulty build", &bad, &want, 2e-4).is_empty() as usize,
            Err(_) => caught += 1,
        }
    }
    assert!(caught >= 3, "the emulation missed the dropped barrier in {} of 4 schedules", 4 - caught);
}

/// The emulation's warp shuffles behave as the GPU's where the GPU defines
/// them, and turn what it leaves undefined into a visible failure: a source
/// lane outside the mask reads NaN, and a mask naming a lane that never
/// arrives is an error rather than a hang.
#[test]
fn shuffles_with_a_wrong_mask_are_caught() {
    let input: Vec<f32> = (0..32).map(|l| l as f32).collect();
    let run = |callers: u32, mask: u32, dist: i32, seed: u64| -> std::result::Result<Vec<f32>, String> {
        let mut out = vec![0.0f32; 32];
        let args = NpArgs {
            h_src: input.as_ptr() as u64,
            h_dst: out.as_mut_ptr() as u64,
            nblk: callers as i32,
            flags: mask as i32,
            mode: dist,
            ..NpArgs::default()
        };
        // SAFETY: the self-test kernel reads and writes 32 floats at h_src, h_dst.
        unsafe {
            neuroplastic_emu::launch(
                "emu_selftest_shuffle",
                false,
                (1, 1),
                32,
                &args as *const NpArgs as *const c_void,
                seed,
            )
        }?;
        Ok(out)
    };
    for seed in 0..3 {
        // Full mask: lane l gets lane l ^ 5.
        let out = run(u32::MAX, u32::MAX, 5, seed).unwrap();
        assert!(out.iter().enumerate().all(|(l, &v)| v == (l ^ 5) as f32), "{out:?}");
        // Half the warp, reading across the mask's border: NaN, not a stale value.
        let out = run(0xffff, 0xffff, 16, seed).unwrap();
        assert!(out[..16].iter().all(|v| v.is_nan()) && out[16..] == input[16..], "{out:?}");
        // Half the warp calls with the full mask: the other half never arrives.
        let err = run(0xffff, u32::MAX, 1, seed).unwrap_err();
        assert!(err.contains("exited") || err.contains("deadlock"), "{err}");
    }
}
