"""One training loop, two plastic RNNs: ``neuroplastic.torch`` against the
plain PyTorch layer of ``python/tests/plain_plastic.py`` (one batched step per
time step, autograd keeping every step's trace).

The task: a batch of episodes of random ±1 input patterns; a linear head on
the plastic layer's output must reproduce the pattern seen ``delay`` steps
earlier (MSE, Adam). Both layers start from the same parameters, so their
losses after the same episodes must agree; the script checks that.

Each implementation runs in its own process so that its peak memory is its
own: time per episode (forward + backward + optimizer step, median over the
timed episodes) and peak resident memory (``ru_maxrss``) and its increase
over the resident memory before the first episode (after imports and model
construction).

    python python/bench/torch_module_bench.py --rule hebb --batch 16 --steps 100 --hidden 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_one(args) -> dict:
    import torch

    from neuroplastic.torch import PlasticRNN
    from plain_plastic import PlainPlasticRNN

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kw = dict(clip=2.0) if args.rule in ("modulated", "retroactive") else {}
    layer = PlasticRNN(args.inputs, args.hidden, rule=args.rule, threads=args.threads, **kw)
    head = torch.nn.Linear(args.hidden, args.inputs)
    if args.impl == "plain":
        plain = PlainPlasticRNN(layer.config)
        plain.load_state_dict(layer.state_dict())
        layer = plain
    params = list(layer.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(1)

    def episode():
        x = torch.randint(0, 2, (args.batch, args.steps, args.inputs), generator=gen).float() * 2 - 1
        target = torch.zeros_like(x)
        target[:, args.delay :] = x[:, : -args.delay]
        y, _ = layer(x)
        loss = torch.nn.functional.mse_loss(head(y), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for name in ("eta", "eta_e"):
                if hasattr(layer, name):
                    getattr(layer, name).clamp_(0.0, 1.0)
        return loss.item()

    rss_before = rss_mib()
    for _ in range(args.warmup):
        episode()
    times, losses = [], []
    for _ in range(args.episodes):
        t0 = time.perf_counter()
        losses.append(episode())
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "impl": args.impl,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_rss_mib": peak,
        "rss_at_start_mib": rss_before,
        "last_loss": losses[-1],
    }


def report(args, results):
    import platform

    plain, ours = results["plain"], results["neuroplastic"]
    print(
        f"rule {args.rule}, B = {args.batch}, T = {args.steps}, N = {args.hidden}, X = {args.inputs}, "
        f"threads {args.threads}, {args.episodes} timed episodes after {args.warmup} warm-up; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    )
    print(f"{'':14} {'median s/episode':>17} {'min':>8} {'peak RSS MiB':>13} {'RSS at start':>16} {'last loss':>10}")
    for name, r in (("plain PyTorch", plain), ("neuroplastic", ours)):
        print(
            f"{name:14} {r['median_s']:17.4f} {r['min_s']:8.4f} {r['peak_rss_mib']:13.0f} "
            f"{r['rss_at_start_mib']:16.0f} {r['last_loss']:10.5f}"
        )
    grow = lambda r: r["peak_rss_mib"] - r["rss_at_start_mib"]  # noqa: E731
    print(
        f"ratio plain / neuroplastic: time {plain['median_s'] / ours['median_s']:.2f}x, "
        f"peak RSS {plain['peak_rss_mib'] / ours['peak_rss_mib']:.2f}x, "
        f"peak over start {grow(plain):.0f} MiB vs {grow(ours):.0f} MiB"
    )
    # Same parameters, same episodes: the two must have trained the same layer.
    if abs(plain["last_loss"] - ours["last_loss"]) > 1e-3 * max(1.0, abs(plain["last_loss"])):
        sys.exit(f"the two implementations disagree: last loss {plain['last_loss']} vs {ours['last_loss']}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rule", default="hebb", choices=["hebb", "oja", "modulated", "retroactive"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--delay", type=int, default=3)
    p.add_argument("--episodes", type=int, default=20, help="timed episodes")
    p.add_argument("--warmup", type=int, default=3)
    # One thread each by default: torch's OpenMP threads and the kernels'
    # rayon threads spin while they wait, so on a small shared machine two
    # pools of 2 fight for the same cores (see BENCHMARKS.md).
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads and the kernels' threads")
    p.add_argument("--impl", default="both", choices=["both", "neuroplastic", "plain"])
    args = p.parse_args()
    if args.impl != "both":
        print(json.dumps(run_one(args)))
        return
    results = {}
    for impl in ("plain", "neuroplastic"):
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--impl", impl]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[impl] = json.loads(out.strip().splitlines()[-1])
    report(args, results)


if __name__ == "__main__":
    main()
