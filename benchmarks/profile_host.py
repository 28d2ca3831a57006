"""Where the host time of a fused call goes (GPU): one FP8 MLP layer compiled without and
with the pass, timed as plain calls, then profiled (cProfile by self time, and the
torch profiler's CPU ops by self time) so the two can be compared line by line.

    python benchmarks/profile_host.py [--tokens 16] [--hidden 7168] [--inter 2048] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantfuse  # noqa: E402
from bench_mlp import plain_us  # noqa: E402
from fp8_mlp import Stack, scaled_mm_supported  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--inter", type=int, default=2048)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = Stack(args.layers, args.hidden, args.inter, device, "native", scaled_mm_supported(device)).eval()
    x = torch.randn(args.tokens, args.hidden, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        for label, opts in (("without", {}), ("with", quantfuse.inductor_options())):
            torch._dynamo.reset()
            fn = torch.compile(model, dynamic=False, options=opts)
            fn(x)
            print(f"== {label} the pass: {plain_us(lambda: fn(x)):.1f} us per plain call")
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(500):
                fn(x)
            torch.cuda.synchronize()
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
            print("\n".join(line[:200] for line in s.getvalue().splitlines()[:args.top + 12]))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
                for _ in range(200):
                    fn(x)
                torch.cuda.synchronize()
            print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=70))
    op = torch.ops.quantfuse.silu_and_mul_per_block_quant
    h = torch.randn(args.tokens, 2 * args.inter, device=device, dtype=torch.bfloat16)
    print(f"eager fused op: {plain_us(lambda: op(h, 128)):.1f} us; torch.add: {plain_us(lambda: torch.add(h, h)):.1f} us; "
          f"torch.empty: {plain_us(lambda: torch.empty(16, device=device)):.1f} us")


if __name__ == "__main__":
    main()
