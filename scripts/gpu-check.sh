#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, in one call, on a machine that has the
# repository and an NVIDIA driver. Writes a results file (default
# target/gpu-check/results.md) with each step's command, status, time and
# output tail, and keeps going after a failed step so that one call gives the
# whole picture. The steps stop being started once BUDGET seconds (default
# 540) have passed, so that the call ends within a 10-minute slot; the ones
# not started are listed as such.
#
#   scripts/gpu-check.sh                 # build with cargo, then every step
#   BIN_DIR=dir scripts/gpu-check.sh     # no Rust toolchain or network on the GPU machine:
#                                        # run prebuilt binaries from dir: neuroplastic,
#                                        # cuda_gpu and cuda_nvrtc (the test executables of
#                                        # `cargo test --release --no-run --test cuda_gpu --test cuda_nvrtc`;
#                                        # build them with RUSTFLAGS="-C target-cpu=x86-64-v3" for another CPU)
#   SKIP_TORCH=1 scripts/gpu-check.sh    # without the PyTorch baseline
#
# NVRTC: $NVRTC_LIB (a folder holding libnvrtc.so.12), else the pip package
# nvidia-cuda-nvrtc-cu12==12.8.93 in $NVRTC_DIR (installed there if missing
# and pip can reach PyPI), else a CUDA 12 toolkit on LD_LIBRARY_PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/gpu-check}
RES="$OUT/results.md"
mkdir -p "$OUT"
NVRTC_DIR=${NVRTC_DIR:-${NEUROPLASTIC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/neuroplastic}/nvrtc-12.8.93}
if [ -z "${NVRTC_LIB:-}" ]; then
  NVRTC_LIB="$NVRTC_DIR/nvidia/cuda_nvrtc/lib"
  if [ ! -e "$NVRTC_LIB/libnvrtc.so.12" ]; then
    python3 -m pip install --quiet --target "$NVRTC_DIR" "nvidia-cuda-nvrtc-cu12==12.8.93" >/dev/null 2>&1 || true
  fi
fi
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NEUROPLASTIC_REQUIRE_NVRTC=1
# Here a missing GPU fails the GPU tests instead of skipping them.
export NEUROPLASTIC_REQUIRE_GPU=1
BUDGET=${BUDGET:-540}
START=$(date +%s)
FAILED=0
if [ -n "${BIN_DIR:-}" ]; then
  BIN="$BIN_DIR/neuroplastic"
  TEST_GPU=("$BIN_DIR/cuda_gpu" --nocapture)
  TEST_NVRTC=("$BIN_DIR/cuda_nvrtc" --nocapture)
else
  BIN=target/release/neuroplastic
  TEST_GPU=(cargo test --release --test cuda_gpu -- --nocapture)
  TEST_NVRTC=(cargo test --release --test cuda_nvrtc -- --nocapture)
fi

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 || echo "nvidia-smi not found"
  echo '```'
} > "$RES"

# step NAME TIMEOUT_S COMMAND...: runs the command, records status, time and output tail.
step() {
  local name=$1 limit=$2
  shift 2
  local log="$OUT/$name.log" t0 rc left
  left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then
    printf '\n## %s: NOT RUN (out of time)\n\n`%s`\n' "$name" "$*" >> "$RES"
    FAILED=1
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$(date +%s)
  timeout "$limit" "$@" > "$log" 2>&1
  rc=$?
  [ $rc -ne 0 ] && FAILED=1
  {
    echo
    echo "## $name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $(( $(date +%s) - t0 )) s"
    echo
    echo "\`$*\`"
    echo
    echo '```'
    tail -n 40 "$log"
    echo '```'
  } >> "$RES"
  echo "$name: exit $rc" >&2
  return 0
}

if [ -z "${BIN_DIR:-}" ]; then
  step build 300 cargo build --release
fi
# Every kernel against the reference through the shared body (rel. 1e-4),
# bench-sized episodes against the CPU, NVRTC compile report for this GPU's arch.
step tests-gpu 180 "${TEST_GPU[@]}"
step tests-nvrtc 60 "${TEST_NVRTC[@]}"
# The four CPU workloads and the large batch (B = 256, N = 512, T = 100),
# against the GPU's device-to-device copy bandwidth.
step bench-cuda 120 "$BIN" bench --device cuda --json --min-seconds 1 --min-episodes 3
step bench-cuda-large 60 "$BIN" bench --device cuda --json --workload plastic --N 512 --B 256 --T 100 --min-seconds 1 --min-episodes 3
# PyTorch eager on the same GPU (needs python3 with a CUDA build of torch).
if [ -z "${SKIP_TORCH:-}" ]; then
  step torch-eager 120 python3 scripts/torch_eager.py --device cuda --workload plastic neuromod retro --episodes 5
fi
# Finite differences against the f64 model, CUDA only (fails if the GPU cannot run).
step gradcheck 60 "$BIN" gradcheck --device cuda
# Training to the CPU's error rate: same seed and episodes on both devices.
step train-pattern-cuda 90 "$BIN" train pattern --episodes 300 --device cuda --out "$OUT/pattern-cuda"
step train-pattern-cpu 120 "$BIN" train pattern --episodes 300 --device cpu --out "$OUT/pattern-cpu"

echo >> "$RES"
echo "elapsed $(( $(date +%s) - START )) s" >> "$RES"
echo "overall: $([ $FAILED -eq 0 ] && echo ok || echo 'FAILED (see the steps above)')" >> "$RES"
echo "wrote $RES" >&2
exit $FAILED
