"""GPT-OSS's clamped SwiGLU on the GPU: the CUDA kernels (``SwigluOai``, csrc/act_quant.cuh)
and the Triton ones against the torch reference and against eager running transformers'
``GptOssExperts._apply_gate`` on CUDA (torch's own clamp, mul, sigmoid kernels), bit for bit:
every finite 16-bit gate value with random ups, every scheme and kernel parameter set, every
layout, several (alpha, limit); and the CUDA sigmoid's fast and rare paths on every 16-bit z. Skipped cleanly without CUDA."""

from __future__ import annotations

import math
import os
import sys
import types

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, os.path.dirname(__file__))

import kernel_calls as kc  # noqa: E402

from quantfuse import catalog  # noqa: E402
from quantfuse.catalog import Layout  # noqa: E402
from quantfuse.custom_ops import cuda_backend, ops  # noqa: E402
from quantfuse.custom_ops import plan as plans  # noqa: E402
from quantfuse.custom_ops import triton_schemes  # noqa: E402

ACT = catalog.SWIGLUOAI_AND_MUL
BACKENDS = {"cuda": cuda_backend, "triton": triton_schemes}
PARAMS = [tuple(ACT.defaults.values()), (1.3, 7.1), (2.0, 0.5)]
#: op parameter sets: every kernel value of each scheme parameter
SCHEME_PARAMS = {"fp8_per_token": [()], "fp8_static": [()], "fp8_per_tensor": [()],
                 "fp8_per_group": [(128, False, False), (64, True, True)],
                 "mxfp8": [("floor",), ("rceil", True)], "mxfp4": [("rceil",), ("floor", True)]}
assert set(SCHEME_PARAMS) == set(catalog.SCHEMES)


@pytest.fixture(params=list(BACKENDS), scope="module")
def backend(request):
    mod = BACKENDS[request.param]
    assert mod.is_available(), getattr(mod, "unavailable_reason", lambda: None)() or getattr(mod, "_failed", None)
    return mod


def _eager(gate, up, alpha, limit):
    """transformers' own GptOssExperts._apply_gate on the interleaved gate_up (eager CUDA ops)."""
    m = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    x = torch.stack([gate, up], -1).flatten(-2)
    return m.GptOssExperts._apply_gate(types.SimpleNamespace(alpha=alpha, limit=limit), x)


def _inputs(dtype, layout, gate, up):
    if layout is Layout.SEPARATE:
        return gate.contiguous(), {"up": up.contiguous()}
    if layout is Layout.INTERLEAVED:
        return torch.stack([gate, up], -1).flatten(-2).contiguous(), {"interleaved": True}
    return torch.cat([gate, up], -1).contiguous(), {}


def _call(mod, name, x, *params, alpha, limit, up=None, interleaved=False, scale=None, reference=False):
    p = plans.make_plan(catalog.OPS[name], x, params, up=up, interleaved=interleaved, scale=scale,
                        act_params={"alpha": alpha, "limit": limit})
    if reference:
        out = ops.run_reference(p, x, up, interleaved, scale)
        return out if isinstance(out, tuple) else (out,)
    why = mod.supports(p)
    assert why is None, f"{mod.NAME} does not run {name}: {why}"
    outs = tuple(kc.poison(t) for t in p.empty_outputs(x.device))
    mod.run(p, outs, x, up, scale)
    return outs


def _same(a, b, what):
    """Bit-equal; NaN by position (FP8 NaN codes sign-blind)."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    if a.dtype == kc.FP8:
        a, b = a.view(torch.uint8).clone(), b.view(torch.uint8).clone()
        a[(a & 0x7F) == 0x7F] = 0x7F
        b[(b & 0x7F) == 0x7F] = 0x7F
    if a.is_floating_point():
        na, nb = torch.isnan(a), torch.isnan(b)
        ib = {2: torch.int16, 4: torch.int32}[a.element_size()]
        assert torch.equal(na, nb), f"{what}: NaN positions differ"
        bad = a.masked_fill(na, 0).view(ib) != b.masked_fill(nb, 0).view(ib)
    else:
        bad = a != b
    assert int(bad.sum()) == 0, f"{what}: {int(bad.sum())} of {a.numel()} differ"


def _every_gate(dtype):
    """Every 16-bit gate bit pattern (NaN and inf included) as [64, 1024]; fp32: random gates over
    the exponent range plus the edges; with random ups (beyond +-limit too) and edge ups."""
    if dtype == torch.float32:
        g = torch.randn(1 << 16, device="cuda") * torch.pow(10.0, torch.empty(1 << 16, device="cuda").uniform_(-6, 6))
    else:
        g = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32, device="cuda").to(torch.int16).view(dtype).float()
    edges = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 7.0, -7.0, 7.03125, 7.1, -7.1,
                          0.5, -0.5, 100.0, -100.0], device="cuda")
    g[:edges.numel()] = edges
    u = torch.randn_like(g) * 8
    u[edges.numel():2 * edges.numel()] = edges
    return g.to(dtype).view(64, -1), u.to(dtype).view(64, -1)


@pytest.mark.parametrize("alpha,limit", PARAMS)
@pytest.mark.parametrize("dtype", catalog.INPUT_DTYPES, ids=lambda d: str(d)[6:])
def test_activation_every_gate_vs_eager_transformers(backend, dtype, alpha, limit):
    g, u = _every_gate(dtype)
    want = _eager(g, u, alpha, limit)
    for layout in Layout:
        x, kw = _inputs(dtype, layout, g, u)
        (got,) = _call(backend, ACT.name, x, alpha=alpha, limit=limit, **kw)
        _same(got, want, f"{backend.NAME} {dtype} {layout.value} alpha={alpha} limit={limit} vs eager")
        (ref,) = _call(backend, ACT.name, x, alpha=alpha, limit=limit, reference=True, **kw)
        _same(got, ref, f"{backend.NAME} {dtype} {layout.value} vs reference")


def _powers_of_two(dtype):
    """+-2^k for every k of the 16-bit dtype (subnormal to largest binade), with +-0, +-inf, NaN."""
    fi, mant = torch.finfo(dtype), {torch.bfloat16: 7, torch.float16: 10}[dtype]
    lo, hi = int(math.log2(fi.smallest_normal)) - mant, int(math.log2(fi.max))
    p = torch.tensor([2.0 ** k for k in range(lo, hi + 1)], device="cuda")
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")], device="cuda")
    return torch.cat([p, -p, specials]).to(dtype), mant


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d)[6:])
def test_sigmoid_every_16bit_value(dtype):
    """The CUDA SwigluOai sigmoid (csrc/act_quant.cuh sigmoid_fast / sigmoid_big_16bit) on every
    16-bit z: gates +-2^k and alpha every significand m in [1, 2) give z = round(gate * alpha) =
    +-m 2^k, every value of the dtype (asserted); with up = 0 the output is round(gate * sigmoid(z)),
    gate * sigmoid exact for a power-of-two gate, so each z's rounded sigmoid shows in the output.
    Bit for bit against eager transformers on CUDA (torch.sigmoid), through the packed path (an
    even width) and the scalar one (odd), and limit = the dtype's largest value (no gate clamped
    but +inf)."""
    assert cuda_backend.is_available(), cuda_backend.unavailable_reason()
    g, mant = _powers_of_two(dtype)
    limit = float(torch.finfo(dtype).max)
    width = g.numel() + (g.numel() % 2 == 1)  # even: the vector path (pairs)
    seen = torch.zeros(1 << 16, dtype=torch.bool, device="cuda")
    for i in range(1 << mant):
        alpha = 1.0 + i / (1 << mant)
        for w in (width, width + 1):  # even: the packed pairs; odd: the scalar path
            gate = torch.cat([g, g[:w - g.numel()]]).view(1, w)
            up = torch.zeros_like(gate)
            want = _eager(gate, up, alpha, limit)
            (got,) = _call(cuda_backend, ACT.name, torch.cat([gate, up], -1).contiguous(), alpha=alpha, limit=limit)
            _same(got, want, f"cuda {dtype} sigmoid alpha={alpha} width={w}")
        z = (gate.float().clamp(max=limit).to(dtype).float() * alpha).to(dtype)
        seen[z.view(torch.int16).long().flatten() + (1 << 15)] = True
    every = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32, device="cuda").to(torch.int16)
    not_nan = ~torch.isnan(every.view(dtype))
    missing = not_nan & ~seen
    assert int(missing.sum()) == 0, f"{int(missing.sum())} {dtype} values of z not reached"


@pytest.mark.parametrize("alpha,limit", PARAMS)
@pytest.mark.parametrize("dtype", catalog.INPUT_DTYPES, ids=lambda d: str(d)[6:])
def test_every_scheme_and_layout_vs_reference_and_eager(backend, dtype, alpha, limit):
    """Each fused op on every gate value: the reference's bits, and the unfused quant op on eager
    transformers' activation gives the same bits (fused == quant(eager activation))."""
    g, u = _every_gate(dtype)
    eager = _eager(g, u, alpha, limit)
    for scheme, sets in SCHEME_PARAMS.items():
        name = catalog.fused_op_name(ACT.name, scheme)
        unfused = catalog.SCHEMES[scheme].unfused_name
        scale = torch.tensor([0.0123], device="cuda") if catalog.SCHEMES[scheme].tensor_inputs else None
        for params in sets:
            want = kc.reference(unfused, eager, *params, scale=scale)
            for layout in Layout:
                x, kw = _inputs(dtype, layout, g, u)
                tag = f"{backend.NAME} {name}{params} {dtype} {layout.value} alpha={alpha} limit={limit}"
                got = _call(backend, name, x, *params, alpha=alpha, limit=limit, scale=scale, **kw)
                ref = _call(backend, name, x, *params, alpha=alpha, limit=limit, scale=scale, reference=True, **kw)
                for what, a, b, c in zip("qs", got, ref, want):
                    _same(a, b, f"{tag} {what} vs reference")
                    _same(a, c, f"{tag} {what} vs quant(eager)")


def test_cuda_refuses_a_missing_parameter():
    """The extension checks the parameter count against the catalog (kActNumParams)."""
    assert cuda_backend.is_available(), cuda_backend.unavailable_reason()
    x = torch.randn(4, 512, device="cuda", dtype=torch.bfloat16)
    p = plans.make_plan(catalog.OPS[catalog.fused_op_name(ACT.name, "mxfp8")], x, ("rceil",))
    q, s = p.empty_outputs(x.device)
    codes = catalog.codes()
    args = (codes["act_swigluoai_and_mul"], codes["scheme_mxfp8"], codes["layout_halves"], q, s, x, None, None, 32,
            False, True, 8, 1, False)
    err = cuda_backend._mod().act_quant(*args)
    assert err == "quantfuse: swigluoai_and_mul takes 2 parameters (catalog Activation.params), got 0", err
    assert cuda_backend._mod().act_quant(*args, act_params=(1.702, 7.0)) == ""
    torch.cuda.synchronize()
