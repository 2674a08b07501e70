"""What the two baselines of `neuroplastic bench meta` (meta_torch.py,
meta_jax.py) share: the workloads, the command line, and the timing loop, so
that both measure the same thing the same way.
"""

import argparse
import resource
import time

WORKLOADS = {
    # rln widths, pln widths, P, S, Bi, Bo
    "sine": ([11, 300, 300, 300, 300, 300, 300], [300, 300, 1], 8, 20, 32, 64),
    "inner": ([], [11, 300, 300, 1], 32, 50, 16, 64),
}


def parse_args():
    """The parsed command line (`--workload`, `--min-seconds`, `--min-reps`)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=WORKLOADS, default="sine")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--min-reps", type=int, default=5)
    return ap.parse_args()


def measure(step, a):
    """Calls `step()` once untimed (warm-up, compilation), then times it until
    both `a.min_reps` calls and `a.min_seconds` seconds are reached. `step`
    must return only when its work is done. Returns the median seconds, the
    number of timed calls and the last call's result."""
    step()
    times = []
    start = time.perf_counter()
    while len(times) < a.min_reps or time.perf_counter() - start < a.min_seconds:
        t0 = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    return med, len(times), out


def peak_rss_mib():
    """Peak resident memory of this process (`ru_maxrss`, KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib():
    """Resident memory of this process now (`VmRSS`), MiB: taken before the
    first step, it separates the computation's memory from the imports'."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")
