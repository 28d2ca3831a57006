"""Every activation × scheme pair on the GPU: fused op vs unfused ops vs Inductor's native code.

    python benchmarks/bench_pairs.py [--tokens 64,4096,16384] [--hidden 2048,7168] [--out FILE]
                                     [--no-inductor] [--no-triton] [--dtype float16]
                                     [--layouts halves,separate,interleaved] [--jsonl FILE]
                                     [--experts 8,256] [--no-pairs]
    QUANTFUSE_PDL=1 python benchmarks/bench_pairs.py ...   # CUDA kernels with PDL (opt-in)

For each pair and size: median time of the fused op (whatever backend the oracle picks,
named in the table), of the same op forced onto the Triton backend, of the unfused
activation op then quant op, and of Inductor's compiled code for the plain-PyTorch
spelling (static shapes, no quantfuse pass; an FP8 per-group variant's at its group size and
scale layout: ``native_cell_fn``), with bytes moved and the percentage of the
device-to-device copy bandwidth measured in the same run.
Inputs are fresh random data, rotated when they would fit in L2. The cells (pairs,
parameters, bytes) come from the catalog; ``--jsonl`` appends one record per cell.

``--experts E``: also the experts ops of the MX schemes (``mxfp8_experts_quant``, the fused
``{act}_{scheme}_experts_quant``) for T rows routed to E experts (each row to a random expert,
seeded: ``expert_split``), with their bytes (``experts_cell_bytes``: the input, q and the whole
scale buffer the kernel writes, padding included) and the unfused activation op then experts
quant op; the cell's variant is ``E<E>``.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quantfuse  # noqa: E402,F401
from quantfuse.custom_ops import oracle  # noqa: E402
from quantfuse.custom_ops.plan import expert_offsets  # noqa: E402
from quantfuse.passes import profitability  # noqa: E402
from quantfuse.patterns import native  # noqa: E402

from quantfuse import catalog  # noqa: E402

qf = torch.ops.quantfuse
#: the plain-PyTorch spelling Inductor compiles for each scheme and activation (a
#: benchmark choice: patterns/native.py holds the spellings)
NATIVE_SCHEME = {"fp8_per_group": "scale=fp32", "fp8_per_token": "amax/448", "fp8_per_tensor": "amax/448",
                 "mxfp8": "rceil", "mxfp4": "rceil"}
NATIVE_ACT = {"silu_and_mul": "split,F.silu", "relu2": "relu.square"}
#: the group size of the native per-group spelling (its eager and Inductor columns are for that cell)
NATIVE_GROUP = inspect.signature(native.fp8_group_quant).parameters["group_size"].default


def cell_args(scheme: catalog.Scheme, swizzled: bool) -> tuple:
    """The quant op's arguments of a cell: the scheme's defaults (group 128, rceil), a
    static scale tensor, the swizzled MX layout on request."""
    args = [torch.tensor([0.05], device="cuda")] if scheme.tensor_inputs else []
    for p in scheme.params:
        if not p.has_default:
            args.append(p.example)
    if swizzled and scheme.base.mx:
        args += [scheme.base.mx_rounding.value, True]
    return tuple(args)


def group_variants(scheme: catalog.Scheme, spec: str, swizzled: bool) -> list[tuple[str, tuple]]:
    """(label, quant op arguments) of each cell variant: ``--group-variants`` ("64,128,128:col")
    for the FP8 per-group scheme (group size, column-major scales), the scheme's defaults else."""
    if scheme.key != "fp8_per_group":
        return [("", cell_args(scheme, swizzled))]
    out = []
    for v in spec.split(","):
        g, _, col = v.partition(":")
        label = profitability.cell_variant(scheme.key, {"group_size": int(g), "column_major_scales": bool(col)})
        out.append((label, (int(g), True) if col else (int(g),)))
    return out


def native_cell_fn(native_fn, scheme_key: str, variant: str, qargs: tuple, act: catalog.Activation):
    """The plain-PyTorch spelling of a cell that Inductor compiles, or None: the scheme's
    (``NATIVE_SCHEME``) for the default cell; for another FP8 per-group variant (its quant op
    arguments ``qargs``: group size, column-major scales) the same maths at that group, with the scales laid out column-major as a GEMM wants them (``s.t().contiguous().t()``,
    the copy the pass folds into the fused op)."""
    if native_fn is None or variant in ("", f"g{NATIVE_GROUP}"):
        return native_fn
    if scheme_key != "fp8_per_group":
        return None
    group, col = qargs[0], len(qargs) > 1 and qargs[1]
    a_fn = native.ACTIVATION_SPELLINGS[act.name][NATIVE_ACT[act.name]]

    def spelled(x):
        q, scale = native.fp8_group_quant(a_fn(x), group)
        scale = scale.squeeze(-1)
        return q, (scale.t().contiguous().t() if col else scale)
    return spelled


def vllm_peer(act_name: str, scheme_key: str, qargs: tuple):
    """vLLM's fused kernel for a cell (``torch.ops._C.silu_and_mul_per_block_quant``, SiLU×Mul ->
    FP8 per group; signature read in vllm-project/vllm csrc: out, input, scales, group_size,
    scale_ub, is_scale_transposed) when ``vllm`` is importable, else None. It allocates its
    outputs inside the call, as the fused op does."""
    if (act_name, scheme_key) != ("silu_and_mul", "fp8_per_group"):
        return None
    try:
        import vllm._custom_ops  # noqa: F401  (loads vLLM's kernels into torch.ops._C)
        op = torch.ops._C.silu_and_mul_per_block_quant
    except Exception:  # no vllm, or a build without this op
        return None
    g, column = qargs[0], len(qargs) > 1 and bool(qargs[1])

    def call(x):
        t, h = x.shape[0], x.shape[1] // 2
        q = torch.empty(t, h, dtype=torch.float8_e4m3fn, device=x.device)
        s = torch.empty((h // g, t) if column else (t, h // g), dtype=torch.float32, device=x.device)
        op(q, x, s.t() if column else s, g, None, column)
        return q, s

    return call


def cell_bytes(scheme: catalog.Scheme, act: catalog.Activation, tokens: int, hidden: int, in_bytes: int) -> float:
    """Minimum bytes a fused cell moves: the input, the encoded output and the scales."""
    r = scheme.base
    n_in = hidden * (2 if act.gated else 1)
    if r.static or r.grouping is catalog.Grouping.PER_TENSOR:  # none, or one for the tensor
        return tokens * (n_in * in_bytes + r.q_width(hidden)) + (0 if r.static else r.scale_dtype.itemsize)
    return tokens * (n_in * in_bytes + r.q_width(hidden) + r.groups(hidden) * r.scale_dtype.itemsize)


def expert_split(tokens: int, experts: int, seed: int = 0) -> list[int]:
    """Rows per expert when each of ``tokens`` rows goes to a uniformly random expert (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.bincount(torch.randint(0, experts, (tokens,), generator=g), minlength=experts).tolist()


def experts_cell_bytes(entry: catalog.OpEntry, tokens: int, hidden: int, experts: int, in_bytes: int) -> float:
    """Bytes an experts cell moves: the input, the encoded output, every byte of the scale
    buffer (plan.experts_scale_shape: the kernel writes its padding too) and the offsets."""
    from quantfuse.custom_ops.plan import experts_scale_shape

    r = entry.base
    n_in = hidden * (2 if entry.activation.gated else 1)
    rows, cols = experts_scale_shape(tokens, r.groups(hidden), experts)
    return tokens * (n_in * in_bytes + r.q_width(hidden)) + rows * cols + 2 * (experts + 1) * 4


def bench_experts_cell(entry: catalog.OpEntry, t: int, h: int, experts: int, dtype, bw: float, triton: bool):
    """(table row, record) of one experts cell (``--experts``), timed as the pairs are."""
    op = getattr(qf, entry.name)
    eo, bo = expert_offsets(expert_split(t, experts), device="cuda")
    args = (eo, bo, experts, 8, entry.base.mx_rounding.value)
    nbytes = experts_cell_bytes(entry, t, h, experts, dtype.itemsize)
    copies = rotation_copies(nbytes)
    width = h * (2 if entry.activation.gated else 1)
    xs = [torch.randn(t, width, device="cuda", dtype=dtype) * 3 for _ in range(copies)]
    oracle.reset_counts()
    op(xs[0], *args)
    backend = next(b for (o, b) in oracle.call_counts() if o == entry.name)
    t_fused = bench(lambda x: op(x, *args), xs)
    t_unfused = float("nan")
    if entry.fused:
        act_op, quant_op = getattr(qf, entry.activation.name), getattr(qf, entry.scheme.experts_name)
        t_unfused = bench(lambda x: quant_op(act_op(x), *args), xs)
    t_tri = float("nan")
    if triton:
        os.environ[oracle.BACKEND_ENV] = "triton"
        try:
            t_tri = bench(lambda x: op(x, *args), xs)
        finally:
            del os.environ[oracle.BACKEND_ENV]
    t_copy = same_bytes_copy(int(nbytes), copies)
    pct = lambda us: nbytes / (us * 1e-6) / 1e9 / bw  # noqa: E731
    nan = float("nan")
    row = (f"{entry.name}(E{experts})", t, h, backend, t_fused, pct(t_fused), pct(t_tri), t_unfused, nan, nan, nan, nan,
           pct(t_copy))
    record = dict(bench="pairs", op=entry.name, variant=f"E{experts}", layout="halves", tokens=t, hidden=h,
                  experts=experts, dtype=str(dtype).removeprefix("torch."), backend=backend, bytes=nbytes,
                  fused_us=t_fused, triton_us=t_tri, unfused_us=t_unfused, copy_us=t_copy, copy_bw_gbs=bw,
                  fused_pct_bw=pct(t_fused))
    return row, record


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
    p.add_argument("--schemes", default=",".join(s.fused_suffix for s in catalog.SCHEMES.values()),
                   help="fused-op suffixes to run")
    p.add_argument("--acts", default=",".join(catalog.ACTIVATIONS), help="activations to run (catalog names)")
    p.add_argument("--layouts", default="halves", help="gated input layouts (catalog.Layout values)")
    p.add_argument("--group-variants", default="128",
                   help="FP8 per-group cells: group sizes, ':col' for column-major scales (e.g. 64,128,64:col,128:col)")
    p.add_argument("--jsonl", help="append one JSON record per cell (with device, versions, commit, command)")
    p.add_argument("--swizzled", action="store_true",
                   help="MX scales in the 128x4 tiled layout (is_sf_swizzled_layout=True; Inductor's "
                        "native graph stays row-major)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"),
                   help="input dtype (the byte counts assume 2-byte elements)")
    p.add_argument("--experts", default="", help="expert counts of the experts ops' cells (e.g. 8,256; none: no cells)")
    p.add_argument("--no-pairs", action="store_true", help="only the experts cells")
    p.add_argument("--recipes", default="",
                   help="';'-separated Recipe.spec strings timed besides the default recipe, each on the "
                        "schemes that take it (e.g. 'floor_at=scale,eps=1e-06;ue8m0=exp2;mx_rounding=floor')")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    bw = copy_bandwidth()
    # the time between back-to-back graph nodes: a one-element fill per replay step
    floor = bench(lambda t: t.fill_(1.0), [torch.empty(1, device="cuda") for _ in range(2)])
    pdl = os.environ.get("QUANTFUSE_PDL", "") == "1" and torch.cuda.get_device_capability()[0] >= 9
    rows = []
    info = run_info()  # once: it runs nvidia-smi and git
    layouts = [catalog.Layout(v) for v in args.layouts.split(",")]
    for act_name, scheme_key in catalog.PAIRS:
        act, scheme = catalog.ACTIVATIONS[act_name], catalog.SCHEMES[scheme_key]
        if args.no_pairs or scheme.fused_suffix not in args.schemes.split(",") or act_name not in args.acts.split(","):
            continue
        name = catalog.fused_op_name(act_name, scheme_key)
        fused = getattr(qf, name)
        act_op, quant_op = getattr(qf, act_name), getattr(qf, scheme.unfused_name)
        native_fn = None
        if scheme_key in NATIVE_SCHEME and act_name in NATIVE_ACT:  # GPT-OSS's has no native spelling here
            a_fn = native.ACTIVATION_SPELLINGS[act_name][NATIVE_ACT[act_name]]
            s_fn = native.SCHEME_SPELLINGS[scheme_key][NATIVE_SCHEME[scheme_key]]
            native_fn = lambda x, a_fn=a_fn, s_fn=s_fn: s_fn(a_fn(x))  # noqa: E731
        # a recipe whose fields are not the scheme's would time the default again
        own = set(scheme.kernel_fields) | ({"mx_rounding"} if scheme.base.mx else set())
        recipes = [""] + [r for r in args.recipes.split(";")
                          if r and all(f.partition("=")[0] in own for f in r.split(","))]
        cells = [(variant, qargs, layout, recipe)
                 for variant, qargs in group_variants(scheme, args.group_variants, args.swizzled)
                 for layout in (layouts if act.gated else [catalog.Layout.HALVES]) for recipe in recipes]
        for variant, qargs, layout, recipe in cells:
            peer = vllm_peer(act_name, scheme_key, qargs) if layout is catalog.Layout.HALVES else None
            for t in [int(v) for v in args.tokens.split(",")]:
                for h in [int(v) for v in args.hidden.split(",")]:
                    nbytes = cell_bytes(scheme, act, t, h, dtype.itemsize)
                    copies = rotation_copies(nbytes)
                    n_in = h * (2 if act.gated else 1)
                    xs = [torch.randn(t, n_in, device="cuda", dtype=dtype) * 3 for _ in range(copies)]
                    kw = {"recipe": recipe} if recipe else {}
                    if layout is catalog.Layout.SEPARATE:
                        xs = [(x[:, :h].contiguous(), x[:, h:].contiguous()) for x in xs]
                        call = lambda x: fused(x[0], *qargs, up=x[1], **kw)  # noqa: E731
                    elif layout is catalog.Layout.INTERLEAVED:
                        call = lambda x: fused(x, *qargs, interleaved=True, **kw)  # noqa: E731
                    else:
                        call = lambda x: fused(x, *qargs, **kw)  # noqa: E731
                    oracle.reset_counts()
                    try:
                        call(xs[0])
                    except (ValueError, RuntimeError, NotImplementedError) as e:
                        if not recipe:
                            raise
                        print(f"skip {name} recipe={recipe!r}: {str(e).splitlines()[0]}", flush=True)
                        continue
                    backend = next(b for (o, b) in oracle.call_counts() if o == name)
                    t_fused = bench(call, xs)
                    halves = layout is catalog.Layout.HALVES
                    t_unfused = bench(lambda x: quant_op(act_op(x), *qargs, **kw), xs) if halves else float("nan")
                    t_tri = float("nan")
                    if not args.no_triton:
                        os.environ[oracle.BACKEND_ENV] = "triton"
                        try:
                            t_tri = bench(call, xs)
                        finally:
                            del os.environ[oracle.BACKEND_ENV]
                    t_ind = float("nan")
                    cell_fn = native_cell_fn(native_fn, scheme_key, variant, qargs, act) if halves and not recipe else None
                    if cell_fn is not None and not args.no_inductor:
                        torch._dynamo.reset()
                        compiled = torch.compile(cell_fn, dynamic=False)
                        compiled(xs[0])
                        t_ind = bench(compiled, xs)
                    t_eager = bench(cell_fn, xs) if cell_fn is not None else float("nan")
                    t_vllm = bench(peer, xs) if peer is not None and not recipe else float("nan")
                    t_copy = same_bytes_copy(int(nbytes), copies)
                    pct = lambda us: nbytes / (us * 1e-6) / 1e9 / bw  # noqa: E731
                    pair = (f"{name}[{layout.value}]" if act.gated else name) + (f"({variant})" if variant else "") \
                        + (f"{{{recipe}}}" if recipe else "")
                    rows.append((pair, t, h, backend, t_fused, pct(t_fused), pct(t_tri), t_unfused, t_ind,
                                 pct(t_ind) if t_ind == t_ind else float("nan"), t_eager, t_vllm, pct(t_copy)))
                    record = dict(bench="pairs", op=name, **({"variant": variant} if variant else {}),
                                  **({"recipe": recipe} if recipe else {}),
                                  layout=layout.value, tokens=t, hidden=h, eager_us=t_eager, vllm_us=t_vllm,
                                  dtype=args.dtype, backend=backend, bytes=nbytes, fused_us=t_fused,
                                  triton_us=t_tri, unfused_us=t_unfused, inductor_us=t_ind, copy_us=t_copy,
                                  copy_bw_gbs=bw, fused_pct_bw=pct(t_fused))
                    print(rows[-1], flush=True)
                    if args.jsonl:  # each cell as it is measured: a run stopped by a timeout keeps its cells
                        write_records(args.jsonl, [record], info)
    experts_entries = [e for e in catalog.OPS.values() if e.experts and e.scheme.fused_suffix in args.schemes.split(",")]
    for experts in [int(v) for v in args.experts.split(",") if v]:
        for entry in experts_entries:
            for t in [int(v) for v in args.tokens.split(",")]:
                for h in [int(v) for v in args.hidden.split(",")]:
                    row, record = bench_experts_cell(entry, t, h, experts, dtype, bw, not args.no_triton)
                    rows.append(row)
                    print(row, flush=True)
                    if args.jsonl:
                        write_records(args.jsonl, [record], info)
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, copy bandwidth {bw:.0f} GB/s; "
             f"{args.dtype} input, median µs (CUDA-graph replay), %BW = minimum bytes / time / copy bandwidth; "
             f"CUDA kernels with programmatic dependent launch: {'on' if pdl else 'off'}; one-element fill "
             f"{floor:.2f} µs; 'copy %BW' = a copy of the same bytes timed the same way", "",
             "| pair | T | H | backend | fused µs | fused %BW | Triton %BW | unfused µs | Inductor native µs "
             "| Inductor %BW | x unfused | x Inductor | eager µs | vLLM µs | copy %BW |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair, t, h, b, tf, pf, pt, tu, ti, pi, te, tv, pc in rows:
        lines.append(f"| {pair} | {t} | {h} | {b} | {tf:.1f} | {pf:.0%} | {pt:.0%} | {tu:.1f} | {ti:.1f} | "
                     f"{pi:.0%} | {tu / tf:.2f} | {ti / tf:.2f} | {te:.1f} | {tv:.1f} | {pc:.0%} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def run_info() -> dict:
    """Device (the GPU, or ``"CPU"`` without one), versions, commit and command line: the context
    every benchmark record carries."""
    # QF_COMMIT first: the device machine's copy of the tree may carry a stale .git
    commit = os.environ.get("QF_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip()
        except OSError:
            commit = ""
    now = datetime.datetime.now(datetime.timezone.utc)
    info = dict(date=now.date().isoformat(), time=now.strftime("%H:%M:%S"), device="CPU", driver="", sm=None,
                sms=None, l2_bytes=None, torch=torch.__version__, cuda=torch.version.cuda, commit=commit)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                                    capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            driver = ""
        info.update(device=props.name, driver=driver, sm=f"{props.major}{props.minor}",
                    sms=props.multi_processor_count, l2_bytes=getattr(props, "L2_cache_size", None))
    # the kernels' own switches (QUANTFUSE_*, not the cache folder) change what a cell runs: they
    # lead the command line as they were set
    knobs = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("QUANTFUSE_") and k != "QUANTFUSE_CACHE_DIR"]
    return dict(info, command=" ".join(knobs + sys.argv))


def write_records(path: str, records: list[dict], info: dict | None = None) -> None:
    """Append the records as JSON Lines, each with ``info`` (default: :func:`run_info` now)."""
    info = info or run_info()
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps({**info, **r}) + "\n")


if __name__ == "__main__":
    main()
