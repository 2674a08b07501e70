#!/usr/bin/env python3
"""Check `neuroplastic grad` against PyTorch autograd.

For several small plastic networks (every rule, every alpha shape, with and
without a read-out head, modulator options, an initial state) this script

  1. writes a model file M and an episode file E with numpy + safetensors
     (the formats of docs/formats.md),
  2. runs `neuroplastic grad --model M --episode E --out G` on each backend,
  3. computes the same masked squared-error loss in PyTorch (float64, written
     from the equations in docs/formats.md) and its gradients by autograd,
  4. prints, per network and backend, the largest error over the parameter
     gradients, relative to each tensor's largest gradient.

Layout: our weights are [post][pre] (like torch.nn.Linear.weight), so a
batch of row vectors x maps to x @ w.T.

    cargo build --release
    python3 examples/python/check_grad.py [--bin target/release/neuroplastic]

Needs numpy, safetensors and torch. Exits non-zero when an error is above
the tolerance (1e-5 for the reference backend, 1e-3 for the f32 CPU backend).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

TOL = {"reference": 1e-5, "cpu": 1e-3}


def make_network(rng, rule, alpha, n, x, o, k, head, bias, mod_bias, fanout, fanout_bias):
    """Parameters (float32 numpy arrays) and metadata of one plastic network."""
    f32 = np.float32
    p = {"w": rng.uniform(-1, 1, (n, n)).astype(f32) / np.sqrt(n).astype(f32)}
    p["alpha"] = {
        "connection": rng.uniform(-0.5, 0.5, (n, n)),
        "neuron": rng.uniform(-0.5, 0.5, (n,)),
        "scalar": rng.uniform(-0.5, 0.5, (1,)),
    }[alpha].astype(f32)
    if rule in ("hebb", "oja"):
        p["eta"] = np.array([0.3], f32)
    if rule == "retroactive":
        p["eta_e"] = np.array([0.4], f32)
    if x is not None:  # absent `u`: the input is added to the pre-activation (X = N)
        p["u"] = rng.uniform(-1, 1, (n, x)).astype(f32)
    if bias:
        p["b"] = rng.uniform(-0.3, 0.3, (n,)).astype(f32)
    if rule in ("modulated", "retroactive"):
        p["mod.v"] = rng.uniform(-1, 1, (k, n)).astype(f32)
        if mod_bias:
            p["mod.c"] = rng.uniform(-0.5, 0.5, (k,)).astype(f32)
        if fanout:
            p["mod.fanout"] = rng.uniform(-1, 1, (k, n)).astype(f32)
        if fanout_bias:
            p["mod.fanout_bias"] = rng.uniform(-0.3, 0.3, (n,)).astype(f32)
    if head:
        p["head.out.weight"] = rng.uniform(-1, 1, (o, n)).astype(f32) / np.sqrt(n).astype(f32)
        p["head.out.bias"] = rng.uniform(-0.3, 0.3, (o,)).astype(f32)
    meta = {"neuroplastic.rule": rule, "neuroplastic.alpha": alpha, "neuroplastic.activation": "tanh"}
    if rule in ("modulated", "retroactive"):
        meta["neuroplastic.modulator"] = "sigmoid" if k > 1 else "tanh"
        meta["neuroplastic.clip"] = "0.8"
    return p, meta


def make_episode(rng, p, b, t, init):
    n = p["w"].shape[0]
    x = p["u"].shape[1] if "u" in p else n
    o = p["head.out.bias"].shape[0] if "head.out.bias" in p else n
    f32 = np.float32
    e = {
        "inputs": rng.uniform(-1, 1, (b, t, x)).astype(f32),
        "targets": rng.uniform(-0.8, 0.8, (b, t, o)).astype(f32),
        "mask": (rng.uniform(0, 1, (b, t)) < 0.7).astype(f32),
    }
    if init:
        e["h0"] = rng.uniform(-0.5, 0.5, (b, n)).astype(f32)
        e["hebb0"] = rng.uniform(-0.5, 0.5, (b, n, n)).astype(f32)
        if "eta_e" in p:
            e["elig0"] = rng.uniform(-0.5, 0.5, (b, n, n)).astype(f32)
    return e


def torch_loss(P, E, meta):
    """The model loss of docs/formats.md, step by step, in PyTorch (batch of row vectors)."""
    rule = meta["neuroplastic.rule"]
    clip = float(meta.get("neuroplastic.clip", "inf"))
    mu = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda s: s}[
        meta.get("neuroplastic.modulator", "tanh")
    ]
    w = P["w"]
    n = w.shape[0]
    # alpha_ji broadcast to (N, N): per connection, per post-synaptic neuron (row j), or one scalar.
    alpha = P["alpha"].reshape(n, 1) if P["alpha"].shape == (n,) and n > 1 else P["alpha"]
    inputs = E["inputs"]
    b_, t_, _ = inputs.shape
    h = E.get("h0", torch.zeros(b_, n, dtype=w.dtype))
    H = E.get("hebb0", torch.zeros(b_, n, n, dtype=w.dtype))
    El = E.get("elig0", torch.zeros(b_, n, n, dtype=w.dtype))
    ys = []
    for t in range(t_):
        x = h  # the pre-synaptic vector of a recurrent layer is h_(t-1)
        drive = inputs[:, t] @ P["u"].T if "u" in P else inputs[:, t]
        # a_j = b_j + u_j + sum_i (W_ji + alpha_ji H_ji) x_i
        a = drive + torch.einsum("bji,bi->bj", w + alpha * H, x)
        if "b" in P:
            a = a + P["b"]
        y = torch.tanh(a)
        outer = y[:, :, None] * x[:, None, :]  # P_ji = y_j x_i
        if rule == "hebb":
            H = (1 - P["eta"]) * H + P["eta"] * outer
        elif rule == "oja":
            H = H + P["eta"] * y[:, :, None] * (x[:, None, :] - y[:, :, None] * H)
        else:
            s = y @ P["mod.v"].T
            if "mod.c" in P:
                s = s + P["mod.c"]
            m = mu(s)  # (B, K)
            M = m @ P["mod.fanout"] if "mod.fanout" in P else m.sum(dim=1, keepdim=True).expand(-1, n)
            if "mod.fanout_bias" in P:
                M = M + P["mod.fanout_bias"]
            if rule == "modulated":
                H = torch.clamp(H + M[:, :, None] * outer, -clip, clip)
            else:
                H = torch.clamp(H + M[:, :, None] * El, -clip, clip)
                El = (1 - P["eta_e"]) * El + P["eta_e"] * outer
        h = y
        ys.append(y)
    Y = torch.stack(ys, dim=1)  # (B, T, N)
    if "head.out.weight" in P:
        Y = Y @ P["head.out.weight"].T + P["head.out.bias"]
    return (E["mask"][:, :, None] * (Y - E["targets"]) ** 2).sum()


def check(binary, work, name, p, meta, e):
    mp, ep = os.path.join(work, f"{name}-M.safetensors"), os.path.join(work, f"{name}-E.safetensors")
    save_file(p, mp, metadata=meta)
    save_file(e, ep)
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p.items()}
    E = {k: torch.tensor(v, dtype=torch.float64) for k, v in e.items()}
    loss = torch_loss(P, E, meta)
    loss.backward()
    rows = []
    for device in ("reference", "cpu"):
        gp = os.path.join(work, f"{name}-G-{device}.safetensors")
        run = subprocess.run(
            [binary, "grad", "--model", mp, "--episode", ep, "--out", gp, "--device", device],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            sys.exit(f"neuroplastic grad failed:\n{run.stderr}")
        ours_loss = float(run.stdout.split("loss = ")[1].split()[0])
        g = load_file(gp)
        assert set(g) == set(p) | {"loss"}, sorted(g)
        worst, at = 0.0, ""
        for k in p:
            ref = P[k].grad.numpy()
            scale = max(np.abs(ref).max(), 1e-12)
            err = np.abs(g[k].astype(np.float64).reshape(ref.shape) - ref).max() / scale
            if err > worst:
                worst, at = err, k
        rows.append((name, device, ours_loss, loss.item(), worst, at, worst <= TOL[device]))
    return rows


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(here, "..", "..", "target", "release", "neuroplastic"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    # (rule, alpha, N, X or None for direct input, O, K, head, bias, mod.c, fan-out, fan-out bias, initial state)
    nets = [
        ("hebb", "connection", 7, 3, 2, 1, True, True, False, False, False, False),
        ("hebb", "scalar", 6, None, 6, 1, False, False, False, False, False, True),
        ("oja", "neuron", 7, 4, 3, 1, True, False, False, False, False, True),
        ("oja", "connection", 5, None, 5, 1, False, True, False, False, False, False),
        ("modulated", "connection", 8, 3, 2, 1, True, True, True, False, False, True),
        ("modulated", "scalar", 6, None, 6, 2, False, False, False, True, True, False),
        ("retroactive", "neuron", 8, 5, 2, 2, True, True, True, True, True, True),
        ("retroactive", "connection", 6, None, 6, 1, False, False, True, False, False, True),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for rule, alpha, n, x, o, k, head, bias, mod_bias, fan, fan_b, init in nets:
            p, meta = make_network(rng, rule, alpha, n, x, o, k, head, bias, mod_bias, fan, fan_b)
            e = make_episode(rng, p, b=3, t=10, init=init)
            name = f"{rule}-{alpha}" + ("-head" if head else "") + ("-init" if init else "")
            rows += check(os.path.abspath(args.bin), work, name, p, meta, e)
    print(f"torch {torch.__version__}, numpy {np.__version__}; B = 3, T = 10")
    print(f"{'network':<32} {'backend':<10} {'loss (ours)':>14} {'loss (torch)':>14} {'max rel err':>12}  worst tensor")
    for name, dev, ol, tl, err, at, ok in rows:
        flag = "" if ok else f"  ABOVE TOLERANCE {TOL[dev]:g}"
        print(f"{name:<32} {dev:<10} {ol:>14.8f} {tl:>14.8f} {err:>12.2e}  {at}{flag}")
    bad = [r for r in rows if not r[-1]]
    print("all gradients agree with PyTorch autograd" if not bad else f"{len(bad)} above tolerance")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
