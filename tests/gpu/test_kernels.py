"""GPU tests of the cuda and triton kernels against the torch reference (same GPU).

Contract (docs/numerics.md): fused == unfused pair bit for bit on one backend;
against the reference, scales identical and q identical except at most one e4m3
step at rounding boundaries. Outputs are poisoned before every call so unwritten
elements show up. Skipped cleanly without CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import kernel_calls as kc  # noqa: E402

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend, reference  # noqa: E402
from quantfuse.custom_ops import triton_schemes  # noqa: E402

BACKENDS = {"cuda": cuda_backend, "triton": triton_schemes}
DTYPES = list(catalog.INPUT_DTYPES)
FUSED = catalog.fused_op_name("silu_and_mul", "fp8_per_group")
UNFUSED = catalog.FP8_PER_GROUP.unfused_name
FP8 = torch.float8_e4m3fn
NAN_BYTE = 0x7F  # e4m3fn NaN: poison for q
SHAPES = [(1, 256), (7, 2048), (33, 7168), (4097, 1024), (5, 18432)]


@pytest.fixture(params=list(BACKENDS), scope="module")
def backend(request):
    mod = BACKENDS[request.param]
    # On a GPU machine an unavailable backend is a failure (build broke), not a skip.
    assert mod.is_available(), getattr(mod, "unavailable_reason", lambda: None)() or getattr(mod, "_failed", None)
    return mod


def make_input(lead, width, dtype, seed=None):
    """randn with per-row magnitudes over 6 decades and sparse 50x outliers."""
    g = torch.Generator(device="cuda")
    g.manual_seed(torch.randint(0, 2**31, ()).item() if seed is None else seed)
    x = torch.randn(*lead, width, device="cuda", generator=g)
    rows = torch.empty(*lead, 1, device="cuda").uniform_(-3, 3, generator=g)
    x = x * torch.pow(10.0, rows)
    outl = torch.rand(*lead, width, device="cuda", generator=g) < 1e-3
    x = torch.where(outl, x * 50, x)
    if dtype == torch.float16:
        # keep silu(g) * u below fp16's max (65504) so outputs stay finite
        x = x.clamp(-200, 200)
    return x.to(dtype).contiguous()


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor, what: str):
    if a.dtype == FP8:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
        ne = a != b
    else:
        ne = (a != b) & ~(torch.isnan(a) & torch.isnan(b))
    n = int(ne.sum())
    assert n == 0, f"{what}: {n} of {a.numel()} elements differ"


def e4m3_steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in e4m3 steps (codes are monotonic in magnitude within a sign)."""
    ai, bi = a.view(torch.uint8).int(), b.view(torch.uint8).int()
    # Signed ordinal: magnitude code, negated for negative values (+0 and -0 both 0).
    ao = torch.where(ai >= 128, -(ai - 128), ai)
    bo = torch.where(bi >= 128, -(bi - 128), bi)
    return (ao - bo).abs()


def assert_q_close(q: torch.Tensor, ref: torch.Tensor, what: str):
    qf, rf = q.float(), ref.float()
    assert torch.equal(torch.isnan(qf), torch.isnan(rf)), f"{what}: NaN positions differ"
    ne = (qf != rf) & ~torch.isnan(rf)
    n = int(ne.sum())
    if n:
        steps = e4m3_steps(q[ne], ref[ne])
        assert int(steps.max()) <= 1, f"{what}: {n} differ, max {int(steps.max())} e4m3 steps"
        assert n <= 2 + q.numel() * 1e-4, f"{what}: {n} of {q.numel()} differ by one step"


def assert_scales_equal(s: torch.Tensor, ref: torch.Tensor, what: str):
    torch.testing.assert_close(s, ref, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def silu_eager(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Eager F.silu(gate) * up in the input dtype (catalog.ActRounding.SILU_THEN_MUL):
    silu rounded to the dtype, then the product, both by torch's own CUDA kernels."""
    return torch.nn.functional.silu(gate) * up


def run_fused(mod, x, group, ue8m0, column_major, **layout):
    return kc.call(mod, FUSED, x, group, column_major, ue8m0, **layout)


def run_unfused(mod, x, group, ue8m0, column_major, **layout):
    (y,) = kc.call(mod, "silu_and_mul", x, **layout)
    q, s = kc.call(mod, UNFUSED, y, group, column_major, ue8m0)
    return y, q, s


@pytest.mark.parametrize("column_major", [False, True], ids=["row", "col"])
@pytest.mark.parametrize("ue8m0", [False, True], ids=["fp32s", "ue8m0"])
@pytest.mark.parametrize("group", catalog.FP8_GROUP_SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_fused_unfused_reference(backend, dtype, group, ue8m0, column_major):
    for tokens, hidden in SHAPES:
        x = make_input((tokens,), 2 * hidden, dtype)
        tag = f"{backend.NAME} {dtype} T={tokens} H={hidden}"
        qf, sf = run_fused(backend, x, group, ue8m0, column_major)
        y, qu, su = run_unfused(backend, x, group, ue8m0, column_major)
        # every output element written (inputs are finite, so nothing may stay NaN)
        assert not torch.isnan(y).any(), f"{tag}: silu_and_mul left elements unwritten"
        assert not torch.isnan(qf.float()).any(), f"{tag}: fused q not fully written"
        assert not torch.isnan(sf).any(), f"{tag}: fused s not fully written"
        assert not torch.isnan(su).any(), f"{tag}: unfused s not fully written"
        # fused == unfused, bit for bit
        assert_bits_equal(qf, qu, f"{tag} fused vs unfused q")
        assert_bits_equal(sf, su, f"{tag} fused vs unfused s")
        # each kernel vs the torch reference on the same GPU tensors
        torch.testing.assert_close(y, reference.silu_and_mul(x), rtol=0, atol=0)
        qr, sr = kc.reference(UNFUSED, y, group, column_major, ue8m0)
        assert_scales_equal(su, sr, f"{tag} quant scales")
        assert_q_close(qu, qr, f"{tag} quant q")
        qr2, sr2 = kc.reference(FUSED, x, group, column_major, ue8m0)
        assert_scales_equal(sf, sr2, f"{tag} fused scales")
        assert_q_close(qf, qr2, f"{tag} fused q")
        assert sf.stride() == sr2.stride()


@pytest.mark.parametrize("layout", list(catalog.Layout), ids=lambda lay: lay.value)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_layouts_fused_unfused_reference(backend, dtype, layout):
    """Every gated input layout (catalog.Layout): the fused and unfused ops read gate and
    up in place and give the halves layout's bits for the same operands."""
    for tokens, hidden in ((7, 2048), (33, 7168)):
        gate, up = make_input((tokens,), hidden, dtype), make_input((tokens,), hidden, dtype)
        halves = torch.cat([gate, up], dim=-1)
        if layout is catalog.Layout.HALVES:
            x, kw = halves, {}
        elif layout is catalog.Layout.SEPARATE:
            x, kw = gate, {"up": up}
        else:
            x, kw = torch.stack([gate, up], dim=-1).flatten(-2), {"interleaved": True}
        tag = f"{backend.NAME} {dtype} {layout.value} T={tokens} H={hidden}"
        qf, sf = run_fused(backend, x, 128, False, False, **kw)
        y, qu, su = run_unfused(backend, x, 128, False, False, **kw)
        qh, sh = run_fused(backend, halves, 128, False, False)
        assert_bits_equal(y, reference.silu_and_mul(halves), f"{tag} activation")
        assert_bits_equal(qf, qu, f"{tag} fused vs unfused q")
        assert_bits_equal(sf, su, f"{tag} fused vs unfused s")
        assert_bits_equal(qf, qh, f"{tag} vs halves q")
        assert_bits_equal(sf, sh, f"{tag} vs halves s")
        qr, sr = kc.reference(FUSED, x, 128, **kw)
        assert_scales_equal(sf, sr, f"{tag} scales")
        assert_q_close(qf, qr, f"{tag} q")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_silu_and_mul_matches_eager(backend, dtype):
    """Bit-equal to eager F.silu(gate) * up in the input dtype (two roundings for 16-bit
    inputs: catalog.ActRounding.SILU_THEN_MUL), including the scalar path (d not a
    multiple of the vector)."""
    x = make_input((513,), 2 * 3000, dtype)
    d = x.shape[-1] // 2
    (out,) = kc.call(backend, "silu_and_mul", x)
    torch.testing.assert_close(out, silu_eager(x[:, :d], x[:, d:]), rtol=0, atol=0)
    torch.testing.assert_close(out, reference.silu_and_mul(x), rtol=0, atol=0)
    if dtype != torch.float32:  # the rounding of silu(g) is what differs from one rounding
        once = (torch.nn.functional.silu(x[:, :d].float()) * x[:, d:].float()).to(dtype)
        assert not torch.equal(out, once), "16-bit silu_and_mul must round silu(g) before the multiply"


@pytest.mark.parametrize("column_major", [False, True], ids=["row", "col"])
def test_leading_dims(backend, column_major):
    x = make_input((3, 5), 2 * 1024, torch.bfloat16)
    qf, sf = run_fused(backend, x, 128, True, column_major)
    qr, sr = kc.reference(FUSED, x, 128, column_major, True)
    assert qf.shape == qr.shape and sf.shape == sr.shape == (3, 5, 8)
    assert_scales_equal(sf, sr, "lead dims scales")
    assert_q_close(qf, qr, "lead dims q")


@pytest.mark.parametrize("ue8m0", [False, True], ids=["fp32s", "ue8m0"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_nan_inf_rows(backend, dtype, ue8m0):
    """NaN propagates to the group's scale; inf, zeros and huge rows match the reference."""
    hidden, group = 512, 128
    x = make_input((8,), 2 * hidden, dtype)
    x[0, 5] = float("nan")  # gate NaN -> group 0 of row 0
    x[1, hidden + 300] = float("nan")  # up NaN -> group 2 of row 1
    x[2, 7] = float("inf")
    x[3, 130] = float("-inf")
    x[4] = 0  # amax clamps to 1e-10
    x[5, :hidden] = 1e-30 if dtype == torch.float32 else 1e-6
    if dtype != torch.float16:
        x[6] *= 1e30 if dtype == torch.float32 else 1e20
    for column_major in (False, True):
        qf, sf = run_fused(backend, x, group, ue8m0, column_major)
        _, qu, su = run_unfused(backend, x, group, ue8m0, column_major)
        qr, sr = kc.reference(FUSED, x, group, column_major, ue8m0)
        assert torch.isnan(sf[0, 0]) and torch.isnan(sf[1, 2]), "NaN must reach the scale"
        assert_scales_equal(sf, sr, "special rows scales")
        assert_q_close(qf, qr, "special rows q")
        assert_bits_equal(qf, qu, "special rows fused vs unfused q")
        assert_bits_equal(sf, su, "special rows fused vs unfused s")
        # the unfused quant alone on special values
        xq = x[:, :hidden].contiguous()
        q, s = kc.call(backend, UNFUSED, xq, group, column_major, ue8m0)
        qr, sr = kc.reference(UNFUSED, xq, group, column_major, ue8m0)
        assert_scales_equal(s, sr, "special rows quant scales")
        assert_q_close(q, qr, "special rows quant q")


def test_zero_tokens(backend):
    x = torch.empty(0, 512, dtype=torch.bfloat16, device="cuda")
    run_fused(backend, x, 128, False, True)
    kc.call(backend, UNFUSED, x[:, :256].contiguous(), 128)
    kc.call(backend, "silu_and_mul", x)
    torch.cuda.synchronize()


def test_cuda_extension_refuses_bad_arguments():
    """The extension's own checks return a message naming the problem (never throw)."""
    assert cuda_backend.is_available(), cuda_backend.unavailable_reason()
    m, codes = cuda_backend._mod(), catalog.codes()
    act, halves = codes["act_silu_and_mul"], codes["layout_halves"]
    per_group = codes["scheme_fp8_per_group"]
    x = make_input((4,), 512, torch.bfloat16)
    q = torch.empty(4, 256, dtype=FP8, device="cuda")
    s = torch.empty(4, 2, device="cuda")

    def err(*args, **kw):
        a = dict(act=act, scheme=per_group, layout=halves, q=q, s=s, x=x, up=None, scale=None, group_size=128,
                 ue8m0=0, mx=0, s_stride_t=2, s_stride_g=1, swizzled=False)
        a.update(kw)
        return m.act_quant(**a)

    assert err() == ""
    assert "dtype" in err(x=x.double())
    assert "divisible" in err(x=make_input((4,), 2 * 96, torch.bfloat16), group_size=64)
    assert "contiguous" in err(x=make_input((512,), 8, torch.bfloat16).t())
    assert "CUDA" in err(x=x.cpu())
    assert "group_size" in err(group_size=32)
    assert "layout code" in err(layout=len(catalog.Layout))
    assert "activation code" in err(act=max(v for k, v in codes.items() if k.startswith("act_")) + 1)
    assert "up tensor" in err(layout=codes["layout_separate"])
    assert "scale tensor" in err(scale=torch.ones(1, device="cuda"))
    static = codes["scheme_fp8_static"]
    assert "needs its scale" in err(scheme=static, s=None)
    assert "one float32 element" in err(scheme=static, s=None, scale=torch.ones(2, device="cuda"))
    torch.cuda.synchronize()


def test_cuda_unroll_variants_agree():
    """Every vectors-per-thread instantiation (unroll 1, 2, 4) and grid shape of the CUDA
    kernel computes the same bits, for both scale modes (UE8M0 and fp32 take other paths)."""
    if not cuda_backend.is_available():
        pytest.fail(cuda_backend.unavailable_reason())
    m, codes = cuda_backend._mod(), catalog.codes()
    x = make_input((301,), 2 * 7168, torch.bfloat16)
    outs = []
    # unroll x grid shape (occupancy-persistent, 1 block/SM: many loop trips, no loop)
    for unroll, bps in ((1, 0), (2, 0), (4, 0), (1, 1), (2, 1), (1, -1), (2, -1), (4, -1)):
        for ue8m0 in (False, True):
            p = kc.make(FUSED, x, 128, True, ue8m0)
            q, s = (kc.poison(t) for t in p.empty_outputs(x.device))
            assert m.act_quant(codes["act_silu_and_mul"], codes["scheme_fp8_per_group"], codes["layout_halves"],
                               q, s, x, None, None, 128, ue8m0, False, 1, 301, False, unroll, bps) == ""
            assert not torch.isnan(s).any(), f"unroll {unroll} bps {bps}: scales unwritten"
            outs.append((ue8m0, q, s))
    for ue8m0, q, s in outs[2:]:
        ref = outs[int(ue8m0)]
        assert_bits_equal(q, ref[1], "unroll q")
        assert_bits_equal(s, ref[2], "unroll s")
    qr, sr = kc.reference(FUSED, x, 128, True, False)
    assert_scales_equal(outs[0][2], sr, "unroll vs reference scales")
    assert_q_close(outs[0][1], qr, "unroll vs reference q")


def _all_16bit(dtype):
    """Every bit pattern of a 16-bit float type, as a [64, 1024] tensor on the GPU."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32, device="cuda").to(torch.int16).view(dtype).view(64, 1024)


def _assert_same_bits_nan_ok(out, ref, what):
    """Bit-equal (sign of zero included); NaN positions equal, NaN payloads free."""
    nan_o, nan_r = torch.isnan(out.float()), torch.isnan(ref.float())
    assert torch.equal(nan_o, nan_r), f"{what}: NaN positions differ ({int((nan_o != nan_r).sum())})"
    ib = {2: torch.int16, 4: torch.int32}[out.element_size()]
    ne = (out.view(ib) != ref.view(ib)) & ~nan_r
    assert int(ne.sum()) == 0, f"{what}: {int(ne.sum())} of {out.numel()} differ, e.g. x={out[ne][:4]} ref={ref[ne][:4]}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_silu_exhaustive_16bit(backend, dtype):
    """silu(g) * u for every 16-bit gate value g, u in {1, random}, bit for bit equal
    to eager F.silu(g) * u (torch's CUDA silu, rounded, then the product: the fast
    division path and its guard, and the rounding of silu before the multiply)."""
    g = _all_16bit(dtype)
    for u in (torch.ones_like(g), make_input((64,), 1024, dtype)):
        x = torch.cat([g, u], dim=1).contiguous()
        (out,) = kc.call(backend, "silu_and_mul", x)
        _assert_same_bits_nan_ok(out, silu_eager(g, u), f"{backend.NAME} {dtype} silu_and_mul")
        # the per-token fused op: its own kernel, whose CUDA f16 build takes silu_big_16bit
        # for |g| >= 87 (rows with NaN gates are NaN)
        per_token = catalog.fused_op_name("silu_and_mul", "fp8_per_token")
        q, s = kc.call(backend, per_token, x)
        rq, rs = kc.reference(per_token, x)
        assert_scales_equal(s, rs, f"{backend.NAME} {dtype} exhaustive per-token scales")
        assert_q_close(q, rq, f"{backend.NAME} {dtype} exhaustive per-token q")
        # the fused op's activation on the same inputs (groups containing NaN gates are NaN)
        for group, ue8m0 in ((128, False), (64, True)):
            qf, sf = run_fused(backend, x, group, ue8m0, False)
            qr, sr = kc.reference(FUSED, x, group, False, ue8m0)
            assert_scales_equal(sf, sr, f"{backend.NAME} {dtype} exhaustive fused scales")
            assert_q_close(qf, qr, f"{backend.NAME} {dtype} exhaustive fused q")


def test_silu_bf16_every_pair(backend):
    """silu(g) * u for all 2^32 pairs of bf16 values (g, u), bit for bit equal to eager
    F.silu(g) * u on bf16 (NaN positions equal): the whole bf16 input domain of
    silu_and_mul, where test_silu_exhaustive_16bit takes every gate with two choices of u.
    About 3 s a backend on an H100."""
    g = _all_16bit(torch.bfloat16).view(-1)
    silu_g = torch.nn.functional.silu(g)
    u_all = g.clone()
    rows = 4096
    for start in range(0, u_all.numel(), rows):
        u = u_all[start:start + rows]
        x = torch.cat([g.expand(rows, -1), u[:, None].expand(-1, g.numel())], dim=1).contiguous()
        (out,) = kc.call(backend, "silu_and_mul", x)
        ref = silu_g[None, :] * u[:, None]
        _assert_same_bits_nan_ok(out, ref, f"{backend.NAME} bf16 pairs, u from {start}")


def test_silu_fp32_every_value(backend):
    """silu(g) * 1 for all 2^32 fp32 gate bit patterns, bit for bit equal to torch's CUDA
    F.silu (NaN positions equal): the exhaustive proof that the kernels' shortened silu
    (no Newton step, fma'd 1 + e, the exact path past |g| = 87) keeps torch's values."""
    chunk = 1 << 26
    ones = torch.ones(chunk // 1024, 1024, device="cuda")
    for start in range(0, 1 << 32, chunk):
        bits = torch.arange(start, start + chunk, device="cuda", dtype=torch.int64)
        g = (bits - (bits >= 1 << 31).long() * (1 << 32)).int().view(torch.float32).view(-1, 1024)
        (out,) = kc.call(backend, "silu_and_mul", torch.cat([g, ones], dim=1))
        _assert_same_bits_nan_ok(out, torch.nn.functional.silu(g), f"{backend.NAME} fp32 silu from {start:#x}")


def test_silu_fp32_edges_and_random(backend):
    """fp32 gates: edge values around every branch of the fast silu plus random values
    over the whole exponent range, bit for bit against torch's CUDA F.silu."""
    edges = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1.17e-38, -1.17e-38, 1e-30, -1e-30,
                          1e-8, -1e-8, 0.5, -0.5, 1.0, -1.0, 16.5, 17.0, 17.5, -17.0, 86.99, -86.99,
                          87.0, -87.0, 87.5, -87.5, 88.5, -88.5, 88.72, -88.72, 88.73, -88.73, 89.0,
                          -89.0, 100.0, -100.0, 104.0, -104.0, 1e30, -1e30, 3.4e38, -3.4e38,
                          float("inf"), float("-inf"), float("nan")], device="cuda")
    near = torch.cat([torch.nextafter(edges, torch.full_like(edges, float("inf"))),
                      torch.nextafter(edges, torch.full_like(edges, float("-inf")))])
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    rnd = torch.randn(1 << 20, device="cuda", generator=gen) * torch.pow(
        10.0, torch.empty(1 << 20, device="cuda").uniform_(-40, 38, generator=gen))
    uni = torch.empty(1 << 20, device="cuda").uniform_(-100, 100, generator=gen)
    g = torch.cat([edges, near, rnd, uni])
    g = torch.cat([g, torch.zeros((-g.numel()) % 1024, device="cuda")]).view(-1, 1024)
    u = make_input((g.shape[0],), 1024, torch.float32)
    x = torch.cat([g, u], dim=1).contiguous()
    (out,) = kc.call(backend, "silu_and_mul", x)
    _assert_same_bits_nan_ok(out, torch.nn.functional.silu(g) * u, f"{backend.NAME} fp32 silu_and_mul")
