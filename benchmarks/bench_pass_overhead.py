"""Cost of the pass: pattern registration, and its share of compiling a 24-layer MLP stack.

    python benchmarks/bench_pass_overhead.py [--layers 24] [--repeats 3]

Prints registration time (first build, in this fresh process), the pass's own time in
the compile (from its report) and the end-to-end compile time with and without the pass
(caches off, median of --repeats). CPU is fine: the pass runs before code generation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import quantfuse  # noqa: E402
from fp8_mlp import Stack  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    from quantfuse.patterns import act_quant

    config = quantfuse.FusionConfig()
    t = time.perf_counter()
    act_quant.build_pass(config.pattern_key())
    registration = time.perf_counter() - t
    n_patterns = sum(len(v) for v in act_quant.build_pass(config.pattern_key()).patterns.values())

    torch._inductor.config.force_disable_caches = True
    torch.manual_seed(0)
    model = Stack(args.layers, 512, 1024, torch.device(args.device)).eval()
    x = torch.randn(16, 512, dtype=torch.bfloat16, device=args.device)
    times = {"without": [], "with": []}
    pass_seconds = []
    with torch.no_grad():
        for _ in range(args.repeats):
            for label in ("without", "with"):
                torch._dynamo.reset()
                opts = quantfuse.inductor_options() if label == "with" else {}
                t = time.perf_counter()
                torch.compile(model, options=opts)(x)
                times[label].append(time.perf_counter() - t)
                if label == "with":
                    report = quantfuse.last_report()
                    assert len(report.rewrites) == args.layers, str(report)
                    pass_seconds.append(report.seconds)
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    pass_s = statistics.median(pass_seconds)
    print(f"torch {torch.__version__}, device {args.device}, {args.layers} layers, {args.repeats} repeats")
    print("| measure | value |\n|---|---|")
    print(f"| pattern registration ({n_patterns} patterns, first build) | {registration * 1e3:.0f} ms |")
    print(f"| pass run inside the compile (median) | {pass_s * 1e3:.0f} ms |")
    print(f"| compile without pass (median) | {without:.2f} s |")
    print(f"| compile with pass (median) | {with_:.2f} s |")
    print(f"| pass time / compile time | {pass_s / without:.1%} |")


if __name__ == "__main__":
    main()
