#!/usr/bin/env bash
# Device-machine check of the Triton scheme kernels and the pass on GPU, plus the
# every-pair benchmark; logs under $OUT, short tables last.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/quantfuse_out}; mkdir -p "$OUT"
export QUANTFUSE_CACHE_DIR=${QUANTFUSE_CACHE_DIR:-/tmp/quantfuse_cache}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD:$PYTHONPATH
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  [ -n "$SKIP_TESTS" ] || python3 -m pytest -q -p no:cacheprovider tests/gpu/test_triton_schemes.py tests/gpu/test_pass_gpu.py 2>&1 | tail -30
  timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/bench_pairs.py --tokens ${TOKENS:-64,4096,16384} --hidden ${HIDDEN:-2048,7168} --out "$OUT/pairs.md" 2>&1 | grep -v "^("
  [ -n "$SKIP_MLP" ] || timeout ${MLP_TIMEOUT:-240} python3 benchmarks/bench_mlp.py --tokens ${MLP_TOKENS:-1,16,64,256,1024,4096,8192} --out "$OUT/mlp.md" 2>&1 | grep -v Warning
} 2>&1 | tee "$OUT/pairs_log.txt"
echo; cat "$OUT/pairs.md" "$OUT/mlp.md" 2>/dev/null
