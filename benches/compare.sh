#!/usr/bin/env bash
# Side-by-side benchmark: neuroplastic vs PyTorch eager vs JAX jit on the four
# workloads of benches/baselines/plastic_bench.py, interleaved (ours, torch, jax
# per workload, ROUNDS times) so that machine noise hits all three alike.
# Writes one JSON line per run to $OUT (default target/compare.jsonl).
#
#   PY=$HOME/bench-venv/bin/python ROUNDS=3 benches/compare.sh
#
# Needs a Python with torch, jax and numpy (set-up in BENCHMARKS.md, "Baselines").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$HOME/bench-venv/bin/python}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-target/compare.jsonl}
MIN_SECONDS=${MIN_SECONDS:-3}
BASELINES=${BASELINES:-benches/baselines}
WORKLOADS=${WORKLOADS:-simplest plastic neuromod retro}
cargo build --release --quiet
BIN=target/release/neuroplastic
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
for r in $(seq 1 "$ROUNDS"); do
  for w in $WORKLOADS; do
    echo "round $r: $w" >&2
    "$BIN" bench --workload "$w" --json --min-seconds "$MIN_SECONDS" | sed "s/^{/{\"round\":$r,/" >> "$OUT"
    for fw in torch jax; do
      "$PY" "$BASELINES/plastic_bench.py" --framework "$fw" --workload "$w" --mode both \
        --min-seconds "$MIN_SECONDS" --tag "round$r" | sed "s/^{/{\"round\":$r,/" >> "$OUT"
    done
  done
done
echo "wrote $OUT" >&2
