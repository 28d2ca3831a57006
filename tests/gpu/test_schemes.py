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

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from quantfuse.custom_ops import cuda_backend, kernel_inputs  # noqa: E402
from quantfuse.custom_ops import reference as ref  # noqa: E402
from quantfuse.custom_ops import triton_schemes as ts  # noqa: E402

FP8 = torch.float8_e4m3fn
HIDDEN = [256, 2048, 7168]
TOKENS = {torch.bfloat16: [1, 7, 33, 4097], torch.float16: [1, 33], torch.float32: [7, 33]}
PARAMS = {"fp8_per_token": [()],
          "fp8_per_group": [(128, False, False), (64, True, True), (128, True, False), (64, False, True)],
          "mxfp8": [("floor",), ("rceil",), ("rceil", True)],
          "mxfp4": [("floor",), ("rceil",), ("floor", True)]}
REF_ACT = {"": lambda x: x, "silu_and_mul": ref.silu_and_mul, "relu2": ref.relu2}
REF_SCHEME = {"fp8_per_token": lambda y: ref.per_token_quant_fp8(y),
              "fp8_per_group": lambda y, gs, cm, ue: ref.per_token_group_quant_fp8(y, gs, cm, ue),
              "mxfp8": lambda y, r, sw=False: ref.mxfp8_quant(y, r, sw),
              "mxfp4": lambda y, r, sw=False: ref.mxfp4_quant(y, r, sw)}
QUANT_OPS = [op for op, (act, key) in kernel_inputs.OP_TABLE.items() if key != "none"]
UNFUSED = {key: unfused for key, (unfused, _, _) in kernel_inputs.SCHEME_CODES.items()}


@pytest.fixture(scope="module", autouse=True)
def _available():
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "GPU tests must not run under the interpreter"
    assert ts.is_available(), ts._failed
    assert cuda_backend.is_available(), cuda_backend.unavailable_reason()


@pytest.fixture(params=["triton", "cuda"])
def mod(request):
    """The kernel family under test (both expose every OP_TABLE op, outputs first)."""
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


def run_act(fn, x, h):
    out = torch.full((*x.shape[:-1], h), float("nan"), dtype=x.dtype, device=x.device)
    fn(out, x)
    return out


def run_quant(fn, x, h, key, *params):
    lead = tuple(x.shape[:-1])
    poison = lambda shape: torch.full(shape, 0xAB, dtype=torch.uint8, device=x.device)  # noqa: E731
    if key == "fp8_per_token":
        q, s = poison((*lead, h)).view(FP8), torch.full((*lead, 1), float("nan"), device=x.device)
        fn(q, s, x)
    elif key == "fp8_per_group":
        gs, cm, ue = params
        q = poison((*lead, h)).view(FP8)
        s = ref._alloc_scales(lead, h // gs, x.device, cm).fill_(float("nan"))
        fn(q, s, x, gs, ue)
    else:
        q = poison((*lead, h)).view(FP8) if key == "mxfp8" else poison((*lead, h // 2))
        # swizzled (params = (rounding, True)): the padded tiled layout, padding poisoned too
        swizzled = params[1:] == (True,)
        s = poison(kernel_inputs.swizzled_scale_shape(x.numel() // x.shape[-1], h // 32) if swizzled
                   else (*lead, h // 32))
        fn(q, s, x, *params)
    return q, s


def check_op(mod, op, x, h):
    act, key = kernel_inputs.OP_TABLE[op]
    y_ref = REF_ACT[act](x)
    for params in PARAMS[key]:
        tag = f"{op}{params} {x.dtype} {tuple(x.shape)}"
        q, s = run_quant(getattr(mod, op), x, h, key, *params)
        rq, rs = REF_SCHEME[key](y_ref, *params)
        assert_same(tag + " q", q, rq)
        assert_same(tag + " s", s, rs)
        if act:  # fused == unfused, both this module's kernels
            y = run_act(getattr(mod, act), x, h)
            uq, us = run_quant(getattr(mod, UNFUSED[key]), y, h, key, *params)
            assert_same(tag + " fused==unfused q", q, uq)
            assert_same(tag + " fused==unfused s", s, us)


def _cases():
    for dtype, tokens in TOKENS.items():
        for t in tokens:
            for h in HIDDEN:
                yield pytest.param(dtype, t, h, id=f"{str(dtype)[6:]}-T{t}-H{h}")


@pytest.mark.parametrize("dtype,tokens,hidden", list(_cases()))
def test_every_op_vs_reference(mod, dtype, tokens, hidden):
    torch.manual_seed(tokens * 7919 + hidden)
    for act in ("relu2", "silu_and_mul"):
        in_h = 2 * hidden if act == "silu_and_mul" else hidden
        x = make_input((tokens,), in_h, dtype, specials=tokens >= 7)
        assert_same(f"{act} {dtype} {tuple(x.shape)}", run_act(getattr(mod, act), x, hidden), REF_ACT[act](x))
    for op in QUANT_OPS:
        act, _ = kernel_inputs.OP_TABLE[op]
        in_h = 2 * hidden if act == "silu_and_mul" else hidden
        check_op(mod, op, make_input((tokens,), in_h, dtype, specials=tokens >= 7), hidden)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_swizzled_scales_with_padding(mod, dtype):
    """MX scales in the 128x4 tiled layout written by the kernels: padded columns (G = 5, 3,
    1), several row blocks (T = 130, 301) and 3-D input, padding bytes zero, against
    reference.swizzle_128x4 of the reference scales; the ops route there too."""
    for lead, h in (((5,), 160), ((130,), 96), ((301,), 32), ((3, 50), 224)):
        for op in QUANT_OPS:
            act, key = kernel_inputs.OP_TABLE[op]
            if key not in ("mxfp8", "mxfp4"):
                continue
            x = make_input(lead, 2 * h if act == "silu_and_mul" else h, dtype, specials=True)
            y_ref = REF_ACT[act](x)
            for params in (("rceil", True), ("floor", True)):
                q, s = run_quant(getattr(mod, op), x, h, key, *params)
                rq, rs = REF_SCHEME[key](y_ref, *params)
                assert_same(f"{op}{params} {tuple(x.shape)} q", q, rq)
                assert_same(f"{op}{params} {tuple(x.shape)} s", s, rs)
    import quantfuse.custom_ops.ops  # noqa: F401  (registers torch.ops.quantfuse)

    x = make_input((130,), 2 * 96, dtype, specials=True)
    q, s = torch.ops.quantfuse.silu_and_mul_mxfp4_quant(x, "rceil", True)
    rq, rs = ref.mxfp4_quant(ref.silu_and_mul(x), "rceil", True)
    assert_same("op silu_and_mul_mxfp4_quant swizzled q", q, rq)
    assert_same("op silu_and_mul_mxfp4_quant swizzled s", s, rs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_long_rows_and_3d_input(mod, dtype):
    """Per-token rows of every register layout (CUDA: 1, 2, 4, 8 vectors per thread and
    the two-pass path past 2048 vectors; Triton: the chunked path) and a 3-d input."""
    for op in ("per_token_quant_fp8", "relu2_per_token_quant_fp8", "silu_and_mul_per_token_quant_fp8"):
        act, _ = kernel_inputs.OP_TABLE[op]
        for h in (4096, 14336, 18432):
            check_op(mod, op, make_input((5,), 2 * h if act == "silu_and_mul" else h, dtype, specials=True), h)
    for op in ("relu2_mxfp4_quant", "relu2_per_block_quant", "silu_and_mul_mxfp8_quant"):
        act, _ = kernel_inputs.OP_TABLE[op]
        check_op(mod, op, make_input((2, 9), 2 * 512 if act == "silu_and_mul" else 512, dtype, specials=True), 512)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_vector_variants_agree(dtype):
    """Every vectors-per-thread instantiation of the CUDA group kernel (1, 2, 4) and grid
    shape gives the reference's bits, for every per-group scheme and activation, MX scales
    in both layouts."""
    m = cuda_backend._mod()
    tokens, hidden = 301, 1024
    for op in QUANT_OPS:
        act, key = kernel_inputs.OP_TABLE[op]
        if key == "fp8_per_token":
            continue
        x = make_input((tokens,), 2 * hidden if act == "silu_and_mul" else hidden, dtype, specials=True)
        for params in PARAMS[key]:
            rq, rs = REF_SCHEME[key](REF_ACT[act](x), *params)
            gs = params[0] if key == "fp8_per_group" else 32
            flag = params[2] if key == "fp8_per_group" else params[0] == "rceil"
            for vectors, bps in ((1, 0), (2, 0), (4, 0), (1, 1), (2, -1)):
                def launch(q, s, x, *_, vectors=vectors, bps=bps):
                    # MX params (rounding, True): scales in the padded tiled layout, no strides
                    swizzled = key != "fp8_per_group" and params[1:] == (True,)
                    st, sg = (0, 0) if swizzled else cuda_backend._scale_strides(s, tokens, hidden // gs)
                    assert m.act_quant(kernel_inputs.ACT_CODES[act], kernel_inputs.SCHEME_CODES[key][2], q, s,
                                       x, gs, flag, st, sg, vectors, bps, swizzled) == ""
                q, s = run_quant(launch, x, hidden, key, *params)
                assert_same(f"{op}{params} vectors={vectors} bps={bps} q", q, rq)
                assert_same(f"{op}{params} vectors={vectors} bps={bps} s", s, rs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_token_variants_agree(dtype):
    """Every vectors-per-thread instantiation of the CUDA per-token kernel and block size
    (512 threads, or about 512 / k with the blocks_per_sm knob k) gives the reference's
    bits: rows of one warp (no barrier) and of several warps (shared-memory reduction)."""
    m = cuda_backend._mod()
    tokens = 301
    for op in ("per_token_quant_fp8", "relu2_per_token_quant_fp8", "silu_and_mul_per_token_quant_fp8"):
        act, key = kernel_inputs.OP_TABLE[op]
        for hidden in (1024, 4096):
            x = make_input((tokens,), 2 * hidden if act == "silu_and_mul" else hidden, dtype, specials=True)
            rq, rs = REF_SCHEME[key](REF_ACT[act](x))
            for vectors, bps in ((0, 0), (1, 0), (4, 2), (4, 4), (2, 2), (2, 4)):
                def launch(q, s, x, *_, vectors=vectors, bps=bps):
                    assert m.act_quant(kernel_inputs.ACT_CODES[act], kernel_inputs.SCHEME_CODES[key][2], q, s,
                                       x, hidden, False, 1, 1, vectors, bps) == ""
                q, s = run_quant(launch, x, hidden, key)
                assert_same(f"{op} H={hidden} vectors={vectors} bps={bps} q", q, rq)
                assert_same(f"{op} H={hidden} vectors={vectors} bps={bps} s", s, rs)


@pytest.mark.parametrize("pdl", ["1", "0"])
def test_cuda_back_to_back_kernels_wait(monkeypatch, pdl):
    """Programmatic dependent launch (QUANTFUSE_PDL=1, opt-in, sm_90+) keeps stream
    order: a chain of this family's kernels, each reading what the one before wrote (act ->
    quant on one buffer) or overwriting what the one before read (quant -> next act), gives
    the reference's bits, eagerly and replayed from a CUDA graph. A kernel that skipped its
    wait would read the previous input's activation (the inputs differ)."""
    monkeypatch.setenv("QUANTFUSE_PDL", pdl)
    tokens, hidden, n = 4096, 4096, 3
    xs = [make_input((tokens,), 2 * hidden, torch.bfloat16) for _ in range(n)]
    refs = [ref.mxfp4_quant(ref.silu_and_mul(x), "rceil") for x in xs]
    y = torch.empty(tokens, hidden, dtype=torch.bfloat16, device="cuda")

    def fresh():
        return [run_quant(lambda q, s, *_: None, y, hidden, "mxfp4", "rceil") for _ in range(n + 1)]

    def chain(outs):
        for x, (q, s) in zip(xs, outs):
            cuda_backend.silu_and_mul(y, x)
            cuda_backend.mxfp4_quant(q, s, y, "rceil")
        cuda_backend.silu_and_mul_mxfp4_quant(*outs[n], xs[0], "rceil")  # fused, right after a quant

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
            q.view(torch.uint8).fill_(0xAB)
            s.view(torch.uint8).fill_(0xAB)
        y.fill_(float("nan"))
        graph.replay()
        check(outs, "graph")


def test_cuda_bad_inputs_raise():
    """The CUDA family refuses what it cannot run with a message naming the problem,
    both in the Python wrapper (RuntimeError) and in the extension's own checks (the
    returned message)."""
    x = make_input((4,), 256, torch.bfloat16)
    q, s = torch.empty(4, 256, device="cuda", dtype=FP8), torch.empty(4, 8, device="cuda", dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="not divisible by the MX block"):
        cuda_backend.mxfp8_quant(q[:, :48], s[:, :1], x[:, :48].contiguous())
    with pytest.raises(RuntimeError, match="scale_rounding"):
        cuda_backend.mxfp8_quant(q, s, x, "up")
    m = cuda_backend._mod()  # the extension returns its message instead of throwing
    assert "scales must be uint8" in m.act_quant(2, 3, q, s.float(), x, 32, True, 8, 1)
    assert "q must be Byte" in m.act_quant(2, 4, q, s, x, 32, True, 8, 1)
    assert "MX block size is 32" in m.act_quant(0, 3, q, s, x, 64, True, 8, 1)
    assert "multiple of 8" in m.act_quant(0, 1, q[:, :12].contiguous(), s.float()[:, :1],
                                          x[:, :12].contiguous(), 0, False, 1, 1)
    assert "dtype must be bfloat16" in m.act_quant(0, 3, q, s, x.double(), 32, True, 8, 1)
    assert "activation code" in m.act_quant(5, 3, q, s, x, 32, True, 8, 1)
    assert m.act_quant(0, 3, q, s, x, 32, True, 8, 1) == ""
    torch.cuda.synchronize()


def test_soft_cast_path_matches_hardware():
    """The integer-bit bf16 rounding / e4m3 encoding the interpreter uses, on the GPU."""
    ts._SOFT_CASTS = True
    try:
        for op in ("relu2_mxfp8_quant", "silu_and_mul_per_token_quant_fp8", "relu2_per_block_quant"):
            act, _ = ts._TABLE[op]
            check_op(ts, op, make_input((33,), 2 * 2048 if act == "silu_and_mul" else 2048, torch.bfloat16,
                                    specials=True), 2048)
    finally:
        ts._SOFT_CASTS = None


def test_unsupported_reasons():
    x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
    assert ts.unsupported_reason("relu2_mxfp4_quant", x, 32) is None
    assert ts.unsupported_reason("relu2_per_block_quant", x, 128) is None
    assert ts.unsupported_reason("relu2_per_block_quant", x, 32) is not None
    assert ts.unsupported_reason("silu_and_mul_per_block_quant", x, 128) is not None  # triton_backend's
    assert ts.unsupported_reason("mxfp8_quant", x[:, :48].contiguous(), 32) is not None
    assert ts.unsupported_reason("relu2", x.t(), None) is not None
    assert ts.unsupported_reason("relu2", x.cpu(), None) is not None
    assert ts.unsupported_reason("relu2", x.to(torch.float64), None) is not None


def test_ops_route_to_cuda_by_default():
    """Without QUANTFUSE_BACKEND the oracle runs every new op on the CUDA kernels."""
    import quantfuse.custom_ops.ops  # noqa: F401  (registers torch.ops.quantfuse)
    from quantfuse.custom_ops import oracle

    x = make_input((33,), 2048, torch.bfloat16, specials=True)
    for op, args in (("relu2_mxfp4_quant", ("rceil",)), ("relu2_per_token_quant_fp8", ()),
                     ("relu2_per_block_quant", (128,))):
        before = oracle.calls[(op, "cuda")]
        getattr(torch.ops.quantfuse, op)(x, *args)
        assert oracle.calls[(op, "cuda")] == before + 1, op


def test_ops_route_to_triton_schemes(monkeypatch):
    """Through the custom ops with QUANTFUSE_BACKEND=triton: the oracle picks this module."""
    import quantfuse.custom_ops.ops  # noqa: F401  (registers torch.ops.quantfuse)
    from quantfuse.custom_ops import oracle

    monkeypatch.setenv("QUANTFUSE_BACKEND", "triton")
    x = make_input((33,), 2048, torch.bfloat16, specials=True)
    before = oracle.calls[("relu2_mxfp4_quant", "triton")]
    q, s = torch.ops.quantfuse.relu2_mxfp4_quant(x, "floor")
    assert oracle.calls[("relu2_mxfp4_quant", "triton")] == before + 1
    rq, rs = ref.mxfp4_quant(ref.relu2(x), "floor")
    assert_same("op relu2_mxfp4_quant q", q, rq)
    assert_same("op relu2_mxfp4_quant s", s, rs)
    # unfused pair through the ops (silu from whichever triton module runs it) == fused
    xs = make_input((33,), 2 * 2048, torch.bfloat16, specials=True)
    fq, fs = torch.ops.quantfuse.silu_and_mul_mxfp8_quant(xs, "rceil")
    uq, us = torch.ops.quantfuse.mxfp8_quant(torch.ops.quantfuse.silu_and_mul(xs), "rceil")
    assert_same("op fused==unfused q", fq, uq)
    assert_same("op fused==unfused s", fs, us)
