"""GPU tests of both kernel families (``triton_schemes`` and ``cuda_backend``: every
activation x scheme pair) against reference.py.

Bit for bit on the same GPU (NaN-aware: FP8 NaN codes compared sign-blind), outputs
poisoned before every call (0xAB bytes / NaN) so unwritten elements show up, fresh
random inputs (per-row magnitudes 1e-3..1e3, sparse outliers), NaN / inf / zero / tie
rows, and fused == unfused (this module's own activation, then its quant op).
Skipped cleanly without CUDA.  bf16 runs the full shape matrix; fp16 / fp32 fewer token
counts (each kernel variant is a Triton compile).
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import kernel_calls as kc  # noqa: E402

from quantfuse import catalog  # noqa: E402
from quantfuse.catalog import Layout  # noqa: E402
from quantfuse.custom_ops import cuda_backend  # noqa: E402
from quantfuse.custom_ops import reference as ref  # noqa: E402
from quantfuse.custom_ops import triton_schemes as ts  # noqa: E402

FP8 = torch.float8_e4m3fn
HIDDEN = [256, 2048, 7168]
TOKENS = {torch.bfloat16: [1, 7, 33, 4097], torch.float16: [1, 33], torch.float32: [7, 33]}
#: op parameters per scheme: every kernel value of each (catalog OpParam.kernel_values)
PARAMS = {"fp8_per_token": [()], "fp8_static": [()], "fp8_per_tensor": [()],
          "fp8_per_group": [(128, False, False), (64, True, True), (128, True, False), (64, False, True)],
          "mxfp8": [("floor",), ("rceil",), ("rceil", True), ("ceil",), ("even", True)],
          "mxfp4": [("floor",), ("rceil",), ("floor", True), ("ceil", True), ("even",)]}
assert set(PARAMS) == set(catalog.SCHEMES), "a catalog scheme without test parameters"
QUANT_OPS = [name for name, e in catalog.OPS.items() if e.scheme is not None and not e.experts]  # experts: test_experts_gpu.py
STATIC_SCALES = (0.37, 1.0, 2.0 ** -20, 3.0e5)


@pytest.fixture(scope="module", autouse=True)
def _available():
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "GPU tests must not run under the interpreter"
    assert ts.is_available(), getattr(ts, "_failed", None)
    assert cuda_backend.is_available(), cuda_backend.unavailable_reason()


@pytest.fixture(params=["triton", "cuda"])
def mod(request):
    """The kernel family under test (both implement the backend protocol)."""
    return {"triton": ts, "cuda": cuda_backend}[request.param]


def make_input(lead, width, dtype, specials=False):
    """randn with per-row magnitudes 1e-3..1e3 and sparse 50x outliers (never all zeros)."""
    x = torch.randn(*lead, width, device="cuda")
    x = x * torch.pow(10.0, torch.empty(*lead, 1, device="cuda").uniform_(-3, 3))
    x = torch.where(torch.rand(*lead, width, device="cuda") < 1e-3, x * 50, x)
    if specials:
        x = x.reshape(-1, width)
        n = x.shape[0]
        ties = torch.tensor([4.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75,
                             -2.5, -3.5, -5.0, -0.0, 0.125, 2.25, 1.0, 3.0, 4.5, 5.5, 6.0, -6.0,
                             0.5, 1.5, 2.0, -4.0, 0.0, -0.0, 0.375, 5.25], device="cuda")
        mids = torch.tensor([256.0, 1.0625, 1.1875, 2.0 ** -10, 3 * 2.0 ** -10, 2.0 ** -7 * 1.0625,
                             500.0, -500.0, 104.0, 120.0, -1.0625, 2.0 ** -11, 15.0 * 2.0 ** -10, 0.0,
                             -0.0, 7.5, 9.0, 11.0, 13.0, 17.0, 19.0, 44.0, 52.0, 200.0, 232.0, 240.0,
                             1e-3, -1e-3, 3.0, 5.0, 6.0, 7.0], device="cuda")
        rows = [("nan", 5), ("inf", width // 3), ("zero", 0), ("-inf", 7)]
        for i, (kind, col) in enumerate(rows[:n]):
            if kind == "zero":
                x[i, :64] = 0.0
            else:
                x[i, col] = float(kind)
        if n > 5:
            x[4] = ties.repeat(width // 32 + 1)[:width]
            x[5] = mids.repeat(width // 32 + 1)[:width]
        if n > 6:
            x[6] = torch.randn(width, device="cuda") * 1e-36  # tiny: subnormal amax / 448
        if n > 8:
            x[7] = torch.randn(width, device="cuda") * 1e-39  # subnormal inputs (bf16 keeps them)
            x[8] = torch.randn(width, device="cuda") * 1e-20  # relu2: subnormal squares
        x = x.reshape(*lead, width)
    return x.to(dtype)


def _bytes(t):
    if t.dtype == FP8:
        b = t.view(torch.uint8).clone()
        b[(b & 0x7F) == 0x7F] = 0x7F  # NaN, sign-blind
        return b
    return t


def assert_same(name, a, b):
    assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    a, b = _bytes(a), _bytes(b)
    if a.is_floating_point():
        na, nb = torch.isnan(a), torch.isnan(b)
        ib = {4: torch.int32, 2: torch.int16}[a.element_size()]
        ok = torch.equal(na, nb) and torch.equal(a.masked_fill(na, 0).contiguous().view(ib),
                                                 b.masked_fill(nb, 0).contiguous().view(ib))
        bad = (na != nb) | (~na & ~nb & ((a != b) | (torch.signbit(a) != torch.signbit(b))))
    else:
        ok = torch.equal(a, b)
        bad = a != b
    if not ok:
        idx = bad.nonzero()[:4].tolist()
        pytest.fail(f"{name}: {int(bad.sum())} of {a.numel()} differ, e.g. at {idx}: "
                    f"{[a[tuple(i)].item() for i in idx]} vs {[b[tuple(i)].item() for i in idx]}")


def _width(name, hidden, layout=Layout.HALVES):
    """x's last dim for op ``name`` with ``hidden`` outputs a row."""
    gated = catalog.OPS[name].activation.gated
    return 2 * hidden if gated and layout is not Layout.SEPARATE else hidden


def _scale_tensor(value):
    return torch.tensor([value], dtype=torch.float32, device="cuda")


def check_op(mod, name, x, up=None, interleaved=False):
    """Every parameter set of op ``name`` on x, against the reference, and fused == unfused."""
    e = catalog.OPS[name]
    for params in PARAMS[e.scheme.key]:
        for scale in ([_scale_tensor(v) for v in STATIC_SCALES] if e.scheme.base.static else [None]):
            tag = f"{name}{params} {x.dtype} {tuple(x.shape)} up={up is not None} il={interleaved}"
            if scale is not None:
                tag += f" scale={scale.item()}"
            kw = dict(up=up, interleaved=interleaved, scale=scale)
            outs = kc.call(mod, name, x, *params, **kw)
            for what, a, b in zip("qs", outs, kc.reference(name, x, *params, **kw)):
                assert_same(f"{tag} {what}", a, b)
            if e.fused:  # fused == unfused, both this module's kernels
                (y,) = kc.call(mod, e.activation.name, x, up=up, interleaved=interleaved)
                uouts = kc.call(mod, kc.unfused(name), y, *params, scale=scale)
                for what, a, b in zip("qs", outs, uouts):
                    assert_same(f"{tag} fused==unfused {what}", a, b)


def _cases():
    for dtype, tokens in TOKENS.items():
        for t in tokens:
            for h in HIDDEN:
                yield pytest.param(dtype, t, h, id=f"{str(dtype)[6:]}-T{t}-H{h}")


@pytest.mark.parametrize("dtype,tokens,hidden", list(_cases()))
def test_every_op_vs_reference(mod, dtype, tokens, hidden):
    torch.manual_seed(tokens * 7919 + hidden)
    for act in kc.runnable(mod, catalog.ACTIVATIONS):
        x = make_input((tokens,), _width(act, hidden), dtype, specials=tokens >= 7)
        assert_same(f"{act} {dtype} {tuple(x.shape)}", kc.call(mod, act, x)[0], kc.activation(act, x))
    for name in kc.runnable(mod, QUANT_OPS):
        check_op(mod, name, make_input((tokens,), _width(name, hidden), dtype, specials=tokens >= 7))


@pytest.mark.parametrize("layout", [lay for lay in Layout if lay is not Layout.HALVES], ids=lambda lay: lay.value)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gated_layouts(mod, dtype, layout):
    """Every gated op with gate and up as two tensors and interleaved (catalog.Layout)."""
    torch.manual_seed(11)
    for tokens, hidden in ((7, 2048), (33, 256), (5, 14336)):
        x = make_input((tokens,), _width("silu_and_mul", hidden, layout), dtype, specials=True)
        kw = kc.layout_kwargs(layout, x, make_input((tokens,), hidden, dtype, specials=True))
        assert_same(f"silu_and_mul {layout.value}", kc.call(mod, "silu_and_mul", x, **kw)[0],
                    kc.activation("silu_and_mul", x, **kw))
        for name in kc.runnable(mod, QUANT_OPS):
            if catalog.OPS[name].activation.gated:
                check_op(mod, name, x, **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_static_scale_edges(mod, dtype):
    """Static per-tensor FP8 with scales outside the fast division's range and special
    ones (0, inf, NaN, negative, subnormal): the kernels divide as the reference does."""
    name = catalog.fused_op_name("silu_and_mul", "fp8_static")
    x = make_input((33,), _width(name, 512), dtype, specials=True)
    for v in (0.0, float("inf"), float("nan"), -0.5, 1e-40, 2.0 ** -70, 2.0 ** 70, 3.0e38, 2.0 ** -60, 2.0 ** 60):
        scale = _scale_tensor(v)
        for n, xx in ((name, x), (kc.unfused(name), x[:, :512].contiguous())):
            (q,) = kc.call(mod, n, xx, scale=scale)
            (rq,) = kc.reference(n, xx, scale=scale)
            assert_same(f"{n} scale={v}", q, rq)


def _mx_ops():
    return [n for n in QUANT_OPS if catalog.OPS[n].scheme.base.mx]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_swizzled_scales_with_padding(mod, dtype):
    """MX scales in the 128x4 tiled layout written by the kernels: padded columns (G = 5, 3,
    1), several row blocks (T = 130, 301) and 3-D input, padding bytes zero, against the
    reference; the ops route there too."""
    for lead, h in (((5,), 160), ((130,), 96), ((301,), 32), ((3, 50), 224)):
        for name in kc.runnable(mod, _mx_ops()):
            x = make_input(lead, _width(name, h), dtype, specials=True)
            for params in (("rceil", True), ("floor", True)):
                for what, a, b in zip("qs", kc.call(mod, name, x, *params), kc.reference(name, x, *params)):
                    assert_same(f"{name}{params} {tuple(x.shape)} {what}", a, b)
    import quantfuse.custom_ops.ops  # noqa: F401  (registers torch.ops.quantfuse)

    x = make_input((130,), 2 * 96, dtype, specials=True)
    q, s = torch.ops.quantfuse.silu_and_mul_mxfp4_quant(x, "rceil", True)
    rq, rs = kc.reference("silu_and_mul_mxfp4_quant", x, "rceil", True)
    assert_same("op silu_and_mul_mxfp4_quant swizzled q", q, rq)
    assert_same("op silu_and_mul_mxfp4_quant swizzled s", s, rs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_long_rows_and_3d_input(mod, dtype):
    """Per-token and static rows of every register layout (CUDA: 1, 2, 4, 8 vectors per
    thread and the two-pass path past 2048 vectors; Triton: the chunked path), every layout,
    and a 3-d input."""
    row_ops = [n for n in QUANT_OPS if catalog.OPS[n].scheme.base.grouping in
               (catalog.Grouping.PER_TOKEN, catalog.Grouping.PER_TENSOR)]
    for name in kc.runnable(mod, row_ops):
        for h in (4096, 14336, 18432):
            check_op(mod, name, make_input((5,), _width(name, h), dtype, specials=True))
        if catalog.OPS[name].activation.gated:
            x = make_input((5,), 2 * 18432, dtype, specials=True)
            check_op(mod, name, x, interleaved=True)
            check_op(mod, name, x[:, :18432].contiguous(), up=x[:, 18432:].contiguous())
    for name in ("relu2_mxfp4_quant", "relu2_per_block_quant", "silu_and_mul_mxfp8_quant"):
        check_op(mod, name, make_input((2, 9), _width(name, 512), dtype, specials=True))


def _direct(name, x, *params, vectors=0, bps=0, up=None, interleaved=False):
    """The CUDA extension called directly with the forced vectors / grid knobs."""
    p = kc.make(name, x, *params, up=up, interleaved=interleaved)
    outs = tuple(kc.poison(t) for t in p.empty_outputs(x.device))
    act, scheme, layout, gs, ue8m0, mx, swizzled, column, groups = cuda_backend._fixed_args(p)
    st, sg = (1, p.tokens) if column else ((0, 0) if swizzled else (groups, 1))
    err = cuda_backend._mod().act_quant(act, scheme, layout, outs[0], outs[1], x, up, None, gs, ue8m0, mx, st, sg,
                                        swizzled, vectors, bps, p.act_params)
    assert err == "", err
    return outs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_vector_variants_agree(dtype):
    """Every vectors-per-thread instantiation of the CUDA group kernel (1, 2, 4) and grid
    shape gives the reference's bits, for every per-group scheme and activation, MX scales
    in both layouts, gate and up as halves or two tensors."""
    tokens, hidden = 301, 1024
    for name in kc.runnable(cuda_backend, QUANT_OPS):
        e = catalog.OPS[name]
        if e.scheme.base.grouping not in (catalog.Grouping.PER_GROUP, catalog.Grouping.MX_BLOCK):
            continue
        x = make_input((tokens,), _width(name, hidden), dtype, specials=True)
        layouts = [{}]
        if e.activation.gated:
            layouts.append({"up": x[:, hidden:].contiguous()})
        for params in PARAMS[e.scheme.key]:
            for kw in layouts:
                xx = x[:, :hidden].contiguous() if kw else x
                want = kc.reference(name, xx, *params, **kw)
                for vectors, bps in ((1, 0), (2, 0), (4, 0), (1, 1), (2, -1)):
                    got = _direct(name, xx, *params, vectors=vectors, bps=bps, **kw)
                    for what, a, b in zip("qs", got, want):
                        assert_same(f"{name}{params} up={bool(kw)} vectors={vectors} bps={bps} {what}", a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_token_variants_agree(dtype):
    """Every vectors-per-thread instantiation of the CUDA per-token kernel and block size
    (512 threads, or about 512 / k with the blocks_per_sm knob k) gives the reference's
    bits: rows of one warp (no barrier) and of several warps (shared-memory reduction)."""
    tokens = 301
    for name in kc.runnable(cuda_backend, QUANT_OPS):
        if catalog.OPS[name].scheme.base.grouping is not catalog.Grouping.PER_TOKEN:
            continue
        for hidden in (1024, 4096):
            x = make_input((tokens,), _width(name, hidden), dtype, specials=True)
            il = catalog.OPS[name].activation.gated
            want = kc.reference(name, x)
            want_il = kc.reference(name, x, interleaved=True) if il else None
            for vectors, bps in ((0, 0), (1, 0), (4, 2), (4, 4), (2, 2), (2, 4)):
                for what, a, b in zip("qs", _direct(name, x, vectors=vectors, bps=bps), want):
                    assert_same(f"{name} H={hidden} vectors={vectors} bps={bps} {what}", a, b)
                if il:
                    got = _direct(name, x, vectors=vectors, bps=bps, interleaved=True)
                    for what, a, b in zip("qs", got, want_il):
                        assert_same(f"{name} interleaved H={hidden} vectors={vectors} bps={bps} {what}", a, b)


@pytest.mark.parametrize("pdl", ["1", "0"])
def test_cuda_back_to_back_kernels_wait(monkeypatch, pdl):
    """Programmatic dependent launch (QUANTFUSE_PDL=1, opt-in, sm_90+) keeps stream
    order: a chain of this family's kernels, each reading what the one before wrote (act ->
    quant on one buffer) or overwriting what the one before read (quant -> next act), gives
    the reference's bits, eagerly and replayed from a CUDA graph. A kernel that skipped its
    wait would read the previous input's activation (the inputs differ)."""
    monkeypatch.setenv("QUANTFUSE_PDL", pdl)
    tokens, hidden, n = 4096, 4096, 3
    fused = catalog.fused_op_name("silu_and_mul", "mxfp4")
    xs = [make_input((tokens,), 2 * hidden, torch.bfloat16) for _ in range(n)]
    refs = [kc.reference(fused, x, "rceil") for x in xs]
    act_plan = kc.make("silu_and_mul", xs[0])
    (y,) = act_plan.empty_outputs(xs[0].device)
    quant_plan = kc.make(catalog.MXFP4.unfused_name, y, "rceil")
    fused_plan = kc.make(fused, xs[0], "rceil")
    for p in (act_plan, quant_plan, fused_plan):
        assert cuda_backend.supports(p) is None

    def fresh():
        return [quant_plan.empty_outputs(y.device) for _ in range(n + 1)]

    def chain(outs):
        for x, o in zip(xs, outs):
            cuda_backend.run(act_plan, (y,), x, None, None)
            cuda_backend.run(quant_plan, o, y, None, None)
        cuda_backend.run(fused_plan, outs[n], xs[0], None, None)  # fused, right after a quant

    def check(outs, how):
        for i, ((q, s), (rq, rs)) in enumerate(zip(outs, refs + refs[:1])):
            assert_same(f"{how} pdl={pdl} step {i} q", q, rq)
            assert_same(f"{how} pdl={pdl} step {i} s", s, rs)

    outs = fresh()
    chain(outs)
    check(outs, "eager")
    outs = fresh()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain(outs)
    for _ in range(2):
        for q, s in outs:  # poison again: the replay must rewrite everything
            kc.poison(q)
            kc.poison(s)
        y.fill_(float("nan"))
        graph.replay()
        check(outs, "graph")


def test_cuda_bad_inputs_raise():
    """The extension refuses what it cannot run with a message naming the problem (returned,
    never thrown); run() raises it as a RuntimeError."""
    x = make_input((4,), 256, torch.bfloat16)
    p = kc.make(catalog.MXFP8.unfused_name, x, "rceil")
    q, s = p.empty_outputs(x.device)
    codes = catalog.codes()
    m = cuda_backend._mod()
    relu2, ident = codes["act_relu2"], codes["act_identity"]
    mx8, mx4, pt = codes["scheme_mxfp8"], codes["scheme_mxfp4"], codes["scheme_fp8_per_token"]
    h = codes["layout_halves"]
    rceil = codes["mx_rounding_rceil"]  # the MX code of the rceil recipe (catalog.mx_code)
    assert "scales must be uint8" in m.act_quant(relu2, mx8, h, q, s.float(), x, None, None, 32, False, rceil, 8, 1,
                                                 False)
    assert "q must be Byte" in m.act_quant(relu2, mx4, h, q, s, x, None, None, 32, False, rceil, 8, 1, False)
    assert "MX block size is 32" in m.act_quant(ident, mx8, h, q, s, x, None, None, 64, False, rceil, 8, 1, False)
    assert "multiple of 8" in m.act_quant(ident, pt, h, q[:, :12].contiguous(), s.float()[:, :1],
                                          x[:, :12].contiguous(), None, None, 0, False, False, 1, 1, False)
    assert "dtype must be bfloat16" in m.act_quant(ident, mx8, h, q, s, x.double(), None, None, 32, False, rceil, 8,
                                                   1, False)
    assert "activation code" in m.act_quant(len(catalog.CUDA_ACTIVATIONS), mx8, h, q, s, x, None, None, 32, False,
                                            rceil, 8, 1, False)
    assert "not gated" in m.act_quant(relu2, mx8, codes["layout_interleaved"], q, s, x, None, None, 32, False, rceil,
                                      8, 1, False)
    assert m.act_quant(ident, mx8, h, q, s, x, None, None, 32, False, rceil, 8, 1, False) == ""
    # one past the largest code (not every combination of fields is a valid Recipe)
    n_codes = math.prod(len(kind) for _, kind in catalog.MX_CODE_FIELDS)
    assert "MX recipe code must be in" in m.act_quant(ident, mx8, h, q, s, x, None, None, 32, False, n_codes, 8, 1,
                                                      False)
    with pytest.raises(RuntimeError, match="scales must be uint8"):
        cuda_backend.run(p, (q, s.float()), x, None, None)
    torch.cuda.synchronize()


def test_unsupported_reasons(mod):
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    assert mod.supports(kc.make("relu2_mxfp4_quant", x)) is None
    assert mod.supports(kc.make("relu2_per_block_quant", x, 128)) is None
    assert mod.supports(kc.make("relu2", x.cpu())) is not None
    # without the clamp: the CUDA kernels cast with SATFINITE, torch's own cast only where it
    # saturates too (torch >= 2.12); Triton casts as torch's cast does, on every torch
    unclamped = mod.supports(kc.make("per_token_quant_fp8", x, recipe="clamp=False"))
    if mod is cuda_backend and not catalog.E4M3_CAST_SATURATES:
        assert "torch < 2.12" in unclamped
    else:
        assert unclamped is None


def test_ops_route_to_cuda_by_default():
    """Without QUANTFUSE_BACKEND the oracle runs every new op on the CUDA kernels."""
    import quantfuse.custom_ops.ops  # noqa: F401  (registers torch.ops.quantfuse)
    from quantfuse.custom_ops import oracle

    x = make_input((33,), 2048, torch.bfloat16, specials=True)
    for op, args in (("relu2_mxfp4_quant", ("rceil",)), ("relu2_per_token_quant_fp8", ()),
                     ("relu2_per_block_quant", (128,))):
        before = oracle.call_counts()[(op, "cuda")]
        getattr(torch.ops.quantfuse, op)(x, *args)
        assert oracle.call_counts()[(op, "cuda")] == before + 1, op


def test_ops_route_to_triton_schemes(monkeypatch):
    """Through the custom ops with QUANTFUSE_BACKEND=triton: the oracle picks this module."""
    import quantfuse.custom_ops.ops  # noqa: F401  (registers torch.ops.quantfuse)
    from quantfuse.custom_ops import oracle

    monkeypatch.setenv("QUANTFUSE_BACKEND", "triton")
    x = make_input((33,), 2048, torch.bfloat16, specials=True)
    before = oracle.call_counts()[("relu2_mxfp4_quant", "triton")]
    q, s = torch.ops.quantfuse.relu2_mxfp4_quant(x, "floor")
    assert oracle.call_counts()[("relu2_mxfp4_quant", "triton")] == before + 1
    rq, rs = ref.mxfp4_quant(ref.relu2(x), "floor")
    assert_same("op relu2_mxfp4_quant q", q, rq)
    assert_same("op relu2_mxfp4_quant s", s, rs)
    # unfused pair through the ops (silu from whichever triton module runs it) == fused
    xs = make_input((33,), 2 * 2048, torch.bfloat16, specials=True)
    fq, fs = torch.ops.quantfuse.silu_and_mul_mxfp8_quant(xs, "rceil")
    uq, us = torch.ops.quantfuse.mxfp8_quant(torch.ops.quantfuse.silu_and_mul(xs), "rceil")
    assert_same("op fused==unfused q", fq, uq)
    assert_same("op fused==unfused s", fs, us)


@pytest.mark.parametrize("mod", [cuda_backend, ts], ids=["cuda", "triton"])
@pytest.mark.parametrize("name", ["mxfp8_quant", "mxfp4_quant", "silu_and_mul_mxfp8_quant", "silu_and_mul_mxfp4_quant",
                                  "mxfp8_experts_quant", "silu_and_mul_mxfp4_experts_quant"])
def test_device_factor_equals_reference(mod, name):
    """The MX recipes of a device value (catalog Recipe.device_factor): ``mx_byte0`` exp2 / pow,
    blocks whose exponent clamps to -127 multiplied by RN(1 / d), and ``mx_inf`` exp2, inf blocks
    multiplied by d, d CUDA's own exp2(-127.) / pow(2., -127.), as the reference computes it with
    torch on this GPU; every other block as the default recipe. The experts ops with the 14 tokens
    over 3 experts (5, 0, 9)."""
    entry = catalog.OPS[name]
    width = 256 * (2 if entry.activation.gated else 1)
    x = make_input((14,), width, torch.bfloat16, specials=True)
    # bf16 subnormal blocks (amax 2^-129 and a spread below it) clamp the exponent to -127; ties of
    # E2M1 (0.25 * 2^-127) and E4M3 steps show a divisor that is not the device's first
    x[8, :32] = 2.0 ** -129
    x[9, :32] = torch.arange(1, 33, device="cuda") * 2.0 ** -133
    x[10, :32] = -(2.0 ** -129)
    # inf blocks beside finite values of bf16's top binade: where d and 2^-127 code differently
    top = torch.arange(0x7F00, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float().cuda()
    vals = torch.stack((top, -top.flip(0)))
    vals[:, ::32] = float("inf")
    if entry.activation.gated:
        x[8:11, 256:288] = 1.0  # up: silu(g) * 1 keeps the tiny gate values' scale
        x[11:13, :128] = 16.0  # and silu(16) * up the top values (silu(16) is 16 in bf16)
        x[11:13, 256:384] = vals / 16
    else:
        x[11:13, :128] = vals
    x = x.to(torch.bfloat16)
    base = entry.recipe("rceil")
    recipes = [dataclasses.replace(base, mx_byte0=b) for b in catalog.MX_DEVICE_BYTE0]
    recipes += [dataclasses.replace(base, mx_inf=i) for i in catalog.MX_DEVICE_INF]
    params, extra = ("rceil",), {}
    if entry.experts:
        from test_experts_ops import offsets

        params, extra = (3, 8, "rceil"), {"scale": offsets([5, 0, 9], device="cuda")}
    for r in recipes:
        spec = r.spec(base)
        got = kc.call(mod, name, x, *params, recipe=spec, **extra)
        for g, w in zip(got, kc.reference(name, x, *params, recipe=spec, **extra), strict=True):
            assert_same(f"{mod.NAME} {name} {spec}", g, w)
