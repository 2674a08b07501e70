"""One second-order meta-gradient from a PyTorch script, two ways:
``neuroplastic.torch.meta_loss`` (the Rust engine behind one autograd
function) against the loop OML/ANML scripts write
(``benches/baselines/meta_torch.py``: ``torch.autograd.grad(...,
create_graph=True)`` through every inner step, one ``backward()``).

Both build the same model and data from ``torch.manual_seed(0)`` (the
workloads of ``neuroplastic bench meta``: ``sine`` and ``inner``), so their
meta-losses must agree; the script checks that. Each runs in its own
process: median seconds per meta-gradient (loss and ``backward()``), the
process's peak resident memory (torch's import included) and its growth
over the resident memory before the first step (model and data built): the
computation's own memory.

    python python/bench/torch_meta_bench.py --workload sine [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BASELINES = os.path.join(HERE, "..", "..", "benches", "baselines")
sys.path.insert(0, BASELINES)


def child(workload: str, min_seconds: float, min_reps: int, threads: int) -> None:
    """The neuroplastic side: meta_torch.py's model and data, meta_loss instead of the loop."""
    import torch

    from meta_common import WORKLOADS, measure, peak_rss_mib, rss_mib
    from neuroplastic.torch import meta_loss

    torch.set_num_threads(1)
    rln_w, pln_w, P, S, Bi, Bo = WORKLOADS[workload]
    D = rln_w[0] if rln_w else pln_w[0]
    torch.manual_seed(0)
    # The same draws in the same order as meta_torch.py: the RLN's Linear
    # layers, the PLN's, then the data.
    stacks = {}
    for prefix, widths in (("rln", rln_w), ("pln", pln_w)):
        for l, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
            layer = torch.nn.Linear(i, o)
            stacks[f"{prefix}.{l}.weight"] = layer.weight
            stacks[f"{prefix}.{l}.bias"] = layer.bias
    traj = {
        "inner.x": torch.empty(P, S, Bi, D).uniform_(-5, 5),
        "inner.y": torch.empty(P, S, Bi, 1).uniform_(-5, 5),
        "outer.x": torch.empty(P, Bo, D).uniform_(-5, 5),
        "outer.y": torch.empty(P, Bo, 1).uniform_(-5, 5),
    }

    def meta_step():
        for p in stacks.values():
            p.grad = None
        total = meta_loss(stacks, traj, inner_lr=0.003, threads=threads)
        total.backward()
        return float(total.detach())

    args = argparse.Namespace(min_seconds=min_seconds, min_reps=min_reps)
    start = rss_mib()
    med, reps, loss = measure(meta_step, args)
    print(json.dumps({"impl": "neuroplastic.torch", "workload": workload, "median_s": med, "reps": reps,
                      "peak_rss_mib": peak_rss_mib(), "start_rss_mib": start, "loss": loss, "threads": threads}))


def run(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=("sine", "inner"), default="sine")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch's threads, and the kernels' (default 2)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.workload, a.min_seconds, a.min_reps, a.threads)
        return
    common = ["--workload", a.workload, "--min-seconds", str(a.min_seconds), "--min-reps", str(a.min_reps)]
    plain = run([sys.executable, os.path.join(BASELINES, "meta_torch.py"), *common], a.threads)
    ours = run([sys.executable, os.path.abspath(__file__), "--child", "--threads", str(a.threads), *common], a.threads)
    rel = abs(plain["loss"] - ours["loss"]) / max(1.0, abs(plain["loss"]))
    grow = {r["impl"]: r["peak_rss_mib"] - r["start_rss_mib"] for r in (plain, ours)}
    print(f"workload {a.workload}, {a.threads} thread(s); median s per meta-gradient, peak RSS and its growth (MiB)")
    for r in (plain, ours):
        print(
            f"  {r['impl']:20s} {r['median_s']:9.4f} s  peak {r['peak_rss_mib']:7.1f}  growth {grow[r['impl']]:7.1f}"
            f"  loss {r['loss']:.6f}  ({r['reps']} reps)"
        )
    print(
        f"  speed-up {plain['median_s'] / ours['median_s']:.2f}x, "
        f"growth {grow['pytorch'] / max(grow['neuroplastic.torch'], 0.1):.1f}x less"
    )
    if rel > 1e-3:
        sys.exit(f"the meta-losses differ (relative {rel:.2e}): the two sides did not compute the same thing")


if __name__ == "__main__":
    main()
