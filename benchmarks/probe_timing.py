"""One fused op's kernel timed every way the project times it, in one process: what each method adds.

    python benchmarks/probe_timing.py [--cases "silu_and_mul_per_block_quant:128,..."]
                                      [--tokens 16,128,4096,16384] [--hidden 768,2048,7168] [--jsonl F]

Per cell and launch choice (``tuning.candidates``; at T >= 4096 only the default and the tuned one):
- ``graph``: CUDA-graph replay of the launch into fixed outputs (``bench_pairs.bench``, which
  replays a graph of many calls);
- ``back_to_back``: ``tuning.time_launch``, the tuner's own timer (since 70a1856 the best of 5
  replays of a CUDA graph of 20 launches; before it, 10 launches issued one by one, best of 3
  rounds: the name stays so that the records of both read as one series);
and per cell, with the op's own (tuned) choice:
- ``op_graph``: the op called as ``bench_pairs`` calls it (outputs allocated per call, graph replay);
- ``kernel``: the kernel's device time in the torch profiler (median of 20 calls).
Where they disagree the kernel time is the reference: a method above it times something else
(allocations, launch gaps, the rotation). Records: bench ``timing_probe``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quantfuse  # noqa: E402
from bench_pairs import bench, run_info, same_bytes_copy, write_records  # noqa: E402

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend, tuning  # noqa: E402
from quantfuse.custom_ops import plan as planning  # noqa: E402

DEFAULT_CASES = "silu_and_mul_per_block_quant:128,silu_and_mul_per_token_quant_fp8"


def parse_cases(text: str) -> list[tuple[str, tuple]]:
    """``name[:param,...]`` items (comma-separated, ``:``-separated params as ints) -> (name, params)."""
    cases = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, *params = item.split(":")
        if name not in catalog.OPS:
            raise SystemExit(f"probe_timing.py: unknown op {name!r}")
        cases.append((name, tuple(int(v) for v in params)))
    return cases


def kernel_us(fn, calls: int = 20) -> float:
    """Median device time of the CUDA kernels one ``fn()`` launches (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    # the fused kernels' names (csrc act_group_quant..., act_token_quant...)
    times = [e.device_time for e in prof.events()
             if e.device_type == torch.autograd.DeviceType.CUDA and "act_" in e.name]
    per_call = len(times) // calls
    if per_call == 0:
        return float("nan")
    return statistics.median(sum(times[i * per_call:(i + 1) * per_call]) for i in range(calls))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--tokens", default="16,128,4096,16384")
    p.add_argument("--hidden", default="768,2048,7168")
    p.add_argument("--jsonl")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("probe_timing.py times CUDA kernels: it needs a GPU")
    info, records = run_info(), []
    dev = torch.device("cuda")
    for name, params in parse_cases(args.cases):
        entry = catalog.OPS[name]
        op = getattr(torch.ops.quantfuse, name)
        for t in map(int, args.tokens.split(",")):
            for h in map(int, args.hidden.split(",")):
                width = h * (2 if entry.activation.gated else 1)
                x = torch.randn(t, width, device=dev, dtype=torch.bfloat16) * 3
                plan = planning.make_plan(entry, x, params)
                outputs = plan.empty_outputs(dev)
                classes, _ = cuda_backend._classes(plan)
                tuned = tuning.choice_for(classes, t)
                choices = tuning.candidates(plan) if t < 4096 else (tuning.Choice(), tuned)
                nbytes = t * (width * 2 + plan.hidden) + sum(o.numel() * o.element_size() for o in outputs[1:])
                copy = same_bytes_copy(int(nbytes), 1)
                row = [f"{name}{params} {t}x{h}: copy {copy:.2f}"]

                def record(choice, method, us):
                    records.append(dict(bench="timing_probe", op=name, params=str(params), tokens=t, hidden=h,
                                        choice=choice.label, tuned=choice == tuned, method=method,
                                        us=round(us, 3), copy_us=round(copy, 3), bytes=int(nbytes)))
                for c in dict.fromkeys(choices):
                    launch = lambda xx=x, c=c: cuda_backend._launch(plan, outputs, xx, None, None, c)  # noqa: E731
                    if launch():
                        continue
                    g, b = bench(launch, [x]), tuning.time_launch(launch)
                    record(c, "graph", g)
                    record(c, "back_to_back", b)
                    row.append(f"{c.label}{'*' if c == tuned else ''} {g:.2f}/{b:.2f}")
                og = bench(lambda xx: op(xx, *params), [x])
                k = kernel_us(lambda: op(x, *params))
                record(tuned, "op_graph", og)
                record(tuned, "kernel", k)
                row.append(f"op graph {og:.2f}, kernel {k:.2f}")
                print(" | ".join(row), flush=True)
    if args.jsonl:
        write_records(args.jsonl, records, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
