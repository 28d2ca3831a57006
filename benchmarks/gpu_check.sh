#!/usr/bin/env bash
# One-call GPU check for the device machine (repo root, torch installed, no network):
# install (editable, if pyproject exists), build the CUDA extension (timed), run the
# GPU tests, the CPU tests (tests/ minus tests/gpu), the kernel benchmark, the MLP
# benchmark and the FP8 MLP example; everything is teed to $OUT/log.txt and the
# short tables are printed last.
# Env: BENCH_ARGS (e.g. "--quick --inductor lite"), SKIP_BENCH=1, SKIP_CPU_TESTS=1,
#      SKIP_MLP=1 (MLP benchmark + example), GPU_TEST_ARGS (extra pytest args).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/quantfuse_out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export QUANTFUSE_CACHE_DIR=${QUANTFUSE_CACHE_DIR:-/tmp/quantfuse_cache}
PY=${PYTHON:-python3}
rm -f "$OUT/failed"
fail() { echo "$1" >> "$OUT/failed"; }
step() { echo; echo "=== $* ($(date +%T))"; }

{
  step "environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -1

  step "install"
  if [ -f pyproject.toml ]; then
    $PY -m pip install -q --no-deps --no-build-isolation -e . || { echo "pip install failed; using PYTHONPATH"; export PYTHONPATH=$PWD:$PYTHONPATH; }
  else
    export PYTHONPATH=$PWD:$PYTHONPATH
  fi

  step "build CUDA extension"
  $PY - <<'PY' || fail build
import logging, time
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
t = time.perf_counter()
from quantfuse.custom_ops import cuda_backend
ok = cuda_backend.is_available()
print(f"cuda backend available={ok} in {time.perf_counter() - t:.1f} s; reason={cuda_backend.unavailable_reason()}")
raise SystemExit(0 if ok else 1)
PY

  step "probe: argument errors of the extension come back as messages"
  $PY -X faulthandler benchmarks/probe_errors.py || fail probe

  # CPU tests and the example need no timing: they run beside the GPU tests
  if [ -z "$SKIP_CPU_TESTS" ] && ls tests/test_*.py >/dev/null 2>&1; then
    ( timeout 240 $PY -m pytest -q -p no:cacheprovider tests --ignore=tests/gpu > "$OUT/pytest_cpu_full.txt" 2>&1;
      echo "rc=$?" >> "$OUT/pytest_cpu_full.txt" ) &
    CPU_PID=$!
  fi
  if [ -z "$SKIP_MLP" ]; then
    ( timeout 120 $PY examples/fp8_mlp.py --device cuda > "$OUT/example.txt" 2>&1; echo "rc=$?" >> "$OUT/example.txt" ) &
    EX_PID=$!
  fi

  step "GPU tests"
  $PY -m pytest -q -p no:cacheprovider tests/gpu $GPU_TEST_ARGS 2>&1 | tee "$OUT/pytest_gpu.txt" || fail gpu-tests

  if [ -n "$CPU_PID" ]; then
    step "CPU-side tests (tests/ minus tests/gpu, run beside the GPU tests)"
    wait $CPU_PID
    tail -25 "$OUT/pytest_cpu_full.txt" | tee "$OUT/pytest_cpu.txt"
    grep -q "^rc=0" "$OUT/pytest_cpu_full.txt" || fail cpu-tests
    rm -f "$OUT/pytest_cpu_full.txt"
  fi
  if [ -n "$EX_PID" ]; then
    step "example (run beside the GPU tests)"
    wait $EX_PID
    cat "$OUT/example.txt"
    grep -q "^rc=0" "$OUT/example.txt" || fail example
  fi

  if [ -z "$SKIP_BENCH" ]; then
    step "benchmark"
    timeout 210 $PY benchmarks/bench_act_quant.py --out "$OUT/bench.md" $BENCH_ARGS || fail bench
  fi

  if [ -z "$SKIP_MLP" ]; then
    step "MLP benchmark"
    timeout 130 $PY benchmarks/bench_mlp.py --tokens 1,16,64,256,1024,4096,8192 --out "$OUT/mlp.md" || fail mlp
  fi
} 2>&1 | tee "$LOG"

echo
echo "=================== summary ==================="
grep -E "cuda backend available|passed|failed|error" "$OUT/pytest_gpu.txt" "$LOG" 2>/dev/null | grep -E "available=|[0-9]+ (passed|failed)" | sort -u | tail -6
[ -f "$OUT/pytest_cpu.txt" ] && tail -2 "$OUT/pytest_cpu.txt"
[ -f "$OUT/bench.md" ] && cat "$OUT/bench.md"
[ -f "$OUT/mlp.md" ] && cat "$OUT/mlp.md"
[ -f "$OUT/example.txt" ] && tail -4 "$OUT/example.txt"
[ -f "$OUT/failed" ] && { echo "FAILED: $(cat "$OUT/failed" | tr '\n' ' ')"; exit 1; }
echo "all steps OK"
