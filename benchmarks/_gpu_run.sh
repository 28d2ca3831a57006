#!/usr/bin/env bash
# call 1 of this session: GPU tests + pairs of the candidate; per-token A/B with the register kernel
export QF_COMMIT=${QF_COMMIT:-unknown}
export STAGES=tests,pairs TOKENS=4096,16384 HIDDEN=2048,7168 PAIRS_ARGS="--no-triton --no-inductor" TEST_TIMEOUT=270
export GPU_TEST_GROUPS="tests/gpu/test_kernels.py;tests/gpu/test_schemes.py -k cuda;tests/gpu/test_swiglu_oai_gpu.py tests/gpu/test_recognise_symbolic_gpu.py"
bash benchmarks/gpu_session.sh > /tmp/session.txt 2>&1
QUANTFUSE_TOKEN_STAGED=0 timeout 120 python3 benchmarks/bench_pairs.py --tokens 4096,16384 --hidden 2048,7168 \
  --schemes per_token_quant_fp8 --no-triton --no-inductor --jsonl $OUT/pairs.jsonl --out /tmp/reg.md > /tmp/reg.txt 2>&1
cat $OUT/pytest_gpu_*.txt > $OUT/pytest_gpu.txt; rm -f $OUT/pytest_gpu_*.txt
grep -E "^== group|^FAILED|^ERROR|cuda backend|Error" /tmp/session.txt | head -40
echo "== cand"; cat $OUT/pairs.md; echo "== register per-token kernel"; cat /tmp/reg.md; tail -5 /tmp/reg.txt
