"""FP8 MoE layer latency with and without quantfuse's pass (``examples/fp8_moe.py``'s layer).

    python benchmarks/bench_moe.py [--shape qwen3-30b-a3b,deepseek-v3] [--scales token,block]
                                   [--tokens 16,64,256,1024,4096,8192] [--out FILE] [--jsonl FILE]
    python benchmarks/bench_moe.py --device cpu --quick      # a tiny shape, to check the script
    python benchmarks/bench_moe.py --profile 20 ...          # and each compiled layer's kernels

Each (shape, scales, T) is compiled without and with the pass (``torch.compile`` default mode,
static shapes, Inductor's default settings) and timed two ways, without and with the pass
alternating in rounds: plain calls (wall clock per forward, synchronised: host cost included;
also the host thread's CPU time per forward and the median speedup of paired rounds) and, on
CUDA, CUDA-graph replay of the compiled callable (``triton.testing.do_bench_cudagraph``,
median: kernel time, launch gaps hidden).
Every compile with the pass must fuse the one activation -> quant site of the experts, and on
CUDA the fused op must run a kernel (not the torch reference). Records: ``bench="moe"``.

``--profile N``: the kernels of N plain forwards of each compiled layer under the torch profiler,
per kernel name its launches and device time per forward (``bench="moe_kernels"``), and the
names whose time or count differs printed side by side: where a difference the timing shows is
in the kernels, and where it is not (in the gaps between them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fp8_moe  # noqa: E402
from bench_mlp import graph_us_interleaved, plain_us_interleaved  # noqa: E402
from quantfuse import FusionConfig  # noqa: E402
from quantfuse.custom_ops import oracle  # noqa: E402


def bench_cell(model, t: int, device: str, iters: int, rounds: int = 21, profile: int = 0) -> dict:
    """Times (µs) of one token count, keyed ``{without,with}_{plain,host,graph}`` (``host``: the
    host's CPU time per plain call), the median paired plain-call speedup (``paired_plain``),
    and the backend the fused op ran on. Both modes alternate without / with in rounds. ``profile``
    > 0: ``kernels`` too (:func:`kernel_times` over that many forwards)."""
    torch.manual_seed(1)
    x = torch.randn(t, model.shape.hidden, device=device, dtype=torch.bfloat16)
    oracle.reset_counts()
    # the rewrite is what is measured, also where the default config keeps the site (records say which)
    plain, fused, out_without, out_with, report = fp8_moe.compile_both(model, x, emulate=False, speed_table=False)
    if report is None or len(report.rewrites) != 1:
        raise SystemExit(f"T={t}: the pass did not fuse the experts' site:\n{report}")
    name = report.rewrites[0].fused_op.split(".")[-1]
    backends = sorted({b for (op, b) in oracle.call_counts() if op == name})
    if device == "cuda" and backends in ([], ["torch"]):
        raise SystemExit(f"T={t}: the fused op ran {backends or 'nowhere'}, not a kernel")
    times = {"backend": ",".join(backends), "op": name,
             "max_abs_diff": (out_with.float() - out_without.float()).abs().max().item()}
    with torch.no_grad():
        stats = {}
        fns = {"without": lambda: plain(x), "with": lambda: fused(x)}
        plain_times = plain_us_interleaved(fns, iters, rounds, device=device, stats=stats)
        graph_times = graph_us_interleaved(fns) if device == "cuda" else {}
        for label in fns:
            times[f"{label}_plain"] = plain_times[label]
            times[f"{label}_host"] = stats[label]["host_us"]
            if label in graph_times:
                times[f"{label}_graph"] = graph_times[label]
        times["paired_plain"] = stats["with"]["paired"]
        if profile and device == "cuda":
            times["kernels"] = kernel_times(fns, profile)
    return times


def kernel_times(fns: dict, forwards: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Per callable of ``fns``: kernel name -> (launches, device µs) per forward over ``forwards``
    plain calls under the torch profiler (CUDA kernels and memory operations)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for label, fn in fns.items():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(forwards):
                fn()
            torch.cuda.synchronize()
        out[label] = {e.key: (e.count / forwards, e.self_device_time_total / forwards)
                      for e in prof.key_averages() if e.self_device_time_total > 0}
    return out


def kernel_lines(table: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """The kernels whose launches or time per forward differ between "without" and "with" (by more
    than 0.2 µs), then each side's totals."""
    a, b = table["without"], table["with"]
    lines = []
    for name in sorted(set(a) | set(b), key=lambda n: -max(a.get(n, (0, 0))[1], b.get(n, (0, 0))[1])):
        (na, ta), (nb, tb) = a.get(name, (0, 0.0)), b.get(name, (0, 0.0))
        if na != nb or abs(ta - tb) > 0.2:
            lines.append(f"|   {name[:90]} | {na:g} / {nb:g} | {ta:.1f} / {tb:.1f} |")
    tot = [(sum(n for n, _ in t.values()), sum(u for _, u in t.values())) for t in (a, b)]
    lines.append(f"|   all kernels | {tot[0][0]:g} / {tot[1][0]:g} | {tot[0][1]:.1f} / {tot[1][1]:.1f} |")
    return lines


def default_decision(op: str, scales: str, rows: int, inter: int, cuda_graphs: bool) -> str:
    """Why the default config keeps the layer's site (the measured rule), or "" where it fuses it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from quantfuse.passes import profitability

    with FakeTensorMode():
        y = torch.empty(rows, inter, dtype=torch.bfloat16, device="cuda")
    scheme = fp8_moe.SCALES_SCHEME[scales]
    return profitability.measured_reason(op, scheme, {"group_size": fp8_moe.BLOCK}, y,
                                         FusionConfig(cuda_graphs=cuda_graphs)) or ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", default="qwen3-30b-a3b,deepseek-v3", help=f"of {', '.join(fp8_moe.SHAPES)}")
    p.add_argument("--scales", default="token,block")
    p.add_argument("--tokens", default="16,64,256,1024,4096,8192")
    p.add_argument("--quick", action="store_true", help="the small shape at T = 16, 64, few iterations")
    p.add_argument("--out")
    p.add_argument("--jsonl", help="append JSON records (bench=moe)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also each layer's kernels over N forwards (torch profiler; bench=moe_kernels)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --quick to check the script on the CPU")
    shapes = ["small"] if args.quick else args.shape.split(",")
    token_counts = [16, 64] if args.quick else [int(v) for v in args.tokens.split(",")]
    iters, rounds = (5, 3) if args.quick else (50, 21)
    records, lines = [], []
    info = None
    if args.jsonl:
        from bench_pairs import run_info, write_records

        info = run_info()
    for shape in shapes:
        for scales in args.scales.split(","):
            model = fp8_moe.build(shape, args.device, scales)
            s = model.shape
            case = f"{shape} {scales} scales"
            gemm = "_scaled_grouped_mm" if model.use_scaled_grouped_mm else "opaque dequantise + _grouped_mm"
            for t in token_counts:
                times = bench_cell(model, t, args.device, iters, rounds, args.profile)
                if "kernels" in times:
                    print(f"| {case} T={t}: kernels differing | launches without / with | µs without / with |")
                    print("\n".join(kernel_lines(times["kernels"])), flush=True)
                    if args.jsonl:
                        write_records(args.jsonl, [
                            dict(bench="moe_kernels", case=case, tokens=t, side=side, kernel=name[:200],
                                 launches=n, device_us=round(us, 3))
                            for side, per in times["kernels"].items() for name, (n, us) in per.items()], info)
                for mode, key in (("plain calls", "plain"), ("cuda graph", "graph")):
                    if f"with_{key}" not in times:
                        continue
                    records.append(dict(bench="moe", case=case, mode=mode, tokens=t, hidden=s.hidden,
                                        intermediate=s.inter, experts=s.experts, topk=s.topk, gemm=gemm,
                                        backend=times["backend"], without_pass_us=times[f"without_{key}"],
                                        with_pass_us=times[f"with_{key}"], max_abs_diff=times["max_abs_diff"],
                                        planned_outputs=FusionConfig().planned_outputs))
                    if key == "plain":
                        records[-1].update(without_pass_host_us=times["without_host"],
                                           with_pass_host_us=times["with_host"],
                                           paired_speedup=times["paired_plain"], rounds=rounds)
                    records[-1]["default_config"] = default_decision(times["op"], scales, t * s.topk, s.inter,
                                                                     key == "graph") if args.device == "cuda" else ""
                    r = records[-1]
                    if args.jsonl:  # each cell as it is measured: a stage timeout keeps what was done
                        write_records(args.jsonl, [r], info)
                    lines.append(f"| {case} | {mode} | {t} | {s.hidden} -> {s.inter}, {s.experts}e top-{s.topk} | "
                                 f"{r['without_pass_us']:.1f} | {r['with_pass_us']:.1f} | "
                                 f"{r['without_pass_us'] / r['with_pass_us']:.3f}x |"
                                 + (f" host {r['without_pass_host_us']:.1f} / {r['with_pass_host_us']:.1f} µs,"
                                    f" paired {r['paired_speedup']:.3f}x |" if key == "plain" else " |")
                                 + f" {('kept' if r['default_config'] else 'fused') if args.device == 'cuda' else '-'} |")
                    print(lines[-1], flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    text = "\n".join([f"FP8 MoE layer, {device}, torch {torch.__version__}", "",
                      "| case | mode | T | shape | without pass (µs) | with pass (µs) | speedup | plain calls: host CPU, paired "
                      "| default config |", "|---|---|---|---|---|---|---|---|---|", *lines])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
