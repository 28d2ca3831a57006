#!/usr/bin/env bash
# ad-hoc device call 3 (ignored): the device 2^-127 tests, then ncu of tuned kernels at 16384 x 7168
set -o pipefail
export PYTHONUNBUFFERED=1 QUANTFUSE_CACHE_DIR=/tmp/quantfuse_cache
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD:$PYTHONPATH
python3 - <<'PY'
import torch
from quantfuse.custom_ops import cuda_backend as c
print("cuda", c.is_available(), c.unavailable_reason())
e = torch.tensor([-127.0], device="cuda")
for name, v in (("exp2", torch.exp2(e)), ("pow", torch.pow(2, e)), ("2**e", 2 ** e)):
    print(f"{name}(-127) bits 0x{v.view(torch.int32).item():08x} (exact 0x00400000)")
PY
el built
( timeout 200 python3 -m pytest -v -p no:cacheprovider -rf --tb=short tests/gpu/test_recognise_spellings_gpu.py > /tmp/t0.txt 2>&1 ) &
( timeout 200 python3 -m pytest -v -p no:cacheprovider -rf --tb=short tests/gpu/test_schemes.py -k "device_byte0 or bad_inputs or unsupported or route" tests/gpu/test_dispatch.py > /tmp/t1.txt 2>&1 ) &
python3 _probe_ncu.py 3 > /tmp/probe.txt 2>&1
wait; pkill -9 -f "python3 -m pytest" 2>/dev/null
for i in 0 1; do echo "== group $i: $(grep -c ' PASSED' /tmp/t$i.txt) passed, $(grep -c ' FAILED' /tmp/t$i.txt) failed; $(tail -1 /tmp/t$i.txt | cut -c1-100)"
  grep -E "^FAILED|^ERROR|^E  " /tmp/t$i.txt | cut -c1-300 | head -12; done
cat /tmp/t0.txt /tmp/t1.txt > $OUT/tests.txt
tail -2 /tmp/probe.txt
el tests
NCU=$(which ncu 2>/dev/null || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1); echo "ncu: $NCU"
timeout 300 $NCU --clock-control none --kernel-name regex:"act_" --launch-count 8 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
  --section InstructionStats --section MemoryWorkloadAnalysis \
  --metrics smsp__inst_executed.sum,dram__bytes_read.sum,dram__bytes_write.sum \
  python3 _probe_ncu.py 1 > $OUT/ncu.txt 2>&1
el "ncu rc=$?"
grep -E "act_|Duration|DRAM Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Achieved Occupancy|Registers Per|Stall|smsp__inst_executed.sum|dram__bytes|Warp Cycles Per Issued|Theoretical Occupancy|Block Size|Grid Size|Executed Ipc A|Eligible Warps" $OUT/ncu.txt | cut -c1-160 | head -120
