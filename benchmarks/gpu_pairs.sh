#!/usr/bin/env bash
# Device-machine check of every activation x scheme pair: build the CUDA extension
# (timed), run the GPU tests (all of tests/gpu unless GPU_TESTS names files), then the
# every-pair benchmark (CUDA fused vs Triton fused vs unfused vs Inductor) and,
# unless SKIP_MLP, the MLP benchmark; logs under $OUT, short tables last.
# Env: SKIP_TESTS, SKIP_BENCH, SKIP_MLP, GPU_TESTS, TOKENS, HIDDEN, PAIRS_ARGS.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/quantfuse_out}; mkdir -p "$OUT"
export QUANTFUSE_CACHE_DIR=${QUANTFUSE_CACHE_DIR:-/tmp/quantfuse_cache}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD:$PYTHONPATH
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
  python3 - <<'PY'
import logging, time
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
t = time.perf_counter()
from quantfuse.custom_ops import cuda_backend
ok = cuda_backend.is_available()
print(f"cuda backend available={ok} in {time.perf_counter() - t:.1f} s; reason={cuda_backend.unavailable_reason()}")
PY
  [ -n "$SKIP_TESTS" ] || python3 -m pytest -q -p no:cacheprovider -rf ${GPU_TESTS:-tests/gpu} 2>&1 | tail -40 | tee "$OUT/pytest_gpu.txt"
  [ -n "$SKIP_BENCH" ] || timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/bench_pairs.py --tokens ${TOKENS:-64,4096,16384} --hidden ${HIDDEN:-2048,7168} $PAIRS_ARGS --out "$OUT/pairs.md" 2>&1 | grep -v "^("
  [ -n "$SKIP_MLP" ] || timeout ${MLP_TIMEOUT:-240} python3 benchmarks/bench_mlp.py --tokens ${MLP_TOKENS:-1,16,64,256,1024,4096,8192} --out "$OUT/mlp.md" 2>&1 | grep -v Warning
} 2>&1 | tee "$OUT/pairs_log.txt"
echo; tail -3 "$OUT/pytest_gpu.txt" 2>/dev/null; cat "$OUT/pairs.md" "$OUT/mlp.md" 2>/dev/null
