"""The step-at-a-time numpy API (`Engine.stepper`): a closed loop, where each
step's input is computed from the previous step's output, gives the outputs,
final state and gradients of `Engine.forward` + `backward` on the recorded
inputs; bad use is a clear error."""

from __future__ import annotations


import numpy as np
import pytest

import neuroplastic as npl

from conftest import assert_releases_gil, random_params, random_state

LOOP_CONFIGS = [
    dict(rule="hebb", n=6, inputs=3, bias=True),
    dict(rule="retroactive", n=7, inputs=4, modulators=2, fanout=True, fanout_bias=True),
]


def next_input(y, inputs):
    """x_{t+1}: a fixed non-linear function of y_t, so the loop is closed."""
    k = np.arange(inputs)
    return np.sin(1.7 * y[:, k % y.shape[1]] + 0.1 * k).astype(y.dtype)


def closed_loop(eng, p, b, t, x0, state=None):
    st = eng.stepper(p, b, t, state)
    assert st.shape == (b, t) and st.done == 0
    x, xs, ys = x0, [], []
    for k in range(t):
        xs.append(x)
        y = st.step(x)
        assert y.shape == (b, eng.config.n) and y.dtype == x0.dtype
        assert st.done == k + 1
        ys.append(y)
        x = next_input(y, eng.config.inputs)
    y, last, handle = st.finish()
    return np.stack(xs, 1), np.stack(ys, 1), y, last, handle


@pytest.mark.parametrize("kw", LOOP_CONFIGS, ids=lambda kw: kw["rule"])
@pytest.mark.parametrize(
    "device,dtype", [("cpu", np.float32), ("reference", np.float32), ("reference", np.float64)]
)
@pytest.mark.parametrize("with_state", [False, True])
def test_closed_loop_equals_forward_backward(kw, device, dtype, with_state, rng):
    kw = dict(kw)
    cfg = npl.LayerConfig(kw.pop("rule"), kw.pop("n"), kw.pop("inputs"), **kw)
    b, t = 3, 9
    p = random_params(cfg, rng, dtype)
    s0 = random_state(cfg, b, rng, dtype) if with_state else None
    x0 = rng.standard_normal((b, cfg.inputs)).astype(dtype)
    eng = npl.Engine(cfg, device, checkpoint=4)
    inputs, ys, y, last, handle = closed_loop(eng, p, b, t, x0, s0)
    assert handle.dtype == np.dtype(dtype).name and handle.shape == (b, t)
    np.testing.assert_array_equal(ys, y)
    # The loop really is closed: later inputs depend on earlier outputs.
    np.testing.assert_array_equal(inputs[:, 1], next_input(ys[:, 0], cfg.inputs))

    y2, last2, handle2 = eng.forward(p, inputs, s0)
    np.testing.assert_array_equal(y, y2)
    assert last.keys() == last2.keys()
    for k in last:
        np.testing.assert_array_equal(last[k], last2[k], err_msg=k)

    dy = rng.standard_normal((b, t, cfg.n)).astype(dtype)
    dlast = random_state(cfg, b, rng, dtype)
    g = eng.backward(handle, dy, dlast)
    g2 = eng.backward(handle2, dy, dlast)
    assert g["params"].keys() == g2["params"].keys()
    for k in g["params"]:
        np.testing.assert_array_equal(g["params"][k], g2["params"][k], err_msg=k)
    np.testing.assert_array_equal(g["inputs"], g2["inputs"])
    for k in g["init"]:
        np.testing.assert_array_equal(g["init"][k], g2["init"][k], err_msg=k)
    assert np.any(g["params"]["w"] != 0), "a zero gradient proves nothing"


def test_parameters_are_copied_at_start(rng):
    cfg = npl.LayerConfig("modulated", 5, 3)
    p = random_params(cfg, rng)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    eng = npl.Engine(cfg)
    st = eng.stepper(p, 2, 2)
    st.step(x)
    original = {k: v.copy() for k, v in p.items()}
    for v in p.values():
        v += 1.0  # after start: must not change the episode
    st.step(x)
    y, _, _ = st.finish()
    y2, _, _ = eng.forward(original, np.stack([x, x], 1))
    np.testing.assert_array_equal(y, y2)


def test_engine_stays_usable_while_stepping(rng):
    """A whole-episode forward between two steps leaves the episode unchanged."""
    cfg = npl.LayerConfig("retroactive", 6, 3)
    p = random_params(cfg, rng)
    xs = rng.standard_normal((2, 4, 3)).astype(np.float32)
    eng = npl.Engine(cfg)
    st = eng.stepper(p, 2, 4)
    for k in range(4):
        st.step(np.ascontiguousarray(xs[:, k]))
        eng.forward(p, rng.standard_normal((5, 3, 3)).astype(np.float32))
    y, _, _ = st.finish()
    np.testing.assert_array_equal(y, eng.forward(p, xs)[0])


def test_bad_use_is_a_clear_error(rng):
    cfg = npl.LayerConfig("modulated", 4, 3)
    p = random_params(cfg, rng)
    for device in ["cpu", "reference"]:
        eng = npl.Engine(cfg, device)
        with pytest.raises(ValueError, match=r"batch \(B\)"):
            eng.stepper(p, 0, 5)
        with pytest.raises(ValueError, match=r"steps \(T\)"):
            eng.stepper(p, 2, 0)
        with pytest.raises(ValueError, match=r"state\.hebb"):
            eng.stepper(p, 2, 2, {"h": np.zeros((2, 4), np.float32), "hebb": np.zeros((3, 4, 4), np.float32)})
        st = eng.stepper(p, 2, 2)
        assert "Stepper(" in repr(st) and "done=0" in repr(st)
        with pytest.raises(ValueError, match=r"x: .*\(2, 3\).*\(2, 4\)|x: .*expected.*\(2, 3\)"):
            st.step(np.zeros((2, 4), np.float32))
        with pytest.raises(TypeError, match=r"x: expected a float32 array, got float64"):
            st.step(np.zeros((2, 3)))
        st.step(np.zeros((2, 3), np.float32))
        with pytest.raises(ValueError, match=r"T = 2 steps but only 1 have run"):
            st.finish()
        st.step(np.zeros((2, 3), np.float32))
        with pytest.raises(ValueError, match=r"all T = 2 steps of this episode have run"):
            st.step(np.zeros((2, 3), np.float32))
        st.finish()
        with pytest.raises(ValueError, match=r"is finished"):
            st.step(np.zeros((2, 3), np.float32))
        with pytest.raises(ValueError, match=r"is finished"):
            st.finish()
    with pytest.raises(TypeError, match=r"float64 runs on the reference device only"):
        npl.Engine(cfg).stepper({k: v.astype(np.float64) for k, v in p.items()}, 2, 2)
    checked = npl.Engine(cfg, check_finite=True)
    st = checked.stepper(p, 2, 2)
    with pytest.raises(ValueError, match=r"x"):
        st.step(np.full((2, 3), np.nan, np.float32))


def test_a_step_releases_the_gil(rng):
    """While one long step runs in one thread, another thread keeps running
    Python code. A step that held the GIL would stop it for the whole call."""
    cfg = npl.LayerConfig("retroactive", 256, 8)
    p = random_params(cfg, rng, scale=0.05)
    eng = npl.Engine(cfg, "reference")  # the slow backend: a long step
    b = 768
    st = eng.stepper(p, b, 1)
    x = rng.standard_normal((b, 8)).astype(np.float32)
    assert_releases_gil(lambda: st.step(x), "step")
