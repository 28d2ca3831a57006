"""What programmatic dependent launch buys between real neighbours (GPU).

    python benchmarks/bench_pdl.py [--tokens 64,4096] [--hidden 2048]

bench_pairs.py times back-to-back calls of one fused op, where every predecessor is a
PDL-aware quantfuse kernel that triggers its dependents early. In a model the fused op
sits between two GEMMs that know nothing of PDL. This times, for each fused op, the
chain "bf16 GEMM (cuBLAS) -> fused op -> bf16 GEMM", and the fused op alone, with PDL on
and off in the same process (QUANTFUSE_PDL is read at every call), as CUDA-graph
replays over rotated inputs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_pairs import bench, rotation_copies  # noqa: E402

import quantfuse  # noqa: E402,F401

qf = torch.ops.quantfuse
OPS = {"silu_and_mul_mxfp4_quant": ("rceil",), "silu_and_mul_per_block_quant": (128,),
       "relu2_mxfp8_quant": ("rceil",)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="64,4096")
    p.add_argument("--hidden", type=int, default=2048)
    args = p.parse_args()
    h = args.hidden
    rows = []
    for name, qargs in OPS.items():
        op = getattr(qf, name)
        width = 2 * h if name.startswith("silu") else h
        for t in map(int, args.tokens.split(",")):
            k = 1024  # the GEMMs: [t, k] @ [k, width] before, [t, k] @ [k, k] after
            copies = max(2, rotation_copies(t * width * 2))
            ins = [torch.randn(t, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
            w_in = torch.randn(k, width, device="cuda", dtype=torch.bfloat16) / 32
            w_out = torch.randn(k, k, device="cuda", dtype=torch.bfloat16) / 32
            xs = [a @ w_in for a in ins]

            def chain(a):
                op(a @ w_in, *qargs)
                return a @ w_out

            times = {}
            for pdl in ("0", "1"):
                os.environ["QUANTFUSE_PDL"] = pdl
                times[pdl] = (bench(lambda x: op(x, *qargs), xs), bench(chain, ins))
            del os.environ["QUANTFUSE_PDL"]
            rows.append((name, t, width, times))
            print(rows[-1], flush=True)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}; median µs (CUDA-graph replay)\n")
    print("| fused op | T | input width | op alone, PDL off | on | GEMM -> op -> GEMM, PDL off | on |")
    print("|---|---|---|---|---|---|---|")
    for name, t, width, tm in rows:
        print(f"| {name} | {t} | {width} | {tm['0'][0]:.2f} | {tm['1'][0]:.2f} | {tm['0'][1]:.2f} | {tm['1'][1]:.2f} |")


if __name__ == "__main__":
    main()
