#!/usr/bin/env python3
"""What this machine can do at best, to read benchmark times against.

* Copy bandwidth: bytes read + bytes written per second when one buffer is
  copied into another, for working sets from cache-sized to DRAM-sized, with 1
  and 2 threads (torch) and 1 thread (numpy). This is the denominator of the
  byte floor in docs/design.md §6 (`neuroplastic bench` measures its own copy in
  the same process; this script gives the machine's curve).
* Matrix product rate: float32 GFLOP/s of an n x n product (2 n^3 flops),
  with 1 and 2 threads: the bound where matrix-vector work, not traffic, limits.

Medians over repetitions (at least --reps, and at least --min-seconds). Prints
one JSON line; --out also appends it to a file.
"""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np


def median_time(fn, reps, min_seconds):
    fn()  # first touch: page faults and caches out of the timing
    times = []
    start = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 5000:
            break
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mib", default="1,4,16,64,256", help="size of each of the two buffers")
    ap.add_argument("--threads", default="1,2", help="torch thread counts to try")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=0.3)
    ap.add_argument("--out")
    args = ap.parse_args()

    import torch
    threads = [int(t) for t in args.threads.split(",")]
    res = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
           "copy": [], "matmul": []}
    for mib in (int(s) for s in args.sizes_mib.split(",")):
        n = mib * 2**20 // 4
        src, dst = np.full(n, 1.5, np.float32), np.zeros(n, np.float32)
        moved = 2 * src.nbytes  # read src + write dst
        t = median_time(lambda: np.copyto(dst, src), args.reps, args.min_seconds)
        res["copy"].append({"impl": "numpy", "threads": 1, "mib": mib, "gbps": moved / t / 1e9})
        ts, td = torch.from_numpy(src), torch.from_numpy(dst)
        for th in threads:
            torch.set_num_threads(th)
            t = median_time(lambda: td.copy_(ts), args.reps, args.min_seconds)
            res["copy"].append({"impl": "torch", "threads": th, "mib": mib, "gbps": moved / t / 1e9})
        del src, dst, ts, td
    n = args.matmul_n
    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    for th in threads:
        torch.set_num_threads(th)
        t = median_time(lambda: torch.mm(a, b), 3, 4 * args.min_seconds)
        res["matmul"].append({"impl": "torch", "threads": th, "n": n, "gflops": 2.0 * n**3 / t / 1e9})
    line = json.dumps(res)
    print(line)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
