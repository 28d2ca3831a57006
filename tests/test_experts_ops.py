"""The experts variants of the MX quant ops: tokens sorted by expert, per-expert swizzled scales.

``{scheme}_experts_quant(x, expert_offsets, blockscale_offsets, num_experts, topk)`` and the
fused ``{activation}_{scheme}_experts_quant`` (vLLM's ``mxfp4_experts_quant`` arguments). The
expected scale buffer is built here from the layout's definition, byte by byte: expert e's
token i, group g lands at ``bo[e] * G_pad + (i // 128) * 128 * G_pad + (g // 4) * 512 +
(i % 32) * 16 + ((i // 32) % 4) * 4 + g % 4``, and every other byte is zero; the elements
are the plain MX op's, row by row (an MX block never spans rows).

The Triton kernel runs under the CPU interpreter in a subprocess (as tests/test_triton_interpret.py
does, with its ``exp`` / division substitutions), on poisoned output buffers, against the
reference bit for bit; skipped without triton. tests/gpu/test_experts_gpu.py does the same on a GPU.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import quantfuse
from quantfuse import catalog
from quantfuse.custom_ops import cuda_backend, reference
from quantfuse.custom_ops.plan import expert_offsets, experts_scale_rows, make_plan
from helpers import count_targets, post_grad_graph

qf = torch.ops.quantfuse
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TILE = catalog.SWIZZLE_ROWS
#: tokens per expert: empty experts, one token, and both sides of a 128-row tile
COUNTS = [[0, 1, 127, 128, 129, 0], [5], [0, 0], [129, 0, 3]]
SCHEMES = [s.key for s in catalog.EXPERTS_SCHEMES]
ROUNDINGS = [r.value for r in catalog.MxRounding]


#: vLLM's ``expert_offsets`` / ``blockscale_offsets`` of tokens per expert (each expert's scale
#: rows padded to a tile; vLLM's tests compute them this way)
offsets = expert_offsets


def expected_scales(row_scales, counts, bo, rows):
    """The experts scale buffer from the 128x4 layout's definition (module doc)."""
    t, g = row_scales.shape
    gp = -(-g // 4) * 4
    flat = torch.zeros(rows * gp, dtype=torch.uint8)
    start = 0
    for e, n in enumerate(counts):
        for i in range(n):
            for c in range(g):
                at = bo[e] * gp + (i // 128) * 128 * gp + (c // 4) * 512 + (i % 32) * 16 + ((i // 32) % 4) * 4 + c % 4
                flat[at] = row_scales[start + i, c]
        start += n
    return flat.view(rows, gp)


def _input(tokens, hidden, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g) * torch.pow(10.0, torch.empty(tokens, 1).uniform_(-3, 3, generator=g))
    if tokens > 3:
        x[1, 3] = float("nan")
        x[2, :32] = 0.0
        x[3, 5] = float("inf")
    return x.to(dtype)


def _plain(scheme):
    return getattr(reference, catalog.SCHEMES[scheme].unfused_name)


@pytest.mark.parametrize("counts", COUNTS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_experts_quant_places_each_experts_scales(counts, scheme, rounding, dtype):
    hidden = 96  # 3 groups: one padded scale column per row
    x = _input(sum(counts), hidden, dtype)
    eo, bo = offsets(counts)
    op = getattr(qf, catalog.SCHEMES[scheme].experts_name)
    q, s = op(x, eo, bo, len(counts), 8, rounding)
    q_rows, s_rows = _plain(scheme)(x, rounding)
    rows = experts_scale_rows(x.shape[0], len(counts))
    assert s.shape == (rows, 4) and s.dtype == torch.uint8
    assert torch.equal(q.view(torch.uint8), q_rows.view(torch.uint8))
    assert torch.equal(s, expected_scales(s_rows, counts, bo.tolist(), rows))


@pytest.mark.parametrize("act", list(catalog.ACTIVATIONS))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_fused_experts_op_is_the_activation_then_the_experts_quant(act, scheme):
    counts = [130, 0, 1]
    hidden = 64
    width = 2 * hidden if catalog.ACTIVATIONS[act].gated else hidden
    x = _input(sum(counts), width, torch.bfloat16, seed=3)
    eo, bo = offsets(counts, torch.int64)
    quant = getattr(qf, catalog.SCHEMES[scheme].experts_name)
    fused = getattr(qf, catalog.fused_op_name(act, scheme, experts=True))
    for rounding in ROUNDINGS:
        want = quant(getattr(qf, act)(x), eo, bo, 3, 2, rounding)
        got = fused(x, eo, bo, 3, 2, rounding)
        for a, b in zip(got, want):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_scale_rows_are_the_worst_split():
    """experts_scale_rows is the padded rows of the worst split of T tokens over E experts:
    one token in each of min(E, T) - 1 experts, the rest in one (no split needs more tiles)."""
    for tokens, experts in itertools.product(range(0, 600, 7), (1, 2, 3, 8, 256)):
        busy = min(tokens, experts)
        split = [1] * (busy - 1) + [tokens - busy + 1] if busy else []
        worst = sum(-(-n // TILE) * TILE for n in split)
        assert experts_scale_rows(tokens, experts) == worst, (tokens, experts)
    assert experts_scale_rows(1, 256) == TILE  # a decode step: one tile, not 256


def test_fake_impl_shapes_and_opcheck():
    counts = [3, 0, 130]
    x = torch.randn(sum(counts), 128, dtype=torch.bfloat16)  # opcheck compares with ==: no NaN
    eo, bo = offsets(counts)
    for name in ("mxfp8_experts_quant", "silu_and_mul_mxfp4_experts_quant"):
        op = getattr(qf, name)
        xin = torch.cat([x, x], -1) if "silu" in name else x
        real = op(xin, eo, bo, 3, 1)
        with FakeTensorMode() as mode:
            fake = op(mode.from_tensor(xin), mode.from_tensor(eo), mode.from_tensor(bo), 3, 1)
        assert [(t.shape, t.stride(), t.dtype) for t in real] == [(t.shape, t.stride(), t.dtype) for t in fake]
        torch.library.opcheck(op.default, (xin, eo, bo, 3, 1, "floor"))


def test_public_reference_checks_like_the_op():
    counts = [4, 0, 1]
    x = _input(5, 64, torch.float16)
    eo, bo = offsets(counts)
    for scheme in SCHEMES:
        want = getattr(qf, catalog.SCHEMES[scheme].experts_name)(x, eo, bo, 3, 8, "floor")
        got = getattr(reference, catalog.SCHEMES[scheme].experts_name)(x, eo, bo, 3, 8, "floor")
        assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="non-decreasing"):
        reference.mxfp8_experts_quant(x, torch.tensor([0, 4, 3, 5], dtype=torch.int32), bo, 3, 8)


def _bad(**change):
    counts = [3, 0, 2]
    eo, bo = offsets(counts)
    call = dict(x=_input(5, 64, torch.bfloat16), eo=eo, bo=bo, e=3, topk=8)
    call.update(change)
    return lambda: qf.mxfp8_experts_quant(call["x"], call["eo"], call["bo"], call["e"], call["topk"])


BAD = [
    (dict(eo=torch.tensor([0, 3, 1, 5], dtype=torch.int32)), ValueError,
     "expert_offsets must be non-decreasing: expert 1 has \\[3, 1\\)"),
    (dict(eo=torch.tensor([0, 3, 3, 4], dtype=torch.int32)), ValueError,
     "expert_offsets must run from 0 to the token count 5, got 0 ... 4"),
    (dict(eo=torch.tensor([1, 3, 3, 5], dtype=torch.int32)), ValueError, "expert_offsets must run from 0 to the token count 5, got 1 ... 5"),
    (dict(eo=torch.tensor([0.0, 3, 3, 5])), TypeError, "expert_offsets has dtype torch.float32; expected int32 or int64"),
    (dict(bo=torch.tensor([0, 128, 128, 256], dtype=torch.int16)), TypeError, "blockscale_offsets has dtype torch.int16"),
    (dict(eo=torch.tensor([0, 3, 3], dtype=torch.int32)), ValueError,
     "expert_offsets has shape \\(3,\\); expected \\[num_experts \\+ 1\\] = \\[4\\]"),
    (dict(bo=torch.tensor([0, 64, 64, 192], dtype=torch.int32)), ValueError,
     "blockscale_offsets\\[1\\] = 64 is not a non-negative multiple of 128"),
    (dict(bo=torch.tensor([0, 0, 128, 256], dtype=torch.int32)), ValueError,
     "blockscale_offsets: expert 0's 3 rows padded to 128 from row 0 overlap the next expert's, which starts at 0"),
    (dict(bo=torch.tensor([0, 128, 128, 512], dtype=torch.int32)), ValueError,
     "blockscale_offsets end at row 512, beyond the 384 scale rows of 5 tokens"),
    (dict(x=_input(5, 80, torch.bfloat16)), ValueError, "hidden size 80 is not divisible by the MX block size 32"),
    (dict(x=_input(5, 64, torch.bfloat16).to(torch.int32)), TypeError, "x has dtype torch.int32"),
    (dict(x=_input(5, 64, torch.bfloat16)[None]), ValueError, "x must be 2-d"),
    (dict(e=0, eo=torch.tensor([0]), bo=torch.tensor([0])), ValueError, "num_experts must be a positive int, got 0"),
    (dict(topk=0), ValueError, "topk must be a positive int, got 0"),
]


@pytest.mark.parametrize("change,exc,match", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_inputs_name_the_problem(change, exc, match):
    with pytest.raises(exc, match="quantfuse.mxfp8_experts_quant: " + match):
        _bad(**change)()


@pytest.fixture
def cuda_extension(monkeypatch):
    """The CUDA backend as on a GPU machine whose extension built (its answers cached apart)."""
    from quantfuse.custom_ops import oracle

    monkeypatch.setattr(cuda_backend, "is_available", lambda: True)
    monkeypatch.setattr(cuda_backend, "_support", {})
    monkeypatch.setattr(cuda_backend, "_fixed", {})
    monkeypatch.setattr(oracle, "_choices", {})


def _cuda_plan(entry, counts, hidden, dtype=torch.bfloat16, *params, **kw):
    eo, bo = offsets(counts)
    width = 2 * hidden if entry.activation.gated and "up" not in kw else hidden
    p = make_plan(entry, torch.zeros(sum(counts), width, dtype=dtype), (len(counts), 8, *params), scale=(eo, bo), **kw)
    return dataclasses.replace(p, device_type="cuda", aligned=True)


def test_cuda_backend_runs_every_experts_plan(cuda_extension):
    """supports() accepts every experts op, dtype, layout and MX rounding, the oracle picks the
    CUDA kernel for them, and the launch arguments name the offsets' positions in the schema."""
    from quantfuse.custom_ops import oracle, ops

    codes = catalog.codes()
    for name, entry in catalog.OPS.items():
        if not entry.experts:
            continue
        layouts = [{}, {"interleaved": True}, {"up": torch.zeros(3, 64)}] if entry.activation.gated else [{}]
        for dtype, rounding, kw in itertools.product(catalog.INPUT_DTYPES, ROUNDINGS, layouts):
            kw = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
            p = _cuda_plan(entry, [1, 0, 2], 64, dtype, rounding, **kw)
            assert cuda_backend.supports(p) is None, (name, dtype, rounding, kw)
            assert oracle.backend_name(p) == "cuda", name
        p = _cuda_plan(entry, [1, 0, 2], 64, torch.bfloat16, "floor")
        args = cuda_backend.launch_args(p, [a.name for a in ops.OPS[name].default._schema.arguments])
        assert (args["experts"], args["offsets_index"], args["swizzled"]) == (3, 1, True)
        assert args["mx"] == catalog.mx_code(p.recipe) == codes["mx_rounding_floor"]
        assert args["scheme"] == codes[f"scheme_{entry.scheme.key}"] and args["groups"] == 2
        assert args["up_index"] == (6 if entry.activation.gated else -1)


def test_cuda_backend_declines_what_the_kernel_does_not_do(cuda_extension):
    entry = catalog.OPS["silu_and_mul_mxfp8_experts_quant"]
    p = _cuda_plan(entry, [2, 1], 64)
    assert cuda_backend.supports(dataclasses.replace(p, aligned=False)) == "input not 16-byte aligned"
    assert "not a kernel recipe" in cuda_backend.supports(_cuda_plan(entry, [2, 1], 64, recipe="clamp=False"))
    assert cuda_backend.supports(dataclasses.replace(p, device_type="cpu")) == "input on cpu, not CUDA"


def test_benchmark_counts_every_byte_the_kernel_moves():
    """bench_pairs --experts: the input, q, the whole scale buffer (padding included: the kernel
    writes it) and the offsets; the routing covers every row."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_pairs
    finally:
        sys.path.pop(0)
    entry = catalog.OPS["silu_and_mul_mxfp4_experts_quant"]
    # 300 rows of 2 x 64 bf16 in, 300 x 32 bytes of q, 640 x 4 scale bytes, 2 x 4 int32 offsets
    assert bench_pairs.experts_cell_bytes(entry, 300, 64, 3, 2) == 300 * 128 * 2 + 300 * 32 + 640 * 4 + 2 * 4 * 4
    entry = catalog.OPS["mxfp8_experts_quant"]
    assert bench_pairs.experts_cell_bytes(entry, 1, 2048, 256, 2) == 2048 * 2 + 2048 + 128 * 64 + 2 * 257 * 4
    split = bench_pairs.expert_split(4096, 256)
    assert len(split) == 256 and sum(split) == 4096 and split == bench_pairs.expert_split(4096, 256)
    assert 0 < max(split) < 64


@pytest.mark.parametrize("act", ["silu_and_mul", "relu2"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_op_form_pattern_fuses_activation_then_experts_quant(act, scheme):
    counts = [1, 0, 129]
    width = 256 if catalog.ACTIVATIONS[act].gated else 128
    x = _input(sum(counts), width, torch.bfloat16, seed=5)
    eo, bo = offsets(counts)
    quant = getattr(qf, catalog.SCHEMES[scheme].experts_name)

    def layer(x, eo, bo):
        return quant(getattr(qf, act)(x), eo, bo, 3, 8, "floor")

    gm = post_grad_graph(layer, x, eo, bo)
    before = len(gm.graph.nodes)
    want = gm(x, eo, bo)
    assert count_targets(gm, f"quantfuse.{act}.") == 1
    assert count_targets(gm, f"quantfuse.{catalog.SCHEMES[scheme].experts_name}.") == 1
    fusion = quantfuse.FusionPass()
    fusion(gm.graph)
    gm.recompile()
    fused = catalog.fused_op_name(act, scheme, experts=True)
    assert len(fusion.report.rewrites) == 1, str(fusion.report)
    r = fusion.report.rewrites[0]
    assert r.fused_op == f"quantfuse.{fused}"
    assert r.params == {"num_experts": 3, "topk": 8, "scale_rounding": "floor"}
    assert count_targets(gm, f"quantfuse.{fused}.") == 1
    assert count_targets(gm, f"quantfuse.{act}.", f"quantfuse.{catalog.SCHEMES[scheme].experts_name}.") == 0
    assert len(gm.graph.nodes) == before - 1  # two op calls become one
    got = gm(x, eo, bo)
    for a, b in zip(got, want):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


# ----------------------------------------------------------------------------------------
# the Triton kernel under the interpreter (a subprocess: TRITON_INTERPRET=1 before triton)

def test_triton_interpreter_bit_exact():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH"))
                                        if p)
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True,
                       timeout=1500, cwd=ROOT)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-6000:]}\nstderr:\n{r.stderr[-6000:]}"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["failures"] == [], summary["failures"][:20]
    assert sorted(summary["ran"]) == sorted(n for n, e in catalog.OPS.items() if e.experts)
    assert summary["checks"] >= 2 * 24, summary


#: (tokens per expert, hidden) of the kernel tests: 0 / 1 / 127 / 128 / 129 tokens, many empty
#: experts, padded scale columns (G = 3, 1) and not (G = 8), one expert only
KERNEL_CASES = [([0, 1, 127, 128, 129, 0], 96), ([2, 0, 0, 1, 0, 0, 0, 3, 0], 256), ([0, 0], 64), ([130], 32)]


def _interpreted(i: int, entry_index: int, dtype, layout, rounding) -> bool:
    """The interpreter's share of the kernel cases (it runs a program in about 0.2 s): each op on
    the first case in bf16 and the second in fp16, the roundings alternating over the ops, and
    the other gated layouts on the last case."""
    first = ROUNDINGS[entry_index % 2]
    if layout is not catalog.Layout.HALVES:
        return i == 3 and dtype == torch.bfloat16 and rounding == first
    return (i, dtype, rounding) in ((0, torch.bfloat16, first), (1, torch.float16, ROUNDINGS[1 - entry_index % 2]))


def run_cases(ts, make_input, device, every: bool = True):
    """The experts ops through the Triton backend (``supports`` / ``run``) on poisoned buffers,
    against the reference, every op, dtype, gated layout, case and rounding (``every=False``:
    the interpreter's share); shared with the GPU test. Returns (checks, failures, ops run)."""
    from helpers import layout_inputs
    from quantfuse.custom_ops.ops import run_reference

    checks, failures, ran = 0, [], set()
    entries = [e for e in catalog.OPS.values() if e.experts]
    for k, entry in enumerate(entries):
        layouts = tuple(catalog.Layout) if entry.activation.gated else (catalog.Layout.HALVES,)
        for dtype, layout, (i, (counts, hidden)), rounding in itertools.product(
                (torch.bfloat16, torch.float16), layouts, enumerate(KERNEL_CASES), ROUNDINGS):
            if not (every or _interpreted(i, k, dtype, layout, rounding)):
                continue
            x, up, interleaved = layout_inputs(make_input, entry, layout, (sum(counts),), hidden, dtype)
            eo, bo = offsets(counts, torch.int64 if len(counts) % 2 else torch.int32, device)
            p = make_plan(entry, x, (len(counts), 8, rounding), up=up, interleaved=interleaved, scale=(eo, bo))
            why = ts.supports(p)
            tag = f"{entry.name}[{dtype}, {layout.value}, {counts}, {hidden}, {rounding}]"
            if why is not None:
                failures.append(f"{tag}: supports() says {why!r}")
                continue
            outs = p.empty_outputs(x.device)
            for t in outs:
                t.view(torch.uint8).fill_(0xAB)  # unwritten bytes (padding included) show
            ts.run(p, outs, x, up, (eo, bo))
            ran.add(entry.name)
            want = run_reference(p, x, up, interleaved, (eo, bo))
            for i, (got, exp) in enumerate(zip(outs, want)):
                checks += 1
                a, b = got.view(torch.uint8), exp.view(torch.uint8)
                if entry.scheme is catalog.MXFP8 and i == 0:  # FP8 NaN codes, sign-blind
                    a, b = (torch.where((t & 0x7F) == 0x7F, 0x7F, t) for t in (a, b))
                if not torch.equal(a, b):
                    bad = (a != b).nonzero()[:3].tolist()
                    failures.append(f"{tag} out{i}: {int((a != b).sum())} of {a.numel()} bytes differ, e.g. {bad}")
    return checks, failures, ran


def _run() -> dict:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from helpers import emulate_interpreted_kernels

    emulate_interpreted_kernels()
    from quantfuse.custom_ops import triton_schemes as ts

    assert ts.is_available()

    def make(lead, width, dtype, specials=True):
        return _input(lead[0], width, dtype, seed=width + lead[0]) if specials else \
            _input(lead[0], width, dtype, seed=7).abs()

    checks, failures, ran = run_cases(ts, make, "cpu", every=False)
    return {"checks": checks, "failures": failures, "ran": sorted(ran)}


if __name__ == "__main__":
    print(json.dumps(_run()))
