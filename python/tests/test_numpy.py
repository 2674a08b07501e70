"""The numpy API: layout against a plain numpy forward, gradients against
finite differences (f64 reference) and the reference (f32 CPU), options,
errors and the GIL."""

from __future__ import annotations


import numpy as np
import pytest

import neuroplastic as npl

from conftest import assert_releases_gil, CONFIGS, in_forked_child, make_config, numpy_forward, random_params, random_state


def loss_and_dy(y, last, proj):
    """L = Σ y·R + Σ_state last·S, its dL/dy and dL/dlast."""
    loss = float(np.sum(y * proj["y"])) + sum(float(np.sum(last[k] * proj[k])) for k in last)
    return loss, proj["y"], {k: proj[k] for k in last}


def projections(cfg, batch, steps, rng, dtype):
    proj = {"y": rng.standard_normal((batch, steps, cfg.n)).astype(dtype)}
    for k, s in cfg.state_shapes(batch).items():
        proj[k] = rng.standard_normal(s).astype(dtype)
    return proj


def test_param_and_state_shapes():
    cfg = npl.LayerConfig("hebb", 4, 3)
    assert cfg.param_shapes() == {"w": (4, 4), "alpha": (4, 4), "eta": (1,), "u": (4, 3)}
    assert cfg.state_shapes(2) == {"h": (2, 4), "hebb": (2, 4, 4)}
    cfg = npl.LayerConfig("retroactive", 4, 3, modulators=2, fanout=True, fanout_bias=True, alpha="scalar")
    assert cfg.param_shapes() == {
        "w": (4, 4),
        "alpha": (1,),
        "eta_e": (1,),
        "u": (4, 3),
        "mod.v": (2, 4),
        "mod.c": (2,),
        "mod.fanout": (2, 4),
        "mod.fanout_bias": (4,),
    }
    assert cfg.state_shapes(2) == {"h": (2, 4), "hebb": (2, 4, 4), "elig": (2, 4, 4)}
    ff = npl.LayerConfig("oja", 4, 6, topology="feed_forward", alpha="neuron", bias=True)
    assert ff.param_shapes() == {"w": (4, 6), "alpha": (4,), "eta": (1,), "b": (4,)}
    assert ff.state_shapes(3) == {"hebb": (3, 4, 6)}
    assert ff.pre == 6 and ff.topology == "feed_forward" and ff.rule == "oja"
    assert "LayerConfig(\"oja\", n=4, inputs=6" in repr(ff)
    assert npl.LayerConfig("hebb", 4, 3) == npl.LayerConfig("hebb", 4, 3)
    assert npl.LayerConfig("hebb", 4, 3) != npl.LayerConfig("oja", 4, 3)


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: f"{kw['rule']}-{kw['n']}x{kw['inputs']}")
@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_forward_matches_numpy(kw, device, rng):
    cfg = make_config(kw)
    b, t = 3, 7
    p = random_params(cfg, rng)
    x = rng.standard_normal((b, t, cfg.inputs)).astype(np.float32)
    s0 = random_state(cfg, b, rng)
    y, last, handle = npl.Engine(cfg, device).forward(p, x, s0)
    y_ref, last_ref = numpy_forward(cfg, p, x, s0)
    assert y.dtype == np.float32 and y.shape == (b, t, cfg.n)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    assert set(last) == set(last_ref)
    for k in last:
        np.testing.assert_allclose(last[k], last_ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert handle.shape == (b, t) and handle.dtype == "float32"


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: f"{kw['rule']}-{kw['n']}x{kw['inputs']}")
def test_float64_forward_is_exact(kw, rng):
    cfg = make_config(kw)
    p = random_params(cfg, rng, np.float64)
    x = rng.standard_normal((2, 5, cfg.inputs))
    y, last, handle = npl.Engine(cfg, "reference").forward(p, x)
    y_ref, last_ref = numpy_forward(cfg, p, x)
    assert y.dtype == np.float64 and handle.dtype == "float64"
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for k in last:
        np.testing.assert_allclose(last[k], last_ref[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: f"{kw['rule']}-{kw['n']}x{kw['inputs']}")
def test_float64_gradients_match_finite_differences(kw, rng):
    """Every gradient the binding returns (parameters, inputs, initial state)
    is the central difference of the loss, through the f64 reference."""
    cfg = make_config(kw)
    b, t = 2, 4
    eng = npl.Engine(cfg, "reference")
    p = random_params(cfg, rng, np.float64)
    x = rng.standard_normal((b, t, cfg.inputs))
    s0 = random_state(cfg, b, rng, np.float64)
    proj = projections(cfg, b, t, rng, np.float64)

    def loss(p, x, s0):
        y, last, _ = eng.forward(p, x, s0)
        return loss_and_dy(y, last, proj)[0]

    y, last, handle = eng.forward(p, x, s0)
    _, dy, dlast = loss_and_dy(y, last, proj)
    g = eng.backward(handle, dy, dlast)
    assert set(g) == {"params", "inputs", "init"}
    assert set(g["params"]) == set(cfg.param_shapes())

    eps = 1e-6

    def check(arr, grad, what, bump):
        assert grad.shape == arr.shape, what
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = bump()
            arr[idx] = old - eps
            down = bump()
            arr[idx] = old
            fd = (up - down) / (2 * eps)
            assert abs(fd - grad[idx]) <= 1e-6 * (1 + abs(fd)), f"{what}{idx}: fd {fd}, analytic {grad[idx]}"

    for name in p:
        if name in ("eta", "eta_e") and cfg.eta == "fixed":
            assert np.all(g["params"][name] == 0), "a fixed rate has a zero gradient"
            continue
        check(p[name], g["params"][name], f"params.{name}", lambda: loss(p, x, s0))
    check(x, g["inputs"], "inputs", lambda: loss(p, x, s0))
    for k in s0:
        check(s0[k], g["init"][k], f"init.{k}", lambda: loss(p, x, s0))


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: f"{kw['rule']}-{kw['n']}x{kw['inputs']}")
def test_cpu_gradients_match_reference(kw, rng):
    cfg = make_config(kw)
    b, t = 3, 9
    p = random_params(cfg, rng)
    x = rng.standard_normal((b, t, cfg.inputs)).astype(np.float32)
    s0 = random_state(cfg, b, rng)
    proj = projections(cfg, b, t, rng, np.float32)
    grads = {}
    for device in ["cpu", "reference"]:
        eng = npl.Engine(cfg, device, threads=2)
        y, last, handle = eng.forward(p, x, s0)
        _, dy, dlast = loss_and_dy(y, last, proj)
        grads[device] = eng.backward(handle, dy, dlast)
    c, r = grads["cpu"], grads["reference"]
    for name in r["params"]:
        np.testing.assert_allclose(c["params"][name], r["params"][name], rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(c["inputs"], r["inputs"], rtol=1e-4, atol=1e-4)
    for k in r["init"]:
        np.testing.assert_allclose(c["init"][k], r["init"][k], rtol=1e-4, atol=1e-4, err_msg=k)


def test_truncation(rng):
    """("last", K): dy of the steps before the window does not matter, the
    initial state gets no gradient, and cpu and reference agree;
    ("windows", K) differs from the full gradient."""
    cfg = npl.LayerConfig("modulated", 5, 2, clip=3.0)
    b, t, k = 2, 10, 3
    p = random_params(cfg, rng)
    x = rng.standard_normal((b, t, 2)).astype(np.float32)
    s0 = random_state(cfg, b, rng)
    dy = rng.standard_normal((b, t, 5)).astype(np.float32)
    dy_late_only = dy.copy()
    dy_late_only[:, : t - k] = 0
    out = {}
    for device in ["cpu", "reference"]:
        eng = npl.Engine(cfg, device, truncate=("last", k))
        assert eng.truncate == ("last", k)
        _, _, handle = eng.forward(p, x, s0)
        out[device] = eng.backward(handle, dy)
        again = eng.backward(handle, dy_late_only)
        for name in out[device]["params"]:
            np.testing.assert_array_equal(out[device]["params"][name], again["params"][name])
        assert np.all(out[device]["init"]["hebb"] == 0) and np.all(out[device]["init"]["h"] == 0)
    for name in out["cpu"]["params"]:
        np.testing.assert_allclose(out["cpu"]["params"][name], out["reference"]["params"][name], rtol=1e-4, atol=1e-4)

    full = npl.Engine(cfg, "cpu")
    _, _, h_full = full.forward(p, x, s0)
    g_full = full.backward(h_full, dy)
    win = npl.Engine(cfg, "cpu", truncate=("windows", k))
    _, _, h_win = win.forward(p, x, s0)
    g_win = win.backward(h_win, dy)
    assert not np.allclose(g_full["params"]["w"], g_win["params"]["w"], rtol=1e-3, atol=1e-5)
    # The last window's step sees nothing from later windows: its input gradient is the full one
    # only at the very last step.
    np.testing.assert_allclose(g_win["inputs"][:, -1], g_full["inputs"][:, -1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["modulated", "retroactive", "hebb"])
def test_checkpoint_intervals_agree(rule, rng):
    cfg = npl.LayerConfig(rule, 6, 3, clip=3.0)
    p = random_params(cfg, rng)
    p.update({k: np.full((1,), 0.3, np.float32) for k in ("eta", "eta_e") if k in p})
    x = rng.standard_normal((2, 13, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 13, 6)).astype(np.float32)
    base = None
    for c in ["auto", "all", 1, 4, 13, 50]:
        eng = npl.Engine(cfg, "cpu", checkpoint=c)
        assert eng.checkpoint == c
        _, _, handle = eng.forward(p, x)
        g = eng.backward(handle, dy)
        if base is None:
            base = g
        for name in g["params"]:
            np.testing.assert_allclose(g["params"][name], base["params"][name], rtol=1e-6, atol=1e-7)
    eng_all = npl.Engine(cfg, "cpu", checkpoint="all")
    eng_few = npl.Engine(cfg, "cpu", checkpoint=13)
    assert eng_all.forward(p, x)[2].saved_bytes > eng_few.forward(p, x)[2].saved_bytes


def test_state_carries_across_calls(rng):
    cfg = npl.LayerConfig("retroactive", 5, 2, clip=3.0)
    p = random_params(cfg, rng)
    x = rng.standard_normal((2, 9, 2)).astype(np.float32)
    eng = npl.Engine(cfg, "cpu")
    y, last, _ = eng.forward(p, x)
    y1, mid, _ = eng.forward(p, x[:, :4])
    y2, last2, _ = eng.forward(p, x[:, 4:], mid)
    np.testing.assert_allclose(np.concatenate([y1, y2], 1), y, rtol=1e-6, atol=1e-6)
    for k in last:
        np.testing.assert_allclose(last2[k], last[k], rtol=1e-6, atol=1e-6)


def test_handle_keeps_its_own_copy(rng):
    """Changing the caller's arrays after forward does not change backward;
    a handle can be used twice."""
    cfg = npl.LayerConfig("hebb", 4, 3)
    p = random_params(cfg, rng)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 4)).astype(np.float32)
    eng = npl.Engine(cfg, "cpu")
    _, _, handle = eng.forward(p, x)
    g1 = eng.backward(handle, dy)
    p["w"] += 1.0
    x *= 2.0
    g2 = eng.backward(handle, dy)
    for name in g1["params"]:
        np.testing.assert_array_equal(g1["params"][name], g2["params"][name])
    # A handle also works with another engine of the same layer and device.
    g3 = npl.Engine(cfg, "cpu").backward(handle, dy)
    np.testing.assert_array_equal(g1["params"]["w"], g3["params"]["w"])


def test_strided_arrays_are_read_in_order(rng):
    cfg = npl.LayerConfig("oja", 4, 3)
    p = random_params(cfg, rng)
    xt = rng.standard_normal((3, 6, 2)).astype(np.float32).transpose(2, 1, 0)  # (2, 6, 3), not contiguous
    assert not xt.flags["C_CONTIGUOUS"]
    wt = np.ascontiguousarray(p["w"].T).T
    assert not wt.flags["C_CONTIGUOUS"]
    eng = npl.Engine(cfg, "cpu")
    y1, _, _ = eng.forward({**p, "w": wt}, xt)
    y2, _, _ = eng.forward(p, np.ascontiguousarray(xt))
    np.testing.assert_array_equal(y1, y2)


def test_errors_name_the_argument(rng):
    cfg = npl.LayerConfig("hebb", 4, 3)
    p = random_params(cfg, rng)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    eng = npl.Engine(cfg, "cpu")

    with pytest.raises(ValueError, match=r"^params\.w: expected shape \(4, 4\), got shape \(16,\)$"):
        eng.forward({**p, "w": p["w"].reshape(16)}, x)
    with pytest.raises(ValueError, match=r'params: missing "u", expected shape \(4, 3\)'):
        eng.forward({k: v for k, v in p.items() if k != "u"}, x)
    with pytest.raises(ValueError, match=r'params: unknown tensor "mod_v"; this configuration uses w, alpha, eta, u'):
        eng.forward({**p, "mod_v": p["w"]}, x)
    # An unused tensor: the crate's own message.
    with pytest.raises(ValueError, match=r"params\.b: expected shape \(0,\) \(0 elements\), got 4 elements \(unused"):
        eng.forward({**p, "b": np.zeros(4, np.float32)}, x)
    with pytest.raises(ValueError, match=r"^params\.eta = 1\.5 is out of range: expected a number in \[0, 1\]$"):
        eng.forward({**p, "eta": np.array([1.5], np.float32)}, x)
    with pytest.raises(ValueError, match=r"inputs: expected shape \(B, T, 3\) .* got shape \(5, 3\)"):
        eng.forward(p, x[0])
    with pytest.raises(ValueError, match=r"^steps \(T\) must be at least 1, got 0$"):
        eng.forward(p, x[:, :0])
    with pytest.raises(ValueError, match=r"state\.hebb: expected shape \(2, 4, 4\), got shape \(1, 4, 4\)"):
        eng.forward(p, x, {"h": np.zeros((2, 4), np.float32), "hebb": np.zeros((1, 4, 4), np.float32)})
    with pytest.raises(ValueError, match=r'state: unknown or unused entry "elig"'):
        eng.forward(p, x, {"h": np.zeros((2, 4), np.float32), "elig": np.zeros((2, 4, 4), np.float32)})
    with pytest.raises(TypeError, match=r"float64 runs on the reference device only"):
        eng.forward({k: v.astype(np.float64) for k, v in p.items()}, x.astype(np.float64))
    with pytest.raises(TypeError, match=r"params\.alpha: expected a float32 array, got float64"):
        eng.forward({**p, "alpha": p["alpha"].astype(np.float64)}, x)
    with pytest.raises(TypeError, match=r"inputs: expected a numpy array of float32, got list"):
        eng.forward(p, x.tolist())
    with pytest.raises(TypeError, match=r"params: expected a dict"):
        eng.forward(list(p.values()), x)

    _, _, handle = eng.forward(p, x)
    with pytest.raises(ValueError, match=r"^dy: expected shape \(2, 5, 4\), got shape \(2, 4, 4\)$"):
        eng.backward(handle, np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"handle: it was made by an engine with another layer configuration"):
        npl.Engine(npl.LayerConfig("oja", 4, 3), "cpu").backward(handle, np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"fwd: this Forward was made by a cpu engine, but this engine runs on reference"):
        npl.Engine(cfg, "reference").backward(handle, np.zeros((2, 5, 4), np.float32))

    checked = npl.Engine(cfg, "cpu", check_finite=True)
    bad = x.copy()
    bad[0, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"^inputs: element 3 is not finite \(NaN\)$"):
        checked.forward(p, bad)
    checked64 = npl.Engine(cfg, "reference", check_finite=True)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    p64["alpha"][1, 2] = np.inf
    with pytest.raises(ValueError, match=r"^params\.alpha: element 6 is not finite \(inf\)$"):
        checked64.forward(p64, x.astype(np.float64))
    npl.Engine(cfg, "reference").forward(p64, x.astype(np.float64))  # unchecked: runs


def test_bad_configuration_and_options():
    with pytest.raises(ValueError, match=r"^config\.n \(post-synaptic size N\) must be at least 1, got 0$"):
        npl.LayerConfig("hebb", 0, 3)
    with pytest.raises(ValueError, match=r'rule: unknown value "hebbian"; expected one of hebb, oja, modulated, retroactive'):
        npl.LayerConfig("hebbian", 4, 3)
    with pytest.raises(ValueError, match=r"input size must equal N = 4; got 3"):
        npl.LayerConfig("hebb", 4, 3, input_map="direct")
    cfg = npl.LayerConfig("hebb", 4, 3)
    with pytest.raises(ValueError, match=r"^options\.threads must be at least 1, got 0$"):
        npl.Engine(cfg, "cpu", threads=0)
    with pytest.raises(ValueError, match=r"^truncate \(K\) must be at least 1, got 0$"):
        npl.Engine(cfg, "cpu", truncate=("last", 0))
    with pytest.raises(ValueError, match=r'truncate: unknown kind "first"'):
        npl.Engine(cfg, "cpu", truncate=("first", 3))
    with pytest.raises(ValueError, match=r"checkpoint: the interval C must be at least 1, got 0"):
        npl.Engine(cfg, "cpu", checkpoint=0)
    with pytest.raises(ValueError, match=r'device: unknown value "gpu"'):
        npl.Engine(cfg, "gpu")


def test_cuda_is_refused_with_the_crates_message():
    cfg = npl.LayerConfig("hebb", 4, 3)
    with pytest.raises(RuntimeError, match=r"^cuda:1 backend unavailable: "):
        npl.Engine(cfg, "cuda:1")


def test_kernels_release_the_gil(rng):
    """While a long forward runs in one thread, another thread keeps running
    Python code. A kernel that held the GIL would stop it for the whole call."""
    cfg = npl.LayerConfig("hebb", 96, 8)
    p = random_params(cfg, rng, scale=0.1)
    x = rng.standard_normal((8, 200, 8)).astype(np.float32)
    eng = npl.Engine(cfg, "reference")  # the slow backend: a long call
    assert_releases_gil(lambda: eng.forward(p, x), "call")


def test_an_engine_works_in_a_forked_child():
    """After the parent ran an engine, a child made by `fork` (multiprocessing,
    DataLoader workers) computes with it instead of waiting forever on the
    parent's pool threads, which the child does not have: the binding's pool
    (threads=None) and an engine's private one (threads=n) alike. The call
    is large enough to use a pool (small ones run on the calling thread)."""
    cfg = npl.LayerConfig("hebb", 64, 8)
    rng = np.random.default_rng(0)
    p = random_params(cfg, rng)
    x = rng.standard_normal((8, 40, 8)).astype(np.float32)
    for threads in (None, 2):
        engine = npl.Engine(cfg, "cpu", threads=threads)
        want = engine.forward(p, x)[0]
        assert np.array_equal(in_forked_child(lambda: engine.forward(p, x)[0]), want), threads
        # The parent's pool still serves the parent.
        assert np.array_equal(engine.forward(p, x)[0], want), threads
