#!/usr/bin/env python3
"""Baselines for `neuroplastic bench`: the same four workloads in PyTorch and JAX.

Each workload is one recurrent plastic layer trained on one batch of episodes per
update, written here from the equations of docs/design.md §2 in our convention
(weights [post][pre]; per episode b and step t, x = h_{t-1}):

    a_j  = u_j + sum_i (W_ji + alpha_ji * H_ji) * x_i     u = U @ input (neuromod, retro) or the input
    y    = tanh(a);  h_t = y
    simplest, plastic (Hebb):   H <- (1 - eta) H + eta * outer(y, x)
    neuromod (modulated):       m = tanh(V @ y),  M_j = m * F_j,  H <- clip(H + M_j outer(y, x), -2, 2)
    retro (retroactive):        H <- clip(H + M_j E, -2, 2),  E <- (1 - eta_e) E + eta_e outer(y, x)

The loss is sum_b |y_T - target|^2 (the last step only). One training episode is
the forward pass over T steps, the backward pass and one Adam step (lr 3e-4) on
every learned tensor. Frameworks:

    torch : eager mode, a Python loop over the steps, autograd, torch.optim.Adam
            (how the papers' own code trains these layers);
    jax   : loss, gradient and Adam in one jax.jit, the steps in lax.scan.

Sizes (override with --N/--B/--T/--I):

    workload  N     B   T    inputs            rule
    simplest  1000  1   106  pattern task x20  Hebb, eta = 0.01 fixed
    plastic   256   32  100  +-1, added        Hebb, eta learned (0.01)
    neuromod  200   32  200  17 through U      modulated, clip 2, fan-out F
    retro     200   32  200  17 through U      retroactive, eta_e learned (0.1), clip 2

Initialisation: W, alpha ~ 0.01 N(0,1); U ~ N(0,1)/sqrt(I); V ~ N(0,1)/sqrt(N);
F ~ 1 + 0.1 N(0,1). Prints one JSON line (medians of forward-only and of training
time per episode, peak resident memory, the forward byte floor of docs/design.md §6),
the fields benches/compare.sh collects next to `neuroplastic bench --json`.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np

SIZES = {
    "simplest": (1000, 1, 106, 0),
    "plastic": (256, 32, 100, 0),
    "neuromod": (200, 32, 200, 17),
    "retro": (200, 32, 200, 17),
}
TRACES = {"simplest": 1, "plastic": 1, "neuromod": 1, "retro": 2}
LR = 3e-4
CLIP = 2.0
# The pattern-completion schedule of `neuroplastic train pattern` (its defaults).
PATTERNS, CYCLES, SHOW, BLANK, TEST, SCALE, DEGRADE = 5, 2, 6, 4, 6, 20.0, 0.5


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def init_params(kind, n, i, seed):
    """Numpy float32 parameters; the learned ones are returned in `learned`."""
    g = np.random.default_rng(seed)
    p = {"w": 0.01 * g.standard_normal((n, n)), "alpha": 0.01 * g.standard_normal((n, n))}
    fixed = {}
    if kind == "simplest":
        fixed["eta"] = 0.01
    elif kind == "plastic":
        p["eta"] = np.array(0.01)
    else:
        p["u"] = g.standard_normal((n, i)) / np.sqrt(i)
        p["v"] = g.standard_normal((n,)) / np.sqrt(n)
        p["f"] = 1.0 + 0.1 * g.standard_normal((n,))
        if kind == "retro":
            p["eta_e"] = np.array(0.1)
    return {k: np.asarray(v, np.float32) for k, v in p.items()}, fixed


def pattern_episode(g, n):
    """One episode of the pattern task: inputs (T, N) and the full pattern (N,)."""
    pats = np.where(g.random((PATTERNS, n)) < 0.5, -1.0, 1.0)
    steps = CYCLES * PATTERNS * (SHOW + BLANK) + TEST
    xs = np.zeros((steps, n))
    t = 0
    for _ in range(CYCLES):
        for k in g.permutation(PATTERNS):
            xs[t:t + SHOW] = pats[k]
            t += SHOW + BLANK
    k = g.integers(PATTERNS)
    probe = np.where(g.random(n) < DEGRADE, 0.0, pats[k])
    xs[t:t + TEST] = probe
    return SCALE * xs, pats[k]


def make_batch(kind, n, b, t, i, g):
    """inputs (T, B, features) and targets (B, N), float32 (time-major for the loops below)."""
    if kind == "simplest":
        eps = [pattern_episode(g, n) for _ in range(b)]
        xs = np.stack([e[0] for e in eps], axis=1)
        tg = np.stack([e[1] for e in eps])
    elif kind == "plastic":
        xs = np.where(g.random((t, b, n)) < 0.5, -1.0, 1.0)
        tg = np.where(g.random((b, n)) < 0.5, -1.0, 1.0)
    else:
        xs = g.standard_normal((t, b, i))
        tg = np.where(g.random((b, n)) < 0.5, -1.0, 1.0)
    return xs.astype(np.float32), tg.astype(np.float32)


def timed(fn, args):
    """Runs fn `warmup` times untimed, then until both the episode and second minimums are met."""
    losses = [fn() for _ in range(args.warmup)]
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        losses.append(fn())
        times.append(time.perf_counter() - t0)
        if len(times) >= args.max_episodes:
            break
        if len(times) >= args.min_episodes and time.perf_counter() - start >= args.min_seconds:
            break
    s = sorted(times)
    return {
        "n": len(s), "median_s": statistics.median(s), "min_s": s[0], "max_s": s[-1],
        "p25_s": s[len(s) // 4], "p75_s": s[(3 * len(s)) // 4],
        "first_loss": float(losses[0]), "last_loss": float(losses[-1]),
        "all_finite": bool(np.all(np.isfinite(losses))),
    }


# ---------------------------------------------------------------- PyTorch ----

def torch_episode_loss(torch, kind, P, fixed, xs, tg):
    steps, b = xs.shape[0], xs.shape[1]
    n = P["w"].shape[0]
    h = xs.new_zeros(b, n)
    H = xs.new_zeros(b, n, n)
    E = xs.new_zeros(b, n, n) if kind == "retro" else None
    eta = fixed.get("eta", P.get("eta"))
    for t in range(steps):
        drive = xs[t] if kind in ("simplest", "plastic") else xs[t] @ P["u"].T
        # a_j = u_j + sum_i (W_ji + alpha_ji H_ji) x_i, with x = h_{t-1}
        a = drive + torch.einsum("bji,bi->bj", P["w"] + P["alpha"] * H, h)
        y = torch.tanh(a)
        hebb = y[:, :, None] * h[:, None, :]          # P_ji = y_j x_i
        if kind in ("simplest", "plastic"):
            H = (1 - eta) * H + eta * hebb
        else:
            m = torch.tanh(y @ P["v"])                # (B,)
            M = m[:, None] * P["f"][None, :]          # (B, N)
            if kind == "neuromod":
                H = torch.clamp(H + M[:, :, None] * hebb, -CLIP, CLIP)
            else:
                H = torch.clamp(H + M[:, :, None] * E, -CLIP, CLIP)
                E = (1 - P["eta_e"]) * E + P["eta_e"] * hebb
        h = y
    return ((h - tg) ** 2).sum()


def run_torch(args, kind, n, b, t, i):
    import torch
    torch.set_num_threads(args.threads)
    params, fixed = init_params(kind, n, i, args.seed)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    g = np.random.default_rng(args.seed + 1)
    data = [tuple(torch.from_numpy(a) for a in make_batch(kind, n, b, t, i, g)) for _ in range(args.n_data)]
    opt = torch.optim.Adam(P.values(), lr=LR)
    k = [0]

    def batch():
        k[0] += 1
        return data[k[0] % len(data)]

    def fwd():
        with torch.no_grad():
            return torch_episode_loss(torch, kind, P, fixed, *batch()).item()

    def train():
        opt.zero_grad(set_to_none=True)
        loss = torch_episode_loss(torch, kind, P, fixed, *batch())
        loss.backward()
        opt.step()
        return loss.item()

    out = {"torch_version": torch.__version__, "threads": torch.get_num_threads()}
    if args.mode in ("both", "fwd"):
        out["fwd"] = timed(fwd, args)
        out["rss_after_fwd_mib"] = peak_rss_mib()
    if args.mode in ("both", "train"):
        out["train"] = timed(train, args)
        out["rss_after_train_mib"] = peak_rss_mib()
    return out


# -------------------------------------------------------------------- JAX ----

def run_jax(args, kind, n, b, t, i):
    import jax
    import jax.numpy as jnp
    from jax import lax

    params, fixed = init_params(kind, n, i, args.seed)
    P = {k: jnp.asarray(v) for k, v in params.items()}
    g = np.random.default_rng(args.seed + 1)
    data = [tuple(jnp.asarray(a) for a in make_batch(kind, n, b, t, i, g)) for _ in range(args.n_data)]

    def loss_fn(P, xs, tg):
        bb = xs.shape[1]
        eta = fixed.get("eta", P.get("eta"))

        def step(carry, x_t):
            h, H, E = carry
            drive = x_t if kind in ("simplest", "plastic") else x_t @ P["u"].T
            y = jnp.tanh(drive + jnp.einsum("bji,bi->bj", P["w"] + P["alpha"] * H, h))
            hebb = y[:, :, None] * h[:, None, :]
            if kind in ("simplest", "plastic"):
                H = (1 - eta) * H + eta * hebb
            else:
                M = jnp.tanh(y @ P["v"])[:, None] * P["f"][None, :]
                if kind == "neuromod":
                    H = jnp.clip(H + M[:, :, None] * hebb, -CLIP, CLIP)
                else:
                    H = jnp.clip(H + M[:, :, None] * E, -CLIP, CLIP)
                    E = (1 - P["eta_e"]) * E + P["eta_e"] * hebb
            return (y, H, E), None

        zeros = jnp.zeros((bb, n, n), xs.dtype)
        E0 = zeros if kind == "retro" else jnp.zeros((bb, 0, 0), xs.dtype)
        (h, _, _), _ = lax.scan(step, (jnp.zeros((bb, n), xs.dtype), zeros, E0), xs)
        return jnp.sum((h - tg) ** 2)

    b1, b2, eps = 0.9, 0.999, 1e-8

    def update(P, m, v, count, xs, tg):
        loss, grads = jax.value_and_grad(loss_fn)(P, xs, tg)
        count = count + 1.0
        m = jax.tree_util.tree_map(lambda a, gr: b1 * a + (1 - b1) * gr, m, grads)
        v = jax.tree_util.tree_map(lambda a, gr: b2 * a + (1 - b2) * gr * gr, v, grads)
        step = LR / (1 - b1 ** count)
        P = jax.tree_util.tree_map(lambda p, a, c: p - step * a / (jnp.sqrt(c / (1 - b2 ** count)) + eps), P, m, v)
        return P, m, v, count, loss

    fwd_c = jax.jit(loss_fn)
    upd_c = jax.jit(update, donate_argnums=(0, 1, 2))
    k = [0]

    def batch():
        k[0] += 1
        return data[k[0] % len(data)]

    state = [P, jax.tree_util.tree_map(jnp.zeros_like, P), jax.tree_util.tree_map(jnp.zeros_like, P), jnp.float32(0)]

    def fwd():
        return float(fwd_c(state[0], *batch()))

    def train():
        P, m, v, c, loss = upd_c(*state, *batch())
        state[:] = [P, m, v, c]
        return float(loss)

    import jaxlib
    out = {"jax_version": jax.__version__, "jaxlib_version": jaxlib.__version__}
    if args.mode in ("both", "fwd"):
        t0 = time.perf_counter()
        fwd()
        out["fwd_compile_s"] = time.perf_counter() - t0
        out["fwd"] = timed(fwd, args)
        out["rss_after_fwd_mib"] = peak_rss_mib()
    if args.mode in ("both", "train"):
        t0 = time.perf_counter()
        train()
        out["train_compile_s"] = time.perf_counter() - t0
        out["train"] = timed(train, args)
        out["rss_after_train_mib"] = peak_rss_mib()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--framework", choices=["torch", "jax"], required=True)
    ap.add_argument("--workload", choices=list(SIZES), required=True)
    ap.add_argument("--N", type=int)
    ap.add_argument("--B", type=int)
    ap.add_argument("--T", type=int)
    ap.add_argument("--I", type=int, help="external inputs per step (neuromod, retro)")
    ap.add_argument("--mode", choices=["both", "fwd", "train"], default="both")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-episodes", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--max-episodes", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--n-data", type=int, default=4, help="pre-generated batches, cycled")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", help="also append the JSON line to this file")
    args = ap.parse_args()

    kind = args.workload
    n0, b0, t0, i0 = SIZES[kind]
    n, b, t, i = args.N or n0, args.B or b0, args.T or t0, args.I or i0
    if kind == "simplest" and (b != 1 or t != t0):
        ap.error(f"simplest is one episode of the pattern task: B = 1, T = {t0}")
    start = time.perf_counter()
    res = (run_torch if args.framework == "torch" else run_jax)(args, kind, n, b, t, i)
    k, s = TRACES[kind], n * n * 4
    line = json.dumps({
        "tag": args.tag, "framework": args.framework, "workload": kind,
        "N": n, "B": b, "T": t, "I": i, "argv": " ".join(sys.argv[1:]),
        "python": platform.python_version(), "numpy": np.__version__,
        "wall_s": time.perf_counter() - start,
        "n_traces": k, "trace_state_mib": k * b * s / 2**20,
        "trace_history_mib": k * b * s * t / 2**20,
        "fwd_min_bytes": t * (k * b * 2 * s + 2 * s),
        **res,
    })
    print(line)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
