"""Every activation × scheme pair on the GPU: fused op vs unfused ops vs Inductor's native code.

    python benchmarks/bench_pairs.py [--tokens 64,4096,16384] [--hidden 2048,7168] [--out FILE]
                                     [--no-inductor] [--no-triton] [--dtype float16]
    QUANTFUSE_PDL=1 python benchmarks/bench_pairs.py ...   # CUDA kernels with PDL (opt-in)

For each pair and size: median time of the fused op (whatever backend the oracle picks,
named in the table), of the same op forced onto the Triton backend, of the unfused
activation op then quant op, and of Inductor's compiled code for the plain-PyTorch
spelling (static shapes, no quantfuse pass), with bytes moved and the percentage of the
device-to-device copy bandwidth measured in the same run.
Inputs are fresh random data, rotated when they would fit in L2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quantfuse  # noqa: E402,F401
from quantfuse.custom_ops import oracle  # noqa: E402
from quantfuse.patterns import native  # noqa: E402

qf = torch.ops.quantfuse
SCHEMES = {  # suffix -> (unfused op, args, native spelling or None, output bytes per element, scale bytes)
    "per_block_quant": ("per_token_group_quant_fp8", (128,), ("fp8_per_group", "scale=fp32"), 1.0, 4 / 128),
    "per_token_quant_fp8": ("per_token_quant_fp8", (), ("fp8_per_token", "amax/448"), 1.0, 0.0),
    "mxfp8_quant": ("mxfp8_quant", ("rceil",), ("mxfp8", "rceil"), 1.0, 1 / 32),
    "mxfp4_quant": ("mxfp4_quant", ("rceil",), ("mxfp4", "rceil"), 0.5, 1 / 32),
}
ACTS = {"silu_and_mul": ("split,F.silu", 2), "relu2": ("relu.square", 1)}


def bench(fn, rotate):
    from triton.testing import do_bench, do_bench_cudagraph

    i = [0]

    def call():
        i[0] = (i[0] + 1) % len(rotate)
        fn(rotate[i[0]])
    try:
        return do_bench_cudagraph(call, rep=100) * 1e3
    except Exception:
        return do_bench(call, rep=100, return_mode="median") * 1e3


def copy_bandwidth() -> float:
    a = torch.empty(1 << 28, dtype=torch.float32, device="cuda").normal_()
    b = torch.empty_like(a)
    from triton.testing import do_bench
    ms = do_bench(lambda: b.copy_(a), rep=200, return_mode="median")
    return 2 * a.numel() * 4 / (ms * 1e-3) / 1e9


def rotation_copies(nbytes: float) -> int:
    """How many input copies a timed loop rotates through: enough that together they move
    ``QUANTFUSE_BENCH_ROTATE_MB`` (default 60, above the H100's 50 MB L2), at most 8.
    With plain loads L2 keeps recent lines (about LRU), so 60 MB already means no input is
    still there at its next use; a kernel that marks its loads evict-first keeps older
    lines instead, and only a rotation of several L2 sizes (250) measures it cold."""
    mb = float(os.environ.get("QUANTFUSE_BENCH_ROTATE_MB", "60"))
    return max(1, min(8, int(mb * 1e6 // max(nbytes, 1)) + 1))


def same_bytes_copy(nbytes: int, copies: int) -> float:
    """µs of a device-to-device copy moving ``nbytes`` (half read, half written), timed as
    the pairs are: what a plain copy reaches at this size, launch gaps included."""
    n = max(16, nbytes // 2)
    pairs = [(torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda"),
              torch.empty(n, dtype=torch.uint8, device="cuda")) for _ in range(copies)]
    return bench(lambda p: p[1].copy_(p[0]), pairs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="64,4096,16384")
    p.add_argument("--hidden", default="2048,7168")
    p.add_argument("--out")
    p.add_argument("--no-inductor", action="store_true")
    p.add_argument("--no-triton", action="store_true")
    p.add_argument("--schemes", default=",".join(SCHEMES), help="fused-op suffixes to run")
    p.add_argument("--swizzled", action="store_true",
                   help="MX scales in the 128x4 tiled layout (is_sf_swizzled_layout=True; Inductor's "
                        "native graph stays row-major)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"),
                   help="input dtype (the byte counts assume 2-byte elements)")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    bw = copy_bandwidth()
    # the time between back-to-back graph nodes: a one-element fill per replay step
    floor = bench(lambda t: t.fill_(1.0), [torch.empty(1, device="cuda") for _ in range(2)])
    pdl = os.environ.get("QUANTFUSE_PDL", "") == "1" and torch.cuda.get_device_capability()[0] >= 9
    rows = []
    for act, (spelling, widen) in ACTS.items():
        for suffix, (unfused, qargs, nat, out_b, s_b) in SCHEMES.items():
            if suffix not in args.schemes.split(","):
                continue
            if args.swizzled and suffix.startswith("mx"):
                qargs = (*qargs, True)
            fused = getattr(qf, f"{act}_{suffix}")
            act_op, quant_op = getattr(qf, act), getattr(qf, unfused)
            native_fn = None
            if nat:
                a_fn = native.ACTIVATION_SPELLINGS[act][spelling]
                s_fn = native.SCHEME_SPELLINGS[nat[0]][nat[1]]
                native_fn = lambda x, a_fn=a_fn, s_fn=s_fn: s_fn(a_fn(x))  # noqa: E731
            for t in [int(v) for v in args.tokens.split(",")]:
                for h in [int(v) for v in args.hidden.split(",")]:
                    n_in = h * widen
                    nbytes = t * (n_in * 2 + h * out_b + h * s_b)
                    copies = rotation_copies(nbytes)
                    xs = [torch.randn(t, n_in, device="cuda", dtype=dtype) * 3 for _ in range(copies)]
                    oracle.calls.clear()
                    fused(xs[0], *qargs)
                    backend = next(b for (o, b) in oracle.calls if o == f"{act}_{suffix}")
                    t_fused = bench(lambda x: fused(x, *qargs), xs)
                    t_unfused = bench(lambda x: quant_op(act_op(x), *qargs), xs)
                    t_tri = float("nan")
                    if not args.no_triton:
                        os.environ[oracle.BACKEND_ENV] = "triton"
                        try:
                            t_tri = bench(lambda x: fused(x, *qargs), xs)
                        finally:
                            del os.environ[oracle.BACKEND_ENV]
                    t_ind = float("nan")
                    if native_fn is not None and not args.no_inductor:
                        torch._dynamo.reset()
                        compiled = torch.compile(native_fn, dynamic=False)
                        compiled(xs[0])
                        t_ind = bench(compiled, xs)
                    t_copy = same_bytes_copy(int(nbytes), copies)
                    pct = lambda us: nbytes / (us * 1e-6) / 1e9 / bw  # noqa: E731
                    rows.append((act, suffix, t, h, backend, t_fused, pct(t_fused), pct(t_tri), t_unfused, t_ind,
                                 pct(t_ind) if t_ind == t_ind else float("nan"), pct(t_copy)))
                    print(rows[-1], flush=True)
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, copy bandwidth {bw:.0f} GB/s; "
             f"{args.dtype} input, median µs (CUDA-graph replay), %BW = minimum bytes / time / copy bandwidth; "
             f"CUDA kernels with programmatic dependent launch: {'on' if pdl else 'off'}; one-element fill "
             f"{floor:.2f} µs; 'copy %BW' = a copy of the same bytes timed the same way", "",
             "| pair | T | H | backend | fused µs | fused %BW | Triton %BW | unfused µs | Inductor native µs "
             "| Inductor %BW | x unfused | x Inductor | copy %BW |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for act, suffix, t, h, b, tf, pf, pt, tu, ti, pi, pc in rows:
        lines.append(f"| {act}_{suffix} | {t} | {h} | {b} | {tf:.1f} | {pf:.0%} | {pt:.0%} | {tu:.1f} | {ti:.1f} | "
                     f"{pi:.0%} | {tu / tf:.2f} | {ti / tf:.2f} | {pc:.0%} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
