#!/usr/bin/env python3
"""PyTorch eager baseline of `neuroplastic bench` on a GPU: one training
episode (forward over T steps, autograd backward, Adam step) of the same
layers, shapes and loss as the bench's workloads, written from the equations
in docs/backward.md §2. Prints one JSON line per workload.

    python3 scripts/torch_eager.py --device cuda --workload plastic neuromod retro
"""
import argparse
import json
import statistics
import time

import torch

# (N, B, T, X) as in src/cli/bench.rs.
DIMS = {"plastic": (256, 32, 100, 256), "neuromod": (200, 32, 200, 17), "retro": (200, 32, 200, 17)}


def make(workload, n, x, dev, g):
    p = {
        "w": torch.randn(n, n, generator=g) * 0.01,
        "alpha": torch.randn(n, n, generator=g) * 0.01,
    }
    if workload == "plastic":
        p["eta"] = torch.tensor([0.01])
    else:
        p["u"] = torch.randn(n, x, generator=g) / x ** 0.5
        p["v"] = torch.randn(1, n, generator=g) / n ** 0.5
        p["f"] = 1.0 + 0.1 * torch.randn(1, n, generator=g)
        if workload == "retro":
            p["eta_e"] = torch.tensor([0.1])
    return {k: v.to(dev).requires_grad_() for k, v in p.items()}


def episode(workload, n, b, t, x, dev, g):
    if workload == "plastic":
        inputs = torch.randint(0, 2, (b, t, x), generator=g).float() * 2 - 1
    else:
        inputs = torch.randn(b, t, x, generator=g)
    targets = torch.randint(0, 2, (b, n), generator=g).float() * 2 - 1
    return inputs.to(dev), targets.to(dev)


def loss_fn(workload, p, inputs, targets, clip=2.0):
    b, t, _ = inputs.shape
    n = p["w"].shape[0]
    h = inputs.new_zeros(b, n)
    hebb = inputs.new_zeros(b, n, n)
    elig = inputs.new_zeros(b, n, n) if workload == "retro" else None
    for s in range(t):
        x = h
        drive = inputs[:, s] if workload == "plastic" else inputs[:, s] @ p["u"].t()
        a = drive + x @ p["w"].t() + torch.einsum("bji,bi->bj", p["alpha"] * hebb, x)
        y = torch.tanh(a)
        outer = y[:, :, None] * x[:, None, :]
        if workload == "plastic":
            hebb = (1 - p["eta"]) * hebb + p["eta"] * outer
        else:
            m = torch.tanh(y @ p["v"].t())  # (B, 1)
            mm = m * p["f"]  # (B, N)
            if workload == "neuromod":
                hebb = torch.clamp(hebb + mm[:, :, None] * outer, -clip, clip)
            else:
                hebb = torch.clamp(hebb + mm[:, :, None] * elig, -clip, clip)
                elig = (1 - p["eta_e"]) * elig + p["eta_e"] * outer
        h = y
    return ((h - targets) ** 2).sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workload", nargs="+", default=["plastic", "neuromod", "retro"])
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for w in a.workload:
        n, b, t, x = DIMS[w]
        g = torch.Generator().manual_seed(0)
        p = make(w, n, x, dev, g)
        opt = torch.optim.Adam(p.values(), lr=3e-4)
        data = [episode(w, n, b, t, x, dev, g) for _ in range(4)]
        times = []
        for k in range(a.warmup + a.episodes):
            inputs, targets = data[k % 4]
            sync()
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = loss_fn(w, p, inputs, targets)
            loss.backward()
            opt.step()
            sync()
            if k >= a.warmup:
                times.append(time.perf_counter() - t0)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        print(json.dumps({"framework": "torch-eager", "workload": w, "device": name, "N": n, "B": b, "T": t,
                          "train_median_s": statistics.median(times), "n_train": len(times),
                          "last_loss": float(loss)}), flush=True)


if __name__ == "__main__":
    main()
