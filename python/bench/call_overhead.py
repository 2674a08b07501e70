"""The fixed cost of a small call from Python, at batch size 1.

Agents that act on every step (backpropamine's reinforcement-learning
experiments) call the engine once per step on one episode, so what a call
costs beyond its arithmetic decides their speed. Two cases, each timed as the
median of 5 rounds:

- ``forward``: one ``Engine.forward`` of a single step of a small Hebbian
  layer (N = 32, 4 inputs), the state carried from call to call;
- ``episode``: an episode of T = 100 steps of a modulated layer (N = 200,
  8 inputs) through ``Engine.stepper`` one step at a time, then ``finish``
  and ``Engine.backward``.

Both with ``threads=None`` (the binding's per-process pool) and
``threads=1`` (a private pool). Run it against two builds to compare them:

    python python/bench/call_overhead.py
    PYTHONPATH=/path/to/other/build python python/bench/call_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import neuroplastic as npl


def median_us(f, calls: int, rounds: int = 5) -> float:
    """Median over `rounds` of the mean time of `calls` calls of `f`, in µs."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(times)


def params_for(cfg: npl.LayerConfig, scale: float, rng) -> dict:
    # Positive values keep every rate (eta) in its range.
    return {k: (scale * np.abs(rng.standard_normal(s))).astype(np.float32) for k, s in cfg.param_shapes().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000, help="forward calls per round")
    ap.add_argument("--episodes", type=int, default=20, help="episodes per round")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"neuroplastic from {npl.__file__}")
    for threads in (None, 1):
        cfg = npl.LayerConfig("hebb", 32, 4)
        eng = npl.Engine(cfg, "cpu", threads=threads)
        params = params_for(cfg, 0.1, rng)
        x = rng.standard_normal((1, 1, 4)).astype(np.float32)
        _, state, _ = eng.forward(params, x)
        us = median_us(lambda: eng.forward(params, x, state), a.calls)
        print(f"threads={threads}: forward, hebb N=32, B=1, T=1: {us:.1f} µs per call")

        cfg = npl.LayerConfig("modulated", 200, 8)
        eng = npl.Engine(cfg, "cpu", threads=threads)
        params = params_for(cfg, 0.05, rng)
        xs = rng.standard_normal((1, 8)).astype(np.float32)
        dy = np.full((1, 100, 200), 0.01, np.float32)

        def episode() -> None:
            s = eng.stepper(params, 1, 100)
            for _ in range(100):
                s.step(xs)
            _, _, handle = s.finish()
            eng.backward(handle, dy)

        ms = median_us(episode, a.episodes) / 1000
        print(f"threads={threads}: episode, modulated N=200, B=1, T=100, stepped + backward: {ms:.2f} ms")


if __name__ == "__main__":
    main()
