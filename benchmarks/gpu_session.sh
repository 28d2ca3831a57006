#!/usr/bin/env bash
# One device-machine call: install, build the CUDA extension (timed), then the stages named
# in STAGES (default smoke,tests,pairs,mlp), logs and JSON Lines records under $OUT, the
# short tables last.
#   smoke     benchmarks/smoke_catalog_cuda.py (layouts, rounding, static FP8 in seconds)
#   tests     pytest tests/gpu (GPU_TESTS overrides the paths, GPU_TEST_ARGS adds flags); GPU_TEST_GROUPS="a b;c -k 'x and y';d"
#             runs each ';'-separated group in parallel instead, -v (a group its TEST_TIMEOUT stops still
#             shows each test's outcome), logs joined in $OUT/pytest_gpu.txt: tests/gpu takes well over 600 s in one process;
#             groups share the CPU cores, so one that compiles many Triton kernels (the Triton cases of
#             test_experts_gpu.py, test_triton_layouts.py) can outlast its timeout beside others: give it a call of its own
#   pairs     bench_pairs.py over TOKENS x HIDDEN (PAIRS_ARGS adds flags, e.g. --recipes "spec;spec": Recipe
#             specs timed besides the default recipe) -> $OUT/pairs.jsonl; SM clock and power meanwhile -> $OUT/clocks.csv
#   baseline  the same cells on another checkout in ./_baseline (its own bench_pairs.py), same run; its
#             records (BASE_COMMIT: that checkout's commit) go to $OUT/pairs.jsonl as bench="pairs_baseline"
#   layouts   bench_pairs.py over the gated layouts at LAYOUT_TOKENS
#   mlp       bench_mlp.py: CUDA-graph replay and plain calls, with and without the pass
#   peers     SiLU x Mul -> FP8 per group 64/128, row and column-major scales, T = 16 ... 16384: eager,
#             Inductor, quantfuse unfused and fused, vLLM's kernel where vllm imports, a same-size copy
#   (always)  the tuning table (tuning-<device>.json) as records -> $OUT/tuning.jsonl
#   moe       bench_moe.py (MOE_ARGS adds flags) and examples/fp8_moe.py on the GPU
#   stalls    probe_stalls.py under ncu (STALL_ARGS adds flags, e.g. --cases "...") -> $OUT/stalls.jsonl
#   (always)  the built libraries as $OUT/main.tar.xz and base.tar.xz (SAVE_BUILD=0: not): copy them to
#             ./_qfbuild (ignored) and carry it, and the next call of the session loads them, no build
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/quantfuse_out}; mkdir -p "$OUT"
export QUANTFUSE_CACHE_DIR=${QUANTFUSE_CACHE_DIR:-/tmp/quantfuse_cache}
export QF_COMMIT=${QF_COMMIT:-}
STAGES=",${STAGES:-smoke,tests,pairs,mlp},"
TOKENS=${TOKENS:-64,4096,16384}; HIDDEN=${HIDDEN:-2048,7168}
has() { [[ "$STAGES" == *",$1,"* ]]; }
BASE_CACHE=/tmp/quantfuse_cache_base
# Builds (and the tuning table) of an earlier call, carried in as _qfbuild/{main,base}.tar.xz: the
# cache is keyed by the sources' hash and torch's version, so a build of other sources is never loaded.
[ -f _qfbuild/main.tar.xz ] && mkdir -p "$QUANTFUSE_CACHE_DIR" && tar -xJf _qfbuild/main.tar.xz -C "$QUANTFUSE_CACHE_DIR"
[ -f _qfbuild/base.tar.xz ] && mkdir -p "$BASE_CACHE" && tar -xJf _qfbuild/base.tar.xz -C "$BASE_CACHE"
# the built libraries back under $OUT (16 MiB a file at most), for the next call's carry
save_build() {
  local cache=$1 name=$2
  (cd "$cache" 2>/dev/null && ls -d cuda_*/ >/dev/null 2>&1) || return 0
  (cd "$cache" && tar -cf - cuda_*/manifest.json cuda_*/*.so $(ls tuning-*.json 2>/dev/null) | xz -T0 -6 > "$OUT/$name.tar.xz")
  [ "$(stat -c %s "$OUT/$name.tar.xz")" -lt 16000000 ] || rm -f "$OUT/$name.tar.xz"
}
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
  if has smoke; then timeout 120 python3 benchmarks/smoke_catalog_cuda.py 2>&1 | tail -30; fi
  if has tests && [ -n "${GPU_TEST_GROUPS:-}" ]; then
    IFS=';' read -ra groups <<< "$GPU_TEST_GROUPS"
    for i in "${!groups[@]}"; do
      # a group is shell words: quotes keep a -k expression with spaces one argument
      ( eval "set -- ${groups[$i]}"
        timeout ${TEST_TIMEOUT:-300} python3 -m pytest -v -p no:cacheprovider -rf --tb=short "$@" $GPU_TEST_ARGS \
          > "$OUT/pytest_gpu_$i.txt" 2>&1 ) &
    done
    wait
    # a group its timeout stopped can leave workers (Triton's compile pool) on the GPU, which would
    # slow every later benchmark of the call
    pkill -9 -f "python3 -m pytest" 2>/dev/null || true
    for i in "${!groups[@]}"; do
      f="$OUT/pytest_gpu_$i.txt"
      echo "== group $i (${groups[$i]}): $(grep -c ' PASSED' "$f") passed, $(grep -c ' FAILED' "$f") failed," \
           "$(grep -c ' XFAIL' "$f") xfailed, $(grep -c ' SKIPPED' "$f") skipped; $(tail -1 "$f" | cut -c1-120)"
      grep -E "^FAILED|^ERROR" "$f" | cut -c1-200 | head -10
    done
  elif has tests; then
    timeout ${TEST_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider -rf --durations=8 ${GPU_TESTS:-tests/gpu} \
      $GPU_TEST_ARGS > "$OUT/pytest_gpu.txt" 2>&1; tail -45 "$OUT/pytest_gpu.txt"
  fi
  if has pairs; then
    # SM clock, power and temperature every 200 ms while the kernels are timed ($OUT/clocks.csv):
    # whether a long benchmark loop runs at the clocks a single profiled kernel sees
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv -lms 200 \
      > "$OUT/clocks.csv" 2>/dev/null & smi=$!
    timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/bench_pairs.py --tokens $TOKENS --hidden $HIDDEN $PAIRS_ARGS \
      --out "$OUT/pairs.md" --jsonl "$OUT/pairs.jsonl"
    kill $smi 2>/dev/null
  fi
  if has baseline && [ -d _baseline ]; then
    (cd _baseline && QF_COMMIT=${BASE_COMMIT:-unknown} QUANTFUSE_CACHE_DIR=$BASE_CACHE timeout ${BENCH_TIMEOUT:-300} \
      python3 benchmarks/bench_pairs.py --tokens $TOKENS --hidden $HIDDEN $PAIRS_ARGS --out "$OUT/baseline_pairs.md" \
      --jsonl "$OUT/baseline_raw.jsonl" 2>&1)
    # summarize.py shows a pairs_baseline cell beside the pairs cell of the call its command names
    [ -f "$OUT/baseline_raw.jsonl" ] && python3 - "$OUT/baseline_raw.jsonl" "$OUT/pairs.jsonl" "$QF_COMMIT" <<'PY'
import json, sys
src, dst, commit = sys.argv[1:]
with open(dst, "a") as out:
    for line in open(src):
        r = json.loads(line)
        r.update(bench="pairs_baseline", command=f"_baseline/{r['command']} (same device call as {commit})")
        out.write(json.dumps(r) + "\n")
PY
  fi
  if has layouts; then
    timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/bench_pairs.py --tokens ${LAYOUT_TOKENS:-4096,16384} \
      --hidden $HIDDEN --layouts halves,separate,interleaved --schemes per_block_quant,mxfp4_quant,quant $PAIRS_ARGS \
      --no-inductor --out "$OUT/layouts.md" --jsonl "$OUT/pairs.jsonl"
  fi
  if has mlp; then
    timeout ${MLP_TIMEOUT:-240} python3 benchmarks/bench_mlp.py --layers ${MLP_LAYERS:-8} --hidden 7168 --inter 2048 \
      --tokens ${MLP_TOKENS:-16,64,256,4096} --out "$OUT/mlp.md" --jsonl "$OUT/mlp.jsonl" 2>&1 | grep -v Warning
  fi
  if has peers; then
    timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/bench_pairs.py --tokens ${PEER_TOKENS:-16,64,256,4096,16384} \
      --hidden 7168 --schemes per_block_quant --group-variants 64,128,64:col,128:col --no-triton \
      --out "$OUT/peers.md" --jsonl "$OUT/pairs.jsonl"
  fi
  if has moe; then
    timeout ${MOE_TIMEOUT:-300} python3 examples/fp8_moe.py 2>&1 | tail -4
    timeout ${MOE_TIMEOUT:-300} python3 benchmarks/bench_moe.py $MOE_ARGS --out "$OUT/moe.md" --jsonl "$OUT/moe.jsonl" \
      2>&1 | grep -v Warning | tail -30
  fi
  if has stalls; then
    timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/probe_stalls.py $STALL_ARGS --jsonl "$OUT/stalls.jsonl" 2>&1 | tail -20
  fi
  # the vectors-per-thread table tuned in this run, as records (custom_ops/tuning.py)
  for t in "$QUANTFUSE_CACHE_DIR"/tuning-*.json; do
    [ -f "$t" ] && python3 benchmarks/tuning_records.py "$t" --jsonl "$OUT/tuning.jsonl"
  done
  if [ "${SAVE_BUILD:-1}" = 1 ]; then save_build "$QUANTFUSE_CACHE_DIR" main; save_build "$BASE_CACHE" base; fi
} 2>&1 | tee "$OUT/log.txt"
echo; tail -3 "$OUT/pytest_gpu.txt" 2>/dev/null
for f in pairs baseline_pairs layouts mlp peers moe; do [ -f "$OUT/$f.md" ] && { echo "== $f"; cat "$OUT/$f.md"; }; done
# The device tool brings back 8 files at most (the rest is dropped, e.g. tuning.jsonl): the group
# logs become one file, and the tables (printed above, and in log.txt) and the merged baseline
# records stay behind
if ls "$OUT"/pytest_gpu_*.txt >/dev/null 2>&1; then
  cat "$OUT"/pytest_gpu_*.txt >> "$OUT/pytest_gpu.txt" && rm -f "$OUT"/pytest_gpu_*.txt
fi
for f in pairs baseline_pairs layouts mlp peers moe; do
  [ -f "$OUT/$f.md" ] && cat "$OUT/$f.md" >> "$OUT/log.txt" && rm -f "$OUT/$f.md"
done
rm -f "$OUT/baseline_raw.jsonl"
echo "files left under \$OUT: $(ls "$OUT" | wc -l) ($(ls "$OUT" | tr '\n' ' '))"
