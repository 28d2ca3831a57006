#!/usr/bin/env bash
# ad-hoc device call 4 (ignored): the MX byte-0 factor, tests and the MX cells
set -o pipefail
export PYTHONUNBUFFERED=1 QUANTFUSE_CACHE_DIR=/tmp/quantfuse_cache QF_COMMIT=${QF_COMMIT:-unknown}
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD:$PYTHONPATH
python3 -c "from quantfuse.custom_ops import cuda_backend as c; print('cuda', c.is_available(), c.unavailable_reason())"
el built
( timeout 150 python3 -m pytest -v -p no:cacheprovider -rf --tb=short tests/gpu/test_recognise_spellings_gpu.py tests/gpu/test_torchao_mx_gpu.py > /tmp/t0.txt 2>&1 ) &
( timeout 150 python3 -m pytest -v -p no:cacheprovider -rf --tb=short tests/gpu/test_schemes.py -k "cuda and (mx or device_byte0 or bad_inputs)" > /tmp/t1.txt 2>&1 ) &
( timeout 150 python3 -m pytest -v -p no:cacheprovider -rf --tb=short tests/gpu/test_kernels.py -k "mx" tests/gpu/test_dispatch.py > /tmp/t2.txt 2>&1 ) &
wait; pkill -9 -f "python3 -m pytest" 2>/dev/null
for i in 0 1 2; do echo "== group $i: $(grep -c ' PASSED' /tmp/t$i.txt) passed, $(grep -c ' FAILED' /tmp/t$i.txt) failed; $(tail -1 /tmp/t$i.txt | cut -c1-100)"
  grep -E "^FAILED|^ERROR|^E  " /tmp/t$i.txt | cut -c1-300 | head -10; done
cat /tmp/t0.txt /tmp/t1.txt /tmp/t2.txt > $OUT/tests.txt
el tests
timeout 110 python3 benchmarks/bench_pairs.py --no-triton --no-inductor --schemes mxfp8_quant,mxfp4_quant --acts silu_and_mul,relu2 \
  --tokens 4096,16384 --hidden 2048,7168 --jsonl $OUT/pairs.jsonl --out $OUT/pairs.md 2>&1 | tail -1
el mx
grep "^|" $OUT/pairs.md | grep -v "^|---"
