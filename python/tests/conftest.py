"""Shared helpers: random parameters of any configuration, and a plain numpy
forward pass written from the equations (the layout oracle of the numpy tests)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import neuroplastic as npl


def random_params(cfg, rng, dtype=np.float32, scale=0.5):
    """Parameters of every shape `cfg` uses; η, η_e inside (0, 1)."""
    p = {}
    for name, shape in cfg.param_shapes().items():
        if name in ("eta", "eta_e"):
            p[name] = rng.uniform(0.1, 0.6, shape).astype(dtype)
        else:
            p[name] = (scale * rng.standard_normal(shape)).astype(dtype)
    return p


def random_state(cfg, batch, rng, dtype=np.float32, scale=0.3):
    return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in cfg.state_shapes(batch).items()}


def numpy_forward(cfg, p, x, state=None):
    """The layer in float64 numpy, one step at a time (recurrent or feed-forward)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)
    bsz, steps, _ = x.shape
    n, ni = cfg.n, cfg.pre
    recurrent = cfg.topology == "recurrent"
    st = {k: np.array(v, np.float64) for k, v in (state or {}).items()}
    h = st.get("h", np.zeros((bsz, n)))
    hebb = st.get("hebb", np.zeros((bsz, n, ni)))
    elig = st.get("elig", np.zeros((bsz, n, ni)))
    alpha = {"connection": lambda a: a, "neuron": lambda a: a[:, None], "scalar": lambda a: a}[cfg.alpha](p["alpha"])
    act = np.tanh if cfg.activation == "tanh" else (lambda a: a)
    mod = {"tanh": np.tanh, "sigmoid": lambda s: 1 / (1 + np.exp(-s)), "identity": lambda s: s}[cfg.modulator]
    ys = np.zeros((bsz, steps, n))
    for t in range(steps):
        pre = h if recurrent else x[:, t]
        a = np.einsum("bji,bi->bj", p["w"] + alpha * hebb, pre)
        if recurrent:
            a += x[:, t] @ p["u"].T if cfg.input_map == "linear" else x[:, t]
        if cfg.bias:
            a += p["b"]
        y = act(a)
        outer = y[:, :, None] * pre[:, None, :]
        if cfg.rule == "hebb":
            hebb = (1 - p["eta"]) * hebb + p["eta"] * outer
        elif cfg.rule == "oja":
            hebb = hebb + p["eta"] * y[:, :, None] * (pre[:, None, :] - y[:, :, None] * hebb)
        else:
            s = y @ p["mod.v"].T + (p["mod.c"] if cfg.modulator_bias else 0)
            m = mod(s)
            big_m = m @ p["mod.fanout"] if cfg.fanout else np.repeat(m.sum(1, keepdims=True), n, 1)
            if cfg.fanout_bias:
                big_m = big_m + p["mod.fanout_bias"]
            if cfg.rule == "modulated":
                hebb = np.clip(hebb + big_m[:, :, None] * outer, -cfg.clip, cfg.clip)
            else:
                hebb = np.clip(hebb + big_m[:, :, None] * elig, -cfg.clip, cfg.clip)
                elig = (1 - p["eta_e"]) * elig + p["eta_e"] * outer
        h = y
        ys[:, t] = y
    last = {"hebb": hebb}
    if recurrent:
        last["h"] = h
    if cfg.rule == "retroactive":
        last["elig"] = elig
    return ys, last


@pytest.fixture
def rng():
    return np.random.default_rng(20261202)


RULES = ["hebb", "oja", "modulated", "retroactive"]

# Configurations that between them use every tensor and option.
CONFIGS = [
    dict(rule="hebb", n=5, inputs=3),
    dict(rule="oja", n=4, inputs=2, alpha="neuron", bias=True),
    dict(rule="hebb", n=3, inputs=3, input_map="direct", alpha="scalar", activation="identity"),
    dict(rule="modulated", n=5, inputs=2, clip=3.0),
    dict(
        rule="modulated",
        n=4,
        inputs=3,
        modulators=2,
        modulator="sigmoid",
        fanout=True,
        fanout_bias=True,
        bias=True,
        clip=3.0,
    ),
    dict(rule="retroactive", n=4, inputs=2, modulator="identity", modulator_bias=False, clip=3.0),
    dict(rule="hebb", n=4, inputs=6, topology="feed_forward", eta="fixed"),
]


def make_config(kw):
    kw = dict(kw)
    return npl.LayerConfig(kw.pop("rule"), kw.pop("n"), kw.pop("inputs"), **kw)


def assert_releases_gil(call, what):
    """Runs `call` in a thread and counts how often this thread gets to run
    meanwhile: a kernel that holds the GIL lets it run about never."""
    flags = {"started": False, "done": False, "seconds": 0.0}

    def run():
        flags["started"] = True
        t0 = time.perf_counter()
        call()
        flags["seconds"] = time.perf_counter() - t0
        flags["done"] = True

    th = threading.Thread(target=run)
    th.start()
    while not flags["started"]:
        time.sleep(0)
    ticks = 0
    while not flags["done"]:
        ticks += 1
        time.sleep(0.001)
    th.join()
    assert flags["seconds"] > 0.05, f"the {what} was too short to tell"
    assert ticks >= 10, f"the other thread ran {ticks} times during a {flags['seconds']:.2f} s {what}"


def in_forked_child(fn, timeout=60):
    """`fn()` run in a child made by `fork` (as multiprocessing and DataLoader
    workers make them); its result. Fails if the child hangs."""
    import multiprocessing as mp

    import queue

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=lambda: q.put(fn()))
    child.start()
    # The result is read before the child is joined: a child exits only once
    # what it put in the queue is through the pipe (64 KiB at a time).
    missing = object()
    try:
        result = q.get(timeout=timeout)
    except queue.Empty:
        result = missing
    child.join(5)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert result is not missing and not alive, "the forked child hung (in a thread pool inherited from the parent?)"
    return result
