"""Cost of the pass: pattern registration, and its share of compiling a 24-layer MLP stack.

    python benchmarks/bench_pass_overhead.py [--layers 24] [--repeats 3] [--jsonl FILE]

Prints the time to trace and register every pattern at once (``build_pass``), the pass's
own time in the first compile (which registers, on first use, only the pattern groups the
graph holds) and in later ones (median), and the end-to-end compile time with and without
the pass (caches off, median of --repeats). CPU is fine: the pass runs before code
generation (native sites are rewritten here, ``native_on_cpu``, so the pass does all its work).
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
    p.add_argument("--jsonl", help="append a JSON record (bench=pass_overhead)")
    args = p.parse_args()

    from quantfuse.patterns import act_quant

    config = quantfuse.FusionConfig(native_on_cpu=True)

    torch._inductor.config.force_disable_caches = True
    torch.manual_seed(0)
    model = Stack(args.layers, 512, 1024, torch.device(args.device)).eval()
    x = torch.randn(16, 512, dtype=torch.bfloat16, device=args.device)
    times = {"without": [], "with": []}
    pass_seconds, setup_seconds = [], []
    with torch.no_grad():
        for _ in range(args.repeats):
            for label in ("without", "with"):
                torch._dynamo.reset()
                opts = quantfuse.inductor_options(config) if label == "with" else {}
                t = time.perf_counter()
                torch.compile(model, options=opts)(x)
                times[label].append(time.perf_counter() - t)
                if label == "with":
                    report = quantfuse.last_report()
                    assert len(report.rewrites) == args.layers, str(report)
                    pass_seconds.append(report.seconds)
                    setup_seconds.append(sum(g.setup_seconds for g in report.graphs))
    first_pass = pass_seconds[0]  # the pattern groups of this graph registered on first use
    t = time.perf_counter()
    act_quant.build_pass(config.pattern_key())
    registration = time.perf_counter() - t
    n_patterns = sum(len(v) for v in act_quant.build_pass(config.pattern_key()).patterns.values())
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    pass_s = statistics.median(pass_seconds[1:] or pass_seconds)
    print(f"torch {torch.__version__}, device {args.device}, {args.layers} layers, {args.repeats} repeats")
    print("| measure | value |\n|---|---|")
    print(f"| every pattern traced and registered at once ({n_patterns} patterns) | {registration * 1e3:.0f} ms |")
    print(f"| pass in the first compile (registers this graph's pattern groups) | {first_pass * 1e3:.0f} ms |")
    print(f"| of which tracing and registering those groups | {setup_seconds[0] * 1e3:.0f} ms |")
    print(f"| pass in later compiles (median) | {pass_s * 1e3:.0f} ms |")
    print(f"| compile without pass (median) | {without:.2f} s |")
    print(f"| compile with pass (median) | {with_:.2f} s |")
    print(f"| pass time / compile time | {pass_s / without:.1%} |")
    if args.jsonl:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_pairs import write_records

        write_records(args.jsonl, [dict(bench="pass_overhead", case="examples/fp8_mlp.py stack, native spelling, "
                                        "caches off", layers=args.layers, patterns=n_patterns,
                                        registration_ms=registration * 1e3, first_pass_ms=first_pass * 1e3,
                                        first_setup_ms=setup_seconds[0] * 1e3,
                                        pass_ms=pass_s * 1e3, compile_without_s=without, compile_with_s=with_,
                                        pass_fraction=pass_s / without)])


if __name__ == "__main__":
    main()
