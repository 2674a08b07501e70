"""Check `neuroplastic meta-grad` against PyTorch (`create_graph=True`).

For each configuration (mse/xent, second/first order, truncation, clamp,
learned or fixed inner learning rate, gate position, absent RLN or NM) this
script draws a small random meta-learner and a trajectory of P tasks, writes
them as safetensors files, runs `neuroplastic meta-grad` on both backends, and
computes the same meta-loss and gradient with torch autograd in float64: the
inner SGD loop is unrolled with `torch.autograd.grad(..., create_graph=True)`
for the differentiated steps and detached gradients for the others.

    python examples/python/meta_check.py --bin target/release/neuroplastic

Exit status 0 when every configuration agrees, 1 otherwise.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

CONFIGS = [
    # name, loss, order, truncate, clamp, learned lr, rln, nm, gate_at
    ("oml-mse-second", "mse", "second", 0, 0.0, False, True, False, 0),
    ("oml-mse-first", "mse", "first", 0, 0.0, False, True, False, 0),
    ("oml-mse-truncated", "mse", "second", 2, 0.0, False, True, False, 0),
    ("oml-xent-clamp-learned", "xent", "second", 0, 0.3, True, True, False, 0),
    ("anml-gate0", "mse", "second", 0, 0.0, True, True, True, 0),
    ("anml-gate1-xent", "xent", "second", 0, 0.0, False, True, True, 1),
    ("anml-no-rln-truncated-clamp", "mse", "second", 3, 0.5, True, False, True, 1),
    ("maml-no-rln-no-nm", "mse", "second", 0, 0.0, True, False, False, 0),
    ("maml-first-xent", "xent", "first", 0, 0.0, True, False, False, 0),
]


def dense_stack(rng, prefix, widths, out):
    for l in range(len(widths) - 1):
        i, o = widths[l], widths[l + 1]
        a = 1.6 / np.sqrt(i)
        out[f"{prefix}.{l}.weight"] = rng.uniform(-a, a, (o, i)).astype(np.float32)
        out[f"{prefix}.{l}.bias"] = rng.uniform(-0.3, 0.3, (o,)).astype(np.float32)


def make_case(cfg, seed):
    name, loss, order, trunc, clamp, learn, rln, nm, gate_at = cfg
    rng = np.random.default_rng(seed)
    d, o = 4, (3 if loss == "xent" else 2)
    p, s, bi, bo = 3, 4, 5, 6
    t = {}
    rln_w = [d, 7, 6] if rln else []
    pin = rln_w[-1] if rln else d
    pln_w = [pin, 5, o]
    if rln:
        dense_stack(rng, "rln", rln_w, t)
    dense_stack(rng, "pln", pln_w, t)
    if nm:
        dense_stack(rng, "nm", [d, 5, pln_w[gate_at]], t)
    beta = 0.3
    meta = {
        "neuroplastic.meta.loss": loss,
        "neuroplastic.meta.order": order,
        "neuroplastic.meta.truncate": str(trunc),
        "neuroplastic.meta.clamp": str(clamp),
        "neuroplastic.meta.gate_at": str(gate_at),
    }
    if learn:
        t["inner_lr"] = np.array([beta], np.float32)
    else:
        meta["neuroplastic.meta.inner_lr"] = str(beta)
    tr = {
        "inner.x": rng.uniform(-1.5, 1.5, (p, s, bi, d)).astype(np.float32),
        "outer.x": rng.uniform(-1.5, 1.5, (p, bo, d)).astype(np.float32),
    }
    if loss == "mse":
        tr["inner.y"] = rng.uniform(-1.5, 1.5, (p, s, bi, o)).astype(np.float32)
        tr["outer.y"] = rng.uniform(-1.5, 1.5, (p, bo, o)).astype(np.float32)
    else:
        tr["inner.y"] = rng.integers(0, o, (p, s, bi)).astype(np.float32)
        tr["outer.y"] = rng.integers(0, o, (p, bo)).astype(np.float32)
    return t, meta, tr


def stack(params, prefix):
    out, l = [], 0
    while f"{prefix}.{l}.weight" in params:
        out.append((params[f"{prefix}.{l}.weight"], params[f"{prefix}.{l}.bias"]))
        l += 1
    return out


def mlp(layers, x, relu_last):
    for l, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if l + 1 < len(layers) or relu_last:
            x = torch.relu(x)
    return x


def torch_meta_grad(t, meta, tr):
    """Meta-loss and gradient of every tensor, float64, autograd through the inner loop."""
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in t.items()}
    loss_kind = meta["neuroplastic.meta.loss"]
    order = meta["neuroplastic.meta.order"]
    trunc = int(meta["neuroplastic.meta.truncate"])
    clamp = float(meta["neuroplastic.meta.clamp"])
    gate_at = int(meta["neuroplastic.meta.gate_at"])
    beta = params["inner_lr"][0] if "inner_lr" in params else float(meta["neuroplastic.meta.inner_lr"])
    rln, pln0, nm = stack(params, "rln"), stack(params, "pln"), stack(params, "nm")
    x_in = torch.tensor(tr["inner.x"], dtype=torch.float64)
    y_in = torch.tensor(tr["inner.y"], dtype=torch.float64)
    x_out = torch.tensor(tr["outer.x"], dtype=torch.float64)
    y_out = torch.tensor(tr["outer.y"], dtype=torch.float64)
    P, S = x_in.shape[0], x_in.shape[1]
    k0 = S if order == "first" else (max(S - trunc, 0) if trunc > 0 else 0)

    def ell(theta, x, y):
        h = mlp(rln, x, True) if rln else x
        g = mlp(nm, x, False) if nm else None
        z = h
        for l, (w, b) in enumerate(theta):
            if g is not None and l == gate_at:
                z = z * torch.sigmoid(g)
            z = z @ w.T + b
            if l + 1 < len(theta):
                z = torch.relu(z)
        if loss_kind == "mse":
            return ((z - y) ** 2).sum(dim=1).mean()
        return torch.nn.functional.cross_entropy(z, y.long())

    total = 0.0
    for p in range(P):
        theta = [(w, b) for (w, b) in pln0]
        for k in range(S):
            flat = [a for wb in theta for a in wb]
            lk = ell(theta, x_in[p, k], y_in[p, k])
            grads = torch.autograd.grad(lk, flat, create_graph=k >= k0)
            if clamp > 0:
                grads = [gr.clamp(-clamp, clamp) for gr in grads]
            if k < k0:
                grads = [gr.detach() for gr in grads]
            new = [a - beta * gr for a, gr in zip(flat, grads)]
            theta = [(new[2 * l], new[2 * l + 1]) for l in range(len(theta))]
        total = total + ell(theta, x_out[p], y_out[p])
    total = total / P
    names = sorted(params)
    grads = torch.autograd.grad(total, [params[n] for n in names], allow_unused=True)
    out = {n: (g.detach().numpy() if g is not None else np.zeros_like(t[n], dtype=np.float64)) for n, g in zip(names, grads)}
    return float(total.detach()), out


def compare(name, backend, ours, loss, want, tol):
    scale = max(1.0, max(float(np.abs(v).max()) for v in want.values()))
    worst, where = abs(float(ours["loss"][0]) - loss) / (1 + abs(loss)), "loss"
    for n, w in want.items():
        if n not in ours:
            print(f"  {name} [{backend}]: tensor `{n}` missing from the gradient file")
            return False
        e = float(np.abs(ours[n].astype(np.float64) - w).max()) / scale
        if e > worst:
            worst, where = e, n
    ok = worst <= tol
    print(f"  {name:32s} [{backend:9s}] largest error {worst:.2e} ({where}), tolerance {tol:.0e}: {'ok' if ok else 'MISMATCH'}")
    return ok


def main():
    # Here, not at the top: python/tests/test_meta.py imports torch_meta_grad
    # from this file where safetensors may not be installed.
    from safetensors.numpy import load_file, save_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.environ.get("NEUROPLASTIC_BIN", "target/release/neuroplastic"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for i, cfg in enumerate(CONFIGS):
            t, meta, tr = make_case(cfg, args.seed * 1000 + i)
            mp, tp = os.path.join(tmp, "m.safetensors"), os.path.join(tmp, "t.safetensors")
            save_file(t, mp, metadata=meta)
            save_file(tr, tp)
            loss, want = torch_meta_grad(t, meta, tr)
            for backend, tol in (("reference", 2e-6), ("cpu", 2e-4)):
                gp = os.path.join(tmp, f"g-{backend}.safetensors")
                r = subprocess.run(
                    [args.bin, "meta-grad", "--model", mp, "--trajectory", tp, "--out", gp, "--backend", backend],
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    print(f"  {cfg[0]} [{backend}]: meta-grad failed: {r.stderr.strip()}")
                    ok = False
                    continue
                ok &= compare(cfg[0], backend, load_file(gp), loss, want, tol)
    print("all configurations agree with PyTorch" if ok else "MISMATCH against PyTorch")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
