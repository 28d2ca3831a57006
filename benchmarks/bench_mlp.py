"""End-to-end FP8 MLP latency with and without quantfuse's pass (GPU).

    python benchmarks/bench_mlp.py [--hidden 7168] [--inter 18432] [--tokens 1,16,...] [--out FILE]

The model is ``examples/fp8_mlp.py``'s block written in plain PyTorch (bf16 gate_up,
SiLU×Mul, FP8 1×128 group quant with column-major scales, block-scaled FP8 down
projection through ``torch._scaled_mm``). Each token count is compiled without and
with the pass (static shapes, as a serving engine's CUDA-graph buckets are) and timed
as a CUDA-graph replay (median), so launch gaps do not hide the kernel time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import quantfuse  # noqa: E402
from fp8_mlp import Stack, scaled_mm_supported  # noqa: E402
from quantfuse.custom_ops import oracle  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--inter", type=int, default=18432)
    p.add_argument("--tokens", default="1,16,64,256,1024,4096,8192")
    p.add_argument("--out")
    args = p.parse_args()
    from triton.testing import do_bench_cudagraph

    torch.manual_seed(0)
    device = torch.device("cuda")
    use_mm = scaled_mm_supported(device)
    model = Stack(1, args.hidden, args.inter, device, "native", use_mm).eval()
    rows, skipped = [], []
    with torch.no_grad():
        for t in [int(v) for v in args.tokens.split(",")]:
            x = torch.randn(t, args.hidden, device=device, dtype=torch.bfloat16)
            times = {}
            try:
                for label, opts in (("without", {}), ("with", quantfuse.inductor_options())):
                    torch._dynamo.reset()
                    oracle.calls.clear()
                    fn = torch.compile(model, dynamic=False, options=opts)
                    fn(x)
                    if label == "with":
                        assert len(quantfuse.last_report().rewrites) == 1, str(quantfuse.last_report())
                        assert oracle.calls[("silu_and_mul_per_block_quant", "cuda")] >= 1, dict(oracle.calls)
                    times[label] = do_bench_cudagraph(lambda: fn(x), rep=200) * 1e3
            except RuntimeError as e:  # cuBLAS's block-scaled GEMM rejects some shapes (T=1 on torch 2.11)
                print(f"T={t}: skipped, the model does not run: {str(e).splitlines()[0][:160]}", flush=True)
                skipped.append(t)
                continue
            rows.append((t, times["without"], times["with"]))
            print(f"T={t}: without {times['without']:.1f} us, with {times['with']:.1f} us", flush=True)
    lines = [f"FP8 MLP (hidden {args.hidden}, inter {args.inter}, scaled_mm={use_mm}), "
             f"{torch.cuda.get_device_name()}, torch {torch.__version__}; CUDA-graph replay, median",
             "", "| T | without pass (µs) | with pass (µs) | speedup |", "|---|---|---|---|"]
    lines += [f"| {t} | {a:.1f} | {b:.1f} | {a / b:.3f}x |" for t, a, b in rows]
    lines += [f"| {t} | model does not run (block-scaled GEMM) | | |" for t in skipped]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
