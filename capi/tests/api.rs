//! The C interface called from Rust: it returns what the Rust engine returns,
//! bit for bit, and every bad argument is a status with a message naming it.

use std::ffi::CStr;
use std::ptr::{null, null_mut};

use neuroplastic::{Device, Engine, LayerConfig, Options, Params, Rule, Seq, State};
use neuroplastic_c::*;

fn last_error() -> String {
    // SAFETY: np_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(np_last_error()) }.to_string_lossy().into_owned()
}

/// Asserts status `want` and that the message contains every needle.
fn expect(status: NpStatus, want: NpStatus, needles: &[&str]) {
    let msg = last_error();
    assert_eq!(status, want, "status {status}, message {msg:?}");
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} lacks {n:?}");
    }
}

fn fill(len: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (((*seed >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

struct Setup {
    cfg: NpLayerConfig,
    layer: *mut NpLayer,
    params: Vec<f32>,
}

/// A recurrent retroactive layer (`N = 5`, `X = 3`) with bias and fan-out, on the CPU.
fn setup(device: u32) -> Setup {
    let mut cfg = std::mem::MaybeUninit::<NpLayerConfig>::uninit();
    // SAFETY: valid out-pointers throughout.
    unsafe {
        assert_eq!(np_layer_config_init(cfg.as_mut_ptr(), NP_RULE_RETROACTIVE, NP_TOPOLOGY_RECURRENT, 5, 3), NP_OK);
        let mut cfg = cfg.assume_init();
        cfg.bias = 1;
        cfg.mod_fanout = 1;
        cfg.clip = 0.7;
        let mut layer = null_mut();
        assert_eq!(np_layer_new(&cfg, device, 0, null(), &mut layer), NP_OK, "{}", last_error());
        let mut plen = 0;
        assert_eq!(np_layer_param_len(layer, &mut plen), NP_OK);
        let mut seed = 3;
        let mut params = fill(plen, &mut seed, 0.6);
        let (mut off, mut len, mut name) = (0, 0, null());
        for k in 0..NP_PARAM_TENSORS {
            assert_eq!(np_layer_param_tensor(layer, k, &mut name, &mut off, &mut len), NP_OK);
            if CStr::from_ptr(name).to_str().unwrap() == "eta_e" {
                assert_eq!(len, 1);
                params[off] = 0.4;
            }
        }
        assert_eq!(np_layer_set_params(layer, params.as_ptr(), plen), NP_OK, "{}", last_error());
        Setup { cfg, layer, params }
    }
}

fn rust_config() -> LayerConfig {
    let mut cfg = LayerConfig::recurrent(Rule::Retroactive, 5, 3);
    cfg.bias = true;
    cfg.modulator.fanout = true;
    cfg.clip = 0.7;
    cfg
}

#[test]
fn the_c_calls_return_what_the_engine_returns() {
    let (b, t) = (3, 6);
    let s = setup(NP_DEVICE_CPU);
    let rcfg = rust_config();
    let mut seed = 11;
    let xs = fill(b * t * 3, &mut seed, 1.0);
    let mut slen = 0;
    // SAFETY: valid pointers and lengths throughout.
    unsafe { assert_eq!(np_layer_state_len(s.layer, b, &mut slen), NP_OK) };
    assert_eq!(slen, b * 5 + 2 * b * 25);
    let init = fill(slen, &mut seed, 0.5);
    let dy = fill(b * t * 5, &mut seed, 1.0);
    let dlast = fill(slen, &mut seed, 1.0);

    let mut fwd = null_mut();
    let mut y = vec![0.0f32; b * t * 5];
    let mut last = vec![0.0f32; slen];
    let mut gp = vec![0.0f32; s.params.len()];
    let mut gi = vec![0.0f32; xs.len()];
    let mut gs = vec![0.0f32; slen];
    // SAFETY: as above.
    unsafe {
        let st = np_forward(s.layer, xs.as_ptr(), xs.len(), b, t, init.as_ptr(), init.len(), &mut fwd);
        assert_eq!(st, NP_OK, "{}", last_error());
        assert_eq!(np_forward_y(fwd, y.as_mut_ptr(), y.len()), NP_OK);
        assert_eq!(np_forward_last(fwd, last.as_mut_ptr(), last.len()), NP_OK);
        let st = np_backward(
            s.layer,
            fwd,
            dy.as_ptr(),
            dy.len(),
            dlast.as_ptr(),
            dlast.len(),
            gp.as_mut_ptr(),
            gp.len(),
            gi.as_mut_ptr(),
            gi.len(),
            gs.as_mut_ptr(),
            gs.len(),
        );
        assert_eq!(st, NP_OK, "{}", last_error());
        np_forward_free(fwd);
        np_layer_free(s.layer);
    }

    let mut p = Params::<f32>::zeros(&rcfg);
    let mut at = 0;
    for (_, v) in p.named_mut() {
        let n = v.len();
        v.copy_from_slice(&s.params[at..at + n]);
        at += n;
    }
    let state = |flat: &[f32]| State {
        h: flat[..b * 5].to_vec(),
        hebb: flat[b * 5..b * 5 + b * 25].to_vec(),
        elig: flat[b * 5 + b * 25..].to_vec(),
    };
    let mut eng = Engine::new(rcfg, Device::Cpu, Options::default()).unwrap();
    let f = eng.forward(&p, Seq::new(&xs, b, t), Some(&state(&init))).unwrap();
    let g = eng.backward(&p, Seq::new(&xs, b, t), &f, &dy, Some(&state(&dlast))).unwrap();
    assert_eq!(y, f.y);
    assert_eq!(state(&last), f.last);
    let flat: Vec<f32> = g.params.named().iter().flat_map(|(_, v)| v.iter().copied()).collect();
    assert_eq!(gp, flat);
    assert_eq!(gi, g.inputs);
    assert_eq!(state(&gs), g.init);
    assert!(gp.iter().any(|v| *v != 0.0));
}

#[test]
fn null_pointers_are_named() {
    let s = setup(NP_DEVICE_REFERENCE);
    let x = [0.0f32; 3];
    let mut fwd = null_mut();
    let mut n = 0;
    // SAFETY: every call gets a NULL where the test says and valid pointers elsewhere.
    unsafe {
        expect(np_layer_new(null(), NP_DEVICE_CPU, 0, null(), &mut null_mut()), NP_ERR_NULL, &["config is NULL"]);
        expect(np_layer_new(&s.cfg, NP_DEVICE_CPU, 0, null(), null_mut()), NP_ERR_NULL, &["out is NULL"]);
        expect(np_layer_param_len(null(), &mut n), NP_ERR_NULL, &["layer is NULL"]);
        expect(np_forward(s.layer, null(), 3, 1, 1, null(), 0, &mut fwd), NP_ERR_NULL, &["inputs is NULL", "3"]);
        assert!(fwd.is_null());
        expect(np_forward(null_mut(), x.as_ptr(), 3, 1, 1, null(), 0, &mut fwd), NP_ERR_NULL, &["layer is NULL"]);
        let dy = [0.0f32; 5];
        expect(
            np_backward(s.layer, null(), dy.as_ptr(), 5, null(), 0, null_mut(), 0, null_mut(), 0, null_mut(), 0),
            NP_ERR_NULL,
            &["fwd is NULL"],
        );
        assert_eq!(np_forward(s.layer, x.as_ptr(), 3, 1, 1, null(), 0, &mut fwd), NP_OK);
        expect(
            np_backward(s.layer, fwd, dy.as_ptr(), 5, null(), 0, null_mut(), 7, null_mut(), 0, null_mut(), 0),
            NP_ERR_NULL,
            &["grad_params is NULL but its length is 7"],
        );
        // Outputs not wanted: NULL with length 0 is fine.
        let st = np_backward(s.layer, fwd, dy.as_ptr(), 5, null(), 0, null_mut(), 0, null_mut(), 0, null_mut(), 0);
        assert_eq!(st, NP_OK, "{}", last_error());
        np_forward_free(fwd);
        np_forward_free(null_mut());
        np_layer_free(s.layer);
        np_layer_free(null_mut());
    }
}

#[test]
fn wrong_lengths_and_values_are_named() {
    let s = setup(NP_DEVICE_CPU);
    let (b, t) = (2, 3);
    let x = vec![0.1f32; b * t * 3];
    let mut fwd = null_mut();
    // SAFETY: every pointer is valid for at least the length passed.
    unsafe {
        let st = np_forward(s.layer, x.as_ptr(), x.len() - 1, b, t, null(), 0, &mut fwd);
        expect(st, NP_ERR_INVALID, &["inputs", "(2, 3, 3)", "17"]);
        let init = [0.0f32; 10];
        let st = np_forward(s.layer, x.as_ptr(), x.len(), b, t, init.as_ptr(), init.len(), &mut fwd);
        expect(st, NP_ERR_INVALID, &["init: expected 110 floats", "got 10", "hebb [2, 5, 5]"]);
        expect(np_layer_set_params(s.layer, s.params.as_ptr(), 4), NP_ERR_INVALID, &["params: expected", "got 4"]);
        let mut bad = s.params.clone();
        let mut off = 0;
        np_layer_param_tensor(s.layer, 3, null_mut(), &mut off, null_mut());
        bad[off] = 1.5;
        expect(np_layer_set_params(s.layer, bad.as_ptr(), bad.len()), NP_ERR_INVALID, &["params.eta_e", "1.5"]);
        expect(np_layer_param_tensor(s.layer, 10, null_mut(), null_mut(), null_mut()), NP_ERR_INVALID, &["index = 10"]);

        assert_eq!(np_forward(s.layer, x.as_ptr(), x.len(), b, t, null(), 0, &mut fwd), NP_OK);
        let mut y = vec![0.0f32; 7];
        expect(np_forward_y(fwd, y.as_mut_ptr(), y.len()), NP_ERR_INVALID, &["out: expected 30 floats"]);
        let dy = vec![0.0f32; b * t * 5];
        let mut gi = vec![0.0f32; 4];
        let st = np_backward(
            s.layer,
            fwd,
            dy.as_ptr(),
            dy.len(),
            null(),
            0,
            null_mut(),
            0,
            gi.as_mut_ptr(),
            4,
            null_mut(),
            0,
        );
        expect(st, NP_ERR_INVALID, &["grad_inputs: expected 18 floats", "(2, 3, 3)"]);
        let dlast = [0.0f32; 3];
        let st = np_backward(
            s.layer,
            fwd,
            dy.as_ptr(),
            dy.len(),
            dlast.as_ptr(),
            3,
            null_mut(),
            0,
            null_mut(),
            0,
            null_mut(),
            0,
        );
        expect(st, NP_ERR_INVALID, &["dlast: expected 110 floats"]);
        np_forward_free(fwd);

        let mut cfg = s.cfg;
        cfg.rule = 9;
        expect(
            np_layer_new(&cfg, NP_DEVICE_CPU, 0, null(), &mut null_mut()),
            NP_ERR_INVALID,
            &["config.rule = 9", "NP_RULE_HEBB"],
        );
        let mut cfg = s.cfg;
        cfg.bias = 2;
        expect(np_layer_new(&cfg, NP_DEVICE_CPU, 0, null(), &mut null_mut()), NP_ERR_INVALID, &["config.bias = 2"]);
        let mut cfg = s.cfg;
        cfg.n = 0;
        expect(np_layer_new(&cfg, NP_DEVICE_CPU, 0, null(), &mut null_mut()), NP_ERR_INVALID, &["N"]);
        expect(np_layer_new(&s.cfg, 7, 0, null(), &mut null_mut()), NP_ERR_INVALID, &["device = 7"]);
        let mut opts = std::mem::MaybeUninit::<NpOptions>::uninit();
        assert_eq!(np_options_init(opts.as_mut_ptr()), NP_OK);
        let mut opts = opts.assume_init();
        opts.checkpoint = NP_CHECKPOINT_EVERY;
        opts.checkpoint_every = 0;
        expect(np_layer_new(&s.cfg, NP_DEVICE_CPU, 0, &opts, &mut null_mut()), NP_ERR_INVALID, &["options.checkpoint"]);
        opts.checkpoint = 5;
        expect(
            np_layer_new(&s.cfg, NP_DEVICE_CPU, 0, &opts, &mut null_mut()),
            NP_ERR_INVALID,
            &["options.checkpoint = 5"],
        );
        np_layer_free(s.layer);
    }
}

#[test]
fn cuda_is_unavailable_with_a_reason() {
    let s = setup(NP_DEVICE_CPU);
    let mut out = std::ptr::dangling_mut::<NpLayer>();
    // SAFETY: valid pointers.
    unsafe {
        expect(np_layer_new(&s.cfg, NP_DEVICE_CUDA, 0, null(), &mut out), NP_ERR_UNAVAILABLE, &["cuda:0"]);
        assert!(out.is_null(), "a failed create leaves *out NULL");
        np_layer_free(s.layer);
    }
}

#[test]
fn the_last_error_belongs_to_its_thread() {
    // SAFETY: a NULL out-pointer is an error, not undefined behaviour.
    let st = unsafe { np_options_init(null_mut()) };
    expect(st, NP_ERR_NULL, &["out is NULL"]);
    let other = std::thread::spawn(last_error).join().unwrap();
    assert_eq!(other, "");
    assert!(last_error().contains("out is NULL"));
}

/// The widths of [`meta_case`]'s stacks (statics: `NpMeta` points at them).
static META_RLN: [usize; 3] = [4, 7, 6];
static META_PLN: [usize; 3] = [6, 5, 2];
static META_NM: [usize; 3] = [4, 5, 6];

/// An ANML-shaped learner (RLN 4 → 7 → 6, PLN 6 → 5 → 2, NM 4 → 5 → 6 gating
/// PLN layer 0; mse, second order, clamp 0.5, learned β = 0.3) for the C
/// calls, the same learner for the crate, its flat parameters (β last) and
/// a trajectory of 3 tasks of 4 inner steps (Bi = 5, Bo = 6).
fn meta_case() -> (NpMeta, neuroplastic::meta::MetaModel<f32>, Vec<f32>, neuroplastic::meta::Trajectory<f32>) {
    use neuroplastic::meta::{Loss, MetaConfig, MetaModel, Order, Trajectory};
    let (p, s, bi, bo) = (3usize, 4usize, 5usize, 6usize);
    let meta = NpMeta {
        loss: NP_META_MSE,
        order: NP_META_SECOND,
        truncate: 0,
        clamp: 0.5,
        gate_at: 0,
        learn_lr: 1,
        inner_lr: 0.0,
        rln: META_RLN.as_ptr(),
        rln_len: 3,
        pln: META_PLN.as_ptr(),
        pln_len: 3,
        nm: META_NM.as_ptr(),
        nm_len: 3,
    };
    let mut len = 0usize;
    // SAFETY: valid pointers throughout.
    assert_eq!(unsafe { np_meta_param_len(&meta, &mut len) }, NP_OK);
    let cfg = MetaConfig {
        loss: Loss::Mse,
        inner_lr: 0.3,
        learn_lr: true,
        order: Order::Second,
        truncate: 0,
        clamp: 0.5,
        gate_at: 0,
    };
    let mut m = MetaModel::<f32>::zeros(cfg, 4, &META_RLN, &META_PLN, &META_NM);
    assert_eq!(len, m.rln_p.len() + m.theta0.len() + m.nm_p.len() + 1);
    let mut seed = 7u64;
    let mut params = fill(len, &mut seed, 0.5);
    params[len - 1] = 0.3;
    let (nr, np) = (m.rln_p.len(), m.theta0.len());
    m.rln_p.copy_from_slice(&params[..nr]);
    m.theta0.copy_from_slice(&params[nr..nr + np]);
    m.nm_p.copy_from_slice(&params[nr + np..len - 1]);
    m.inner_lr = 0.3;
    let t = Trajectory {
        p,
        s,
        bi,
        bo,
        d: 4,
        ycols: 2,
        inner_x: fill(p * s * bi * 4, &mut seed, 1.5),
        inner_y: fill(p * s * bi * 2, &mut seed, 1.5),
        outer_x: fill(p * bo * 4, &mut seed, 1.5),
        outer_y: fill(p * bo * 2, &mut seed, 1.5),
    };
    (meta, m, params, t)
}

/// The meta-gradient through C: bit for bit the crate's, on both devices,
/// for an ANML-shaped learner with a learned β; every bad argument named.
#[test]
fn meta_grad_returns_the_engines_result_and_names_bad_arguments() {
    use neuroplastic::meta::{cpu, reference};
    let (meta, m, params, t) = meta_case();
    let (p, s, bi, bo) = (t.p, t.s, t.bi, t.bo);
    let mut len = params.len();
    let call = |meta: &NpMeta, device: u32, params: &[f32], grad: &mut [f32], loss: &mut f64, ix: &[f32]| -> NpStatus {
        // SAFETY: every pointer comes from a live slice of its stated length.
        unsafe {
            np_meta_grad(
                meta,
                device,
                params.as_ptr(),
                params.len(),
                p,
                s,
                bi,
                bo,
                ix.as_ptr(),
                ix.len(),
                t.inner_y.as_ptr(),
                t.inner_y.len(),
                t.outer_x.as_ptr(),
                t.outer_x.len(),
                t.outer_y.as_ptr(),
                t.outer_y.len(),
                loss,
                grad.as_mut_ptr(),
                grad.len(),
            )
        }
    };
    let flat = |g: &neuroplastic::meta::MetaGrads<f32>| [&g.rln[..], &g.pln[..], &g.nm[..], &[g.inner_lr][..]].concat();
    let want = cpu::meta_grad(&m, &t).unwrap();
    let (mut grad, mut loss) = (vec![0f32; len], 0f64);
    assert_eq!(call(&meta, NP_DEVICE_CPU, &params, &mut grad, &mut loss, &t.inner_x), NP_OK, "{}", last_error());
    assert_eq!((loss, grad.clone()), (want.loss, flat(&want)), "C ≠ Rust on the CPU");
    let r = reference::meta_grad(&m.cast::<f64>(), &t.cast::<f64>()).unwrap();
    assert_eq!(call(&meta, NP_DEVICE_REFERENCE, &params, &mut grad, &mut loss, &t.inner_x), NP_OK, "{}", last_error());
    let rf: Vec<f32> =
        [&r.rln[..], &r.pln[..], &r.nm[..], &[r.inner_lr][..]].concat().iter().map(|&x| x as f32).collect();
    assert_eq!((loss, grad.clone()), (r.loss, rf), "C ≠ Rust on the reference");

    // Bad arguments: each a status and a message naming it.
    let mut g = vec![0f32; len];
    expect(
        call(&meta, NP_DEVICE_CPU, &params[1..], &mut g, &mut loss, &t.inner_x),
        NP_ERR_INVALID,
        &["params", &len.to_string()],
    );
    expect(call(&meta, NP_DEVICE_CPU, &params, &mut g[1..], &mut loss, &t.inner_x), NP_ERR_INVALID, &["grad"]);
    expect(
        call(&meta, NP_DEVICE_CPU, &params, &mut g, &mut loss, &t.inner_x[1..]),
        NP_ERR_INVALID,
        &["inner_x", "p = 3"],
    );
    expect(
        call(&NpMeta { loss: 9, ..meta }, NP_DEVICE_CPU, &params, &mut g, &mut loss, &t.inner_x),
        NP_ERR_INVALID,
        &["meta.loss = 9", "NP_META_XENT"],
    );
    expect(
        call(&NpMeta { pln_len: 1, ..meta }, NP_DEVICE_CPU, &params, &mut g, &mut loss, &t.inner_x),
        NP_ERR_INVALID,
        &["meta.pln_len = 1"],
    );
    expect(
        call(&NpMeta { pln: null(), ..meta }, NP_DEVICE_CPU, &params, &mut g, &mut loss, &t.inner_x),
        NP_ERR_NULL,
        &["meta.pln is NULL"],
    );
    expect(
        call(&NpMeta { gate_at: 2, ..meta }, NP_DEVICE_CPU, &params, &mut g, &mut loss, &t.inner_x),
        NP_ERR_INVALID,
        &["meta.gate_at = 2"],
    );
    expect(
        call(
            &NpMeta { order: NP_META_FIRST, truncate: 2, ..meta },
            NP_DEVICE_CPU,
            &params,
            &mut g,
            &mut loss,
            &t.inner_x,
        ),
        NP_ERR_INVALID,
        &["meta.truncate"],
    );
    let wide = [4usize, usize::MAX / 2, 6];
    expect(
        call(&NpMeta { rln: wide.as_ptr(), ..meta }, NP_DEVICE_CPU, &params, &mut g, &mut loss, &t.inner_x),
        NP_ERR_INVALID,
        &["meta.rln", "more parameters"],
    );
    expect(call(&meta, NP_DEVICE_CUDA, &params, &mut g, &mut loss, &t.inner_x), NP_ERR_UNAVAILABLE, &["CUDA"]);
    expect(call(&meta, 7, &params, &mut g, &mut loss, &t.inner_x), NP_ERR_INVALID, &["device = 7"]);
    let mut nan = params.clone();
    nan[3] = f32::NAN;
    expect(call(&meta, NP_DEVICE_CPU, &nan, &mut g, &mut loss, &t.inner_x), NP_ERR_INVALID, &["rln.0.weight"]);
    // SAFETY: NULL pointers are what is being tested.
    expect(unsafe { np_meta_param_len(null(), &mut len) }, NP_ERR_NULL, &["meta is NULL"]);
    expect(unsafe { np_meta_param_len(&meta, null_mut()) }, NP_ERR_NULL, &["out is NULL"]);
}

/// The meta-loss alone through C: bit for bit `np_meta_grad`'s loss (and the
/// crate's), on both devices and for several options; bad arguments refused
/// with `np_meta_grad`'s status and message.
#[test]
fn meta_loss_is_meta_grads_loss_and_names_bad_arguments() {
    use neuroplastic::meta::{cpu, reference};
    let (meta, m, params, t) = meta_case();
    let (p, s, bi, bo) = (t.p, t.s, t.bi, t.bo);
    let loss_of = |meta: &NpMeta, device: u32, params: &[f32], ix: &[f32], loss: *mut f64| -> NpStatus {
        // SAFETY: every pointer comes from a live slice of its stated length (or is a NULL under test).
        unsafe {
            np_meta_loss(
                meta,
                device,
                params.as_ptr(),
                params.len(),
                p,
                s,
                bi,
                bo,
                ix.as_ptr(),
                ix.len(),
                t.inner_y.as_ptr(),
                t.inner_y.len(),
                t.outer_x.as_ptr(),
                t.outer_x.len(),
                t.outer_y.as_ptr(),
                t.outer_y.len(),
                loss,
            )
        }
    };
    let grad_of = |meta: &NpMeta, device: u32, params: &[f32], ix: &[f32], loss: *mut f64| -> NpStatus {
        let mut len = 0usize;
        // SAFETY: valid pointers (an invalid meta fails here and below alike).
        unsafe { np_meta_param_len(meta, &mut len) };
        let mut grad = vec![0f32; len];
        // SAFETY: as above; grad is as long as the layout.
        unsafe {
            np_meta_grad(
                meta,
                device,
                params.as_ptr(),
                params.len(),
                p,
                s,
                bi,
                bo,
                ix.as_ptr(),
                ix.len(),
                t.inner_y.as_ptr(),
                t.inner_y.len(),
                t.outer_x.as_ptr(),
                t.outer_x.len(),
                t.outer_y.as_ptr(),
                t.outer_y.len(),
                loss,
                grad.as_mut_ptr(),
                grad.len(),
            )
        }
    };
    // Learned β with a clamp; a fixed β (the layout without it); first order
    // and truncated (the same value: only the gradient changes).
    let fixed = NpMeta { learn_lr: 0, inner_lr: 0.3, clamp: 0.0, ..meta };
    let variants = [
        (meta, params.clone()),
        (fixed, params[..params.len() - 1].to_vec()),
        (NpMeta { order: NP_META_FIRST, ..meta }, params.clone()),
        (NpMeta { truncate: 2, ..fixed }, params[..params.len() - 1].to_vec()),
    ];
    let mut by_variant = Vec::new();
    for (k, (meta, params)) in variants.iter().enumerate() {
        for device in [NP_DEVICE_CPU, NP_DEVICE_REFERENCE] {
            let (mut got, mut want) = (f64::NAN, f64::NAN);
            assert_eq!(loss_of(meta, device, params, &t.inner_x, &mut got), NP_OK, "{}", last_error());
            assert_eq!(grad_of(meta, device, params, &t.inner_x, &mut want), NP_OK, "{}", last_error());
            assert_eq!(got.to_bits(), want.to_bits(), "variant {k}, device {device}: {got:e} vs {want:e}");
            by_variant.push(got);
        }
    }
    // The crate's values, for the learner with a learned β and a clamp.
    assert_eq!(by_variant[0].to_bits(), cpu::meta_loss(&m, &t).unwrap().to_bits());
    assert_eq!(by_variant[1].to_bits(), reference::meta_loss_f32(&m, &t).unwrap().to_bits());
    // The order and the truncation do not change the value.
    assert_eq!(by_variant[4..6], by_variant[0..2]);
    assert_eq!(by_variant[6..8], by_variant[2..4]);

    // Bad arguments: np_meta_grad's status and message, naming the argument.
    let mut nan = params.clone();
    nan[3] = f32::NAN;
    let wide = [4usize, usize::MAX / 2, 6];
    let short = &t.inner_x[1..];
    // (what the message names, meta, device, params, inner_x)
    type Call<'a> = (&'a str, NpMeta, u32, &'a [f32], &'a [f32]);
    let bad: [Call; 10] = [
        ("params", meta, NP_DEVICE_CPU, &params[1..], &t.inner_x),
        ("inner_x", meta, NP_DEVICE_CPU, &params, short),
        ("meta.loss = 9", NpMeta { loss: 9, ..meta }, NP_DEVICE_CPU, &params, &t.inner_x),
        ("meta.pln is NULL", NpMeta { pln: null(), ..meta }, NP_DEVICE_CPU, &params, &t.inner_x),
        ("meta.gate_at = 2", NpMeta { gate_at: 2, ..meta }, NP_DEVICE_CPU, &params, &t.inner_x),
        ("meta.truncate", NpMeta { order: NP_META_FIRST, truncate: 2, ..meta }, NP_DEVICE_CPU, &params, &t.inner_x),
        ("meta.rln", NpMeta { rln: wide.as_ptr(), ..meta }, NP_DEVICE_CPU, &params, &t.inner_x),
        ("CUDA", meta, NP_DEVICE_CUDA, &params, &t.inner_x),
        ("device = 7", meta, 7, &params, &t.inner_x),
        ("rln.0.weight", meta, NP_DEVICE_CPU, &nan, &t.inner_x),
    ];
    let mut loss = 0f64;
    for (needle, meta, device, params, ix) in bad {
        let want = grad_of(&meta, device, params, ix, &mut loss);
        let want_msg = last_error();
        assert_ne!(want, NP_OK, "{needle}");
        expect(loss_of(&meta, device, params, ix, &mut loss), want, &[needle]);
        assert_eq!(last_error(), want_msg, "{needle}");
    }
    expect(loss_of(&meta, NP_DEVICE_CPU, &params, &t.inner_x, null_mut()), NP_ERR_NULL, &["loss is NULL"]);
    // SAFETY: a NULL meta is what is being tested.
    let st = unsafe {
        np_meta_loss(
            null(),
            NP_DEVICE_CPU,
            null(),
            0,
            p,
            s,
            bi,
            bo,
            null(),
            0,
            null(),
            0,
            null(),
            0,
            null(),
            0,
            &mut loss,
        )
    };
    expect(st, NP_ERR_NULL, &["meta is NULL"]);
}
