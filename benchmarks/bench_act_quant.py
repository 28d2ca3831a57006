"""Benchmark: SiLU-and-mul -> FP8 per-token-group quant, fused vs unfused vs Inductor.

For each (variant, T, H), bf16 input x [T, 2H], median time of
  cuda      fused CUDA kernel (csrc)
  triton    fused Triton kernel
  unfused   CUDA silu_and_mul then CUDA per_token_group_quant_fp8
  inductor  torch.compile of the plain-PyTorch maths (the native graph)
with device-to-device copy bandwidth measured in the same run. % BW is the fused
minimum bytes (read T*2H*2, write T*H + T*H/g*4) over time, over copy bandwidth.
Every size is timed as CUDA-graph replays (do_bench_cudagraph, median) rotating over
enough input copies (at least 2, at least 4x L2 in all) that inputs are never
L2-resident; the copy bandwidth is timed the same way.

Inductor is compiled with static shapes (dynamic=False, torch._dynamo.reset() before
each shape), as a model with fixed serving shapes gets it; compiling every shape costs
~3 s, so it runs only at all H x T in {1, 64, 4096, 16384} for the first variant and
at T in {64, 16384} x H in {2048, 7168} for the others, "-" elsewhere (inductor_at);
--inductor none skips it. The other variants are timed at T in TS_OTHER only.

Usage: python benchmarks/bench_act_quant.py [--out results.md] [--quick] [--inductor full|none]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.testing

from quantfuse import catalog
from quantfuse.custom_ops import cuda_backend, triton_backend
from quantfuse.custom_ops.plan import make_plan

FP8 = torch.float8_e4m3fn
L2_BYTES = 50 * 2**20
TS = (1, 16, 64, 256, 1024, 4096, 16384)
HS = (2048, 7168, 14336, 18432)
# CUDA kernel knobs swept at a few sizes: (groups per thread, blocks per SM; 0 =
# persistent grid by occupancy, -1 = one block per chunk)
UNROLL_SWEEP = ((1, 0), (2, 0), (4, 0), (1, -1), (2, -1))
SWEEP_AT = ((64, 7168), (4096, 2048), (4096, 7168), (16384, 7168))
# token counts per variant (the first variant gets every T; the run must stay < 5 min)
TS_OTHER = (1, 64, 4096, 16384)


def inductor_at(variant_index: int, tokens: int, hidden: int) -> bool:
    if variant_index == 0:
        return tokens in (1, 64, 4096, 16384)
    return tokens in (64, 16384) and hidden in (2048, 7168)
# (label, group, column_major, ue8m0)
VARIANTS = (
    ("g128 row fp32-scale", 128, False, False),
    ("g128 col ue8m0", 128, True, True),
    ("g64 row fp32-scale", 64, False, False),
)


def native(x: torch.Tensor, group: int, column_major: bool, ue8m0: bool):
    """The plain-PyTorch graph a model would write (what Inductor compiles)."""
    d = x.shape[-1] // 2
    y = F.silu(x[..., :d]) * x[..., d:]
    yg = y.view(*y.shape[:-1], d // group, group).float()
    s = yg.abs().amax(dim=-1).clamp_min(1e-10) / 448.0
    if ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    q = (yg / s.unsqueeze(-1)).clamp(-448.0, 448.0).to(FP8).view(y.shape)
    if column_major:
        s = s.t().contiguous().t()
    return q, s


def copy_bandwidth() -> float:
    """Device-to-device copy GB/s counting bytes read + written, the best of (a) a
    1 GiB copy under do_bench, as v2's runs measured it, and (b) 1 GiB copies from two
    alternating sources timed like the kernels (time_fn). (b) alone read 2433 GB/s on
    the H100 (2026-11-22) while same-size copies of 0.15-1.5 GB in the same run read
    2913-3024 GB/s, and two 1.18 GB copies 2430: torch's copy slows for some buffer
    placements, so the maximum is the ceiling and each row also shows its own copy."""
    srcs = [torch.empty(2**30, dtype=torch.uint8, device="cuda").random_(0, 255) for _ in range(2)]
    b = torch.empty_like(srcs[0])
    t_a = triton.testing.do_bench(lambda: b.copy_(srcs[0]), warmup=25, rep=200,
                                  return_mode="median") * 1e3
    t_b = time_fn(lambda i: b.copy_(srcs[i]), 2)
    del srcs, b
    return 2 * 2**30 / (min(t_a, t_b) * 1e-6) / 1e9


def time_fn(make_call, n_inputs: int, small: bool = True) -> float:
    """Median µs of make_call(i) cycling i over n_inputs prepared input sets, as CUDA
    graph replays (do_bench_cudagraph) at every size: back-to-back calls whose inputs
    are not L2-resident (the caller rotates enough input sets), no launch gaps. (v2's
    run timed T > 256 with do_bench, whose 256 MB L2 flush before each call leaves L2
    full of dirty lines that every kernel then writes back: about +10 µs per call,
    which is what held 4096-token shapes far below the copy bandwidth.)"""
    it = itertools.cycle(range(n_inputs))
    fn = lambda: make_call(next(it))  # noqa: E731
    return triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median") * 1e3


def bench_one(tokens, hidden, group, column_major, ue8m0, compiled, results_unroll=None):
    """Times of each implementation in µs (compiled=None: no Inductor)."""
    width = 2 * hidden
    in_bytes = tokens * width * 2
    fused_bytes = in_bytes + tokens * hidden + tokens * (hidden // group) * 4
    small = tokens <= 256
    # rotate over enough input sets (>= 2) that each call's inputs are out of L2
    n = min(64, max(2, -(-4 * L2_BYTES // in_bytes)))
    xs = [torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16) for _ in range(n)]
    groups = hidden // group

    def scales():
        if column_major:
            return torch.empty(groups, tokens, device="cuda").t()
        return torch.empty(tokens, groups, device="cuda")

    q = torch.empty(tokens, hidden, dtype=FP8, device="cuda")
    s = scales()
    y = torch.empty(tokens, hidden, dtype=torch.bfloat16, device="cuda")
    row = {}
    fused_plan = make_plan(catalog.OPS["silu_and_mul_per_block_quant"], xs[0], (group, column_major, ue8m0))
    act_plan = make_plan(catalog.OPS["silu_and_mul"], xs[0])
    quant_plan = make_plan(catalog.OPS["per_token_group_quant_fp8"], y, (group, column_major, ue8m0))
    row["cuda"] = time_fn(lambda i: cuda_backend.run(fused_plan, (q, s), xs[i], None, None), n, small)
    row["triton"] = time_fn(
        lambda i: triton_backend.silu_and_mul_per_block_quant(q, s, xs[i], group, ue8m0), n, small)

    def unfused(i):
        cuda_backend.run(act_plan, (y,), xs[i], None, None)
        cuda_backend.run(quant_plan, (q, s), y, None, None)

    row["unfused"] = time_fn(unfused, n, small)
    # a plain device copy moving the same bytes (read + write = fused bytes): what a
    # memory-bound kernel of this size can reach, launch and ramp-up included
    cs = [torch.empty(fused_bytes // 2, dtype=torch.uint8, device="cuda") for _ in range(n)]
    cd = torch.empty_like(cs[0])
    row["copy"] = time_fn(lambda i: cd.copy_(cs[i]), n, small)
    del cs, cd
    row["inductor"] = float("nan")
    if compiled is not None:
        torch._dynamo.reset()
        fn = torch.compile(native, dynamic=False)
        fn(xs[0], group, column_major, ue8m0)  # compile outside the timing
        row["inductor"] = time_fn(lambda i: fn(xs[i], group, column_major, ue8m0), n, small)
    if results_unroll is not None:
        m = cuda_backend._mod()
        st, sg = s.stride()
        codes = catalog.codes()
        args = (codes["act_silu_and_mul"], codes["scheme_fp8_per_group"], codes["layout_halves"])
        for u, bps in UNROLL_SWEEP:
            results_unroll[(u, bps)] = time_fn(
                lambda i: m.act_quant(*args, q, s, xs[i], None, None, group, ue8m0, False, st, sg, False, u, bps),
                n, small)
    del xs
    return row, fused_bytes


def versions() -> str:
    try:
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
        nvcc = nvcc.strip().splitlines()[-1]
    except OSError:
        nvcc = "n/a"
    try:
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        drv = "n/a"
    return (f"device {torch.cuda.get_device_name()}, driver {drv}, torch {torch.__version__}, "
            f"triton {triton.__version__}, nvcc {nvcc}, date {datetime.date.today()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the markdown tables here too")
    ap.add_argument("--quick", action="store_true", help="T in (1, 64, 4096, 16384) only")
    ap.add_argument("--inductor", choices=("full", "lite", "none"), default="full",
                    help="lite: first variant at T in (64, 16384) x H in (2048, 7168) only")
    args = ap.parse_args()
    assert cuda_backend.is_available(), cuda_backend.unavailable_reason()
    assert triton_backend.is_available()
    torch.manual_seed(0)
    t_start = time.time()
    use_inductor = args.inductor != "none"
    bw = copy_bandwidth()
    lines = [f"# act_quant benchmark", "", versions(), "",
             f"copy bandwidth (read+write, 1 GiB): **{bw:.0f} GB/s**", "",
             "bf16 input; µs = median; %BW = fused minimum bytes / time / copy bandwidth; "
             "x-unf = unfused pair time / fused CUDA time; x-ind = Inductor / fused CUDA; "
             "same-size copy = torch copy_ moving the fused op's bytes (its %BW is the "
             "ceiling at that size).", ""]
    ts = (1, 64, 4096, 16384) if args.quick else TS
    unroll_rows = []
    for vi, (label, group, cm, ue) in enumerate(VARIANTS):
        lines += [f"## {label}", "",
                  "| T | H | MB | cuda µs | cuda %BW | triton µs | triton %BW | unfused µs | "
                  "inductor µs | inductor %BW | x-unf | x-ind | same-size copy µs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for tokens, hidden in itertools.product(ts if vi == 0 else
                                                [t for t in ts if t in TS_OTHER], HS):
            ur = {} if (tokens, hidden) in SWEEP_AT else None
            ind = use_inductor and inductor_at(vi, tokens, hidden)
            if args.inductor == "lite":
                ind = vi == 0 and tokens in (64, 16384) and hidden in (2048, 7168)
            row, nbytes = bench_one(tokens, hidden, group, cm, ue, native if ind else None, ur)
            pct = lambda us: 100 * nbytes / (us * 1e-6) / 1e9 / bw  # noqa: E731
            if ind:
                ind_cols = (f"{row['inductor']:.1f} | {pct(row['inductor']):.0f}% | "
                            f"{row['unfused'] / row['cuda']:.2f} | {row['inductor'] / row['cuda']:.2f} |")
            else:
                ind_cols = f"- | - | {row['unfused'] / row['cuda']:.2f} | - |"
            ind_cols += f" {row['copy']:.1f} |"
            lines.append(
                f"| {tokens} | {hidden} | {nbytes / 1e6:.1f} | {row['cuda']:.1f} | "
                f"{pct(row['cuda']):.0f}% | {row['triton']:.1f} | {pct(row['triton']):.0f}% | "
                f"{row['unfused']:.1f} | " + ind_cols)
            print(lines[-1], flush=True)
            if ur:
                unroll_rows.append(
                    f"| {label} | {tokens} | {hidden} | " +
                    " | ".join(f"{ur[k]:.1f} ({pct(ur[k]):.0f}%)" for k in UNROLL_SWEEP) + " |")
            torch.cuda.empty_cache()
        lines.append("")
    lines += ["## CUDA kernel sweep: 16-byte vectors per thread (u; 8 elements each) x grid "
              "(persistent / one block per group chunk), µs (%BW)", "",
              "| variant | T | H | " + " | ".join(
                  f"u{u} {'persist' if b == 0 else 'flat'}" for u, b in UNROLL_SWEEP) + " |",
              "|---|---|---|" + "---|" * len(UNROLL_SWEEP),
              *unroll_rows, "", f"benchmark wall time {time.time() - t_start:.0f} s"]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
