"""End-to-end FP8 MLP latency with and without quantfuse's pass (GPU).

    python benchmarks/bench_mlp.py [--hidden 7168] [--inter 18432] [--layers 8] [--tokens 1,16,...]
                                   [--out FILE] [--jsonl FILE]

The model is ``examples/fp8_mlp.py``'s block written in plain PyTorch (bf16 gate_up,
SiLU×Mul, FP8 1×128 group quant with column-major scales, block-scaled FP8 down
projection through ``torch._scaled_mm``), ``--layers`` deep. Each token count is
compiled without and with the pass (static shapes, as a serving engine's CUDA-graph
buckets are) and timed two ways: as a CUDA-graph replay (median: kernel time, launch
gaps hidden) and as plain calls (wall clock per forward, synchronised: what a model
run without CUDA graphs pays, host cost included). ``host`` records time one eager call
of the fused op (through the dispatcher, and through its Python kernel) against one
native op on the same tensor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantfuse  # noqa: E402
from fp8_mlp import Stack, scaled_mm_supported  # noqa: E402
from quantfuse.custom_ops import oracle  # noqa: E402


#: alternating rounds of plain calls per cell (a round's median is noisy on a shared host)
PLAIN_ROUNDS = 21


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--inter", type=int, default=18432)
    p.add_argument("--tokens", default="1,16,64,256,1024,4096,8192")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--jsonl", help="append JSON records (bench=mlp and bench=host)")
    args = p.parse_args()

    torch.manual_seed(0)
    device = torch.device("cuda")
    use_mm = scaled_mm_supported(device)
    model = Stack(args.layers, args.hidden, args.inter, device, "native", use_mm).eval()
    rows, skipped, records = [], [], []
    case = f"fp8 mlp x{args.layers}"
    with torch.no_grad():
        for t in [int(v) for v in args.tokens.split(",")]:
            x = torch.randn(t, args.hidden, device=device, dtype=torch.bfloat16)
            times, fns = {}, {}
            try:
                # the rewrite is what is measured, also at a size where the default config's
                # speed table would keep the sites (decision 031)
                with_pass = quantfuse.inductor_options(quantfuse.FusionConfig(speed_table=False))
                for label, opts in (("without", {}), ("with", with_pass)):
                    torch._dynamo.reset()
                    oracle.reset_counts()
                    fn = fns[label] = torch.compile(model, dynamic=False, options=opts)
                    fn(x)
                    if label == "with":
                        assert len(quantfuse.last_report().rewrites) == args.layers, str(quantfuse.last_report())
                        assert oracle.call_counts()[("silu_and_mul_per_block_quant", "cuda")] >= 1, dict(oracle.call_counts())
                # both modes in alternating rounds: timed one after the other, a drift of the
                # shared host's speed reads as a difference of the pass
                calls = {k: (lambda f=f: f(x)) for k, f in fns.items()}
                times.update(graph_us_interleaved(calls))
                stats = {}
                plain = plain_us_interleaved(calls, rounds=PLAIN_ROUNDS, stats=stats)
                times.update({k + "_plain": v for k, v in plain.items()})
            except RuntimeError as e:  # cuBLAS's block-scaled GEMM rejects some shapes (T=1 on torch 2.11)
                print(f"T={t}: skipped, the model does not run: {str(e).splitlines()[0][:160]}", flush=True)
                skipped.append(t)
                continue
            rows.append((t, times["without"], times["with"], times["without_plain"], times["with_plain"]))
            for mode, key in (("cuda graph", ""), ("plain calls", "_plain")):
                records.append(dict(bench="mlp", case=case, mode=mode, tokens=t, hidden=args.hidden,
                                    intermediate=args.inter, without_pass_us=times["without" + key],
                                    with_pass_us=times["with" + key]))
                if key:
                    records[-1].update(without_pass_host_us=stats["without"]["host_us"],
                                       with_pass_host_us=stats["with"]["host_us"],
                                       paired_speedup=stats["with"]["paired"], rounds=PLAIN_ROUNDS)
            print(f"T={t}: without {times['without']:.1f} us, with {times['with']:.1f} us (graph); plain "
                  f"{times['without_plain']:.1f} / {times['with_plain']:.1f} us (paired "
                  f"{stats['with']['paired']:.3f}x), host CPU {stats['without']['host_us']:.1f} / "
                  f"{stats['with']['host_us']:.1f} us", flush=True)
            records += host_records(t, args.inter)
    lines = [f"FP8 MLP x{args.layers} (hidden {args.hidden}, inter {args.inter}, scaled_mm={use_mm}), "
             f"{torch.cuda.get_device_name()}, torch {torch.__version__}; CUDA-graph replay (median) and plain "
             "calls (wall clock)", "",
             "| T | graph without (µs) | graph with (µs) | speedup | plain without (µs) | plain with (µs) | speedup |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {t} | {a:.1f} | {b:.1f} | {a / b:.3f}x | {c:.1f} | {d:.1f} | {c / d:.3f}x |" for t, a, b, c, d in rows]
    host = [r for r in records if r["bench"] == "host"]
    lines += ["", "| eager call | T | fused op (µs) | torch.add on the input (µs) |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['tokens']} | {r['with_pass_us']:.1f} | {r['without_pass_us']:.1f} |" for r in host]
    lines += [f"| {t} | model does not run (block-scaled GEMM) | | |" for t in skipped]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.jsonl:
        from bench_pairs import write_records

        write_records(args.jsonl, records)


def plain_us(fn, iters: int = 50, rounds: int = 9, device: str = "cuda") -> float:
    """Wall-clock µs per call of ``fn`` run back to back, synchronised at the end of each of
    ``rounds`` rounds: the median round (the host is shared, single rounds vary by 2x)."""
    return plain_us_interleaved({"fn": fn}, iters, rounds, device)["fn"]


def plain_us_interleaved(fns: dict, iters: int = 50, rounds: int = 9, device: str = "cuda",
                         stats: dict | None = None) -> dict:
    """:func:`plain_us` of several callables measured in alternating rounds (A B B A ...), so a
    drift of the shared host's speed during the run falls on all of them alike: name -> µs.

    ``stats`` (filled when given): per name, ``host_us``, the median round's CPU time of the
    calling thread per call, before the round's synchronisation (the host's own work: a
    thread descheduled by the shared host's other load does not count), and ``paired`` the
    median over rounds of the first name's wall time / this one's in the same round pair
    (a speedup that the host's drift between pairs does not move)."""
    import statistics
    import time

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    names = list(fns)
    for name in names:
        for _ in range(10):
            fns[name]()
    sync()
    times = {name: [] for name in names}
    host = {name: [] for name in names}
    for k in range(rounds):
        for name in (names if k % 2 == 0 else names[::-1]):
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(iters):
                fns[name]()
            c1 = time.thread_time()
            sync()
            times[name].append((time.perf_counter() - t0) / iters * 1e6)
            host[name].append((c1 - c0) / iters * 1e6)
    if stats is not None:
        first = times[names[0]]
        for name in names:
            stats[name] = dict(host_us=statistics.median(host[name]),
                               paired=statistics.median(a / b for a, b in zip(first, times[name])))
    return {name: statistics.median(v) for name, v in times.items()}


def graph_us_interleaved(fns: dict, rounds: int = 5, rep: int = 100) -> dict:
    """CUDA-graph replay µs (``triton.testing.do_bench_cudagraph``, median) of several
    callables, in alternating rounds as :func:`plain_us_interleaved`: name -> median round."""
    import statistics

    from triton.testing import do_bench_cudagraph

    names = list(fns)
    times = {name: [] for name in names}
    for k in range(rounds):
        for name in (names if k % 2 == 0 else names[::-1]):
            times[name].append(do_bench_cudagraph(fns[name], rep=rep) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def host_records(tokens: int, inter: int) -> list[dict]:
    """One eager call of the fused op against torch.add on the same input, through the
    dispatcher (the C++ path of csrc/dispatch.cpp; default and ``out`` overload) and through its
    Python kernel."""
    from quantfuse.custom_ops import ops

    x = torch.randn(tokens, 2 * inter, device="cuda", dtype=torch.bfloat16)
    name = "silu_and_mul_per_block_quant"
    op = ops.OPS[name].default
    q, s = op(x, 128)
    calls = {"native": lambda: torch.add(x, x),
             # what Inductor's wrapper calls since the rewrite passes positional arguments (patterns/op_call.py)
             "dispatcher": lambda: op(x, 128),
             # ... and on buffers Inductor plans (passes/planned_outputs.py)
             "dispatcher, out overload": lambda: ops.OPS[name].out(x, 128, out=q, out_scales=s),
             "dispatcher, keyword arguments": lambda: op(x, group_size=128, column_major_scales=False, use_ue8m0=False),
             "Python kernel": lambda: ops.PYTHON_KERNELS[name](x, 128)}
    us = plain_us_interleaved(calls, iters=200, rounds=11)
    return [dict(bench="host", case=f"eager {name}(g=128), {path}", mode="eager", tokens=tokens,
                 hidden=2 * inter, intermediate=inter, with_pass_us=us[path], without_pass_us=us["native"])
            for path in calls if path != "native"]


if __name__ == "__main__":
    main()
