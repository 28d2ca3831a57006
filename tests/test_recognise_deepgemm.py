"""DeepGEMM's activation quantisation, as its test utilities write it (``per_token_cast_to_fp8``
of deepseek-ai/DeepGEMM, copied into SGLang's and RTP-LLM's tests; the computation written out
here): 1 x 128 groups, the amax floored at 1e-4, the scale ``amax / 448``, optionally rounded up to
a power of two by ``torch.pow(2.0, torch.ceil(torch.log2(s.abs())))``, applied as
``y * (1.0 / s)``. After SiLU x Mul the pass fuses both forms into
``silu_and_mul_per_block_quant``, bit for bit with eager (a NaN group's NaN sign aside, the
hardware's: docs/numerics.md), and the first version of the utility, ``y * (448.0 / amax)`` (a
multiplier computed from the amax: ``apply=mul_ratio``), too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from helpers import post_grad_graph_and_inputs
from quantfuse.custom_ops import reference

FP8 = torch.float8_e4m3fn


def _ceil_to_ue8m0(s):
    return torch.pow(2.0, torch.ceil(torch.log2(s.abs())))


def deepgemm_site(x, use_ue8m0):
    gate, up = x.chunk(2, dim=-1)
    y = F.silu(gate) * up
    m, n = y.shape
    y_view = y.view(m, -1, 128)
    amax = y_view.abs().float().amax(dim=2).view(m, -1).clamp(1e-4)
    sf = amax / 448.0
    sf = _ceil_to_ue8m0(sf) if use_ue8m0 else sf
    return (y_view * (1.0 / sf.unsqueeze(2))).to(FP8).view(m, n), sf


def deepgemm_first_site(x):
    gate, up = x.chunk(2, dim=-1)
    y = F.silu(gate) * up
    m, n = y.shape
    y_view = y.view(m, -1, 128)
    amax = y_view.abs().float().amax(dim=2).view(m, -1).clamp(1e-4)
    return (y_view * (448.0 / amax.unsqueeze(2))).to(FP8).view(m, n), (amax / 448.0).view(m, -1)


def _inputs():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(9, 2 * 512, generator=gen) * 4
    x[1] = 0.0                        # an all-zero row: the floor sets its scale
    x[2, :512] *= 1e-6                # tiny activations: scales below the floor
    x[3, 5] = float("nan")            # a NaN group
    x[4, 600] = float("inf")          # an inf up value: its group's scale is inf
    x[5] *= 1e4                       # large values
    return (x.to(torch.bfloat16),)


def _run(fn, *xs):
    gm, inputs = post_grad_graph_and_inputs(fn, *xs)
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    fusion(gm.graph)
    gm.recompile()
    return gm, inputs, fusion.report


def _bits(t):
    """The bits, NaN as one value: FP8 NaN codes sign-blind, fp32 NaN canonical."""
    if t.dtype.itemsize == 1:
        b = t.view(torch.uint8).clone()
        b[(b & 0x7F) == 0x7F] = 0x7F
        return b
    return torch.where(t.isnan(), torch.full_like(t, float("nan")), t).view(torch.int32)


@pytest.mark.parametrize("use_ue8m0,recipe", [(False, "eps=0.0001,apply=mul_inv,clamp=False"),
                                              (True, "eps=0.0001,apply=mul_inv,clamp=False,ue8m0=exp2")],
                         ids=["fp32-scales", "ue8m0"])
def test_deepgemm_cast_fused_bit_for_bit(use_ue8m0, recipe):
    torch.log2(torch.rand(4096) + 0.5)  # a process's first torch.log2 on this CPU can differ (docs/numerics.md)
    (x,) = _inputs()
    site = lambda x: deepgemm_site(x, use_ue8m0)  # noqa: E731
    gm, inputs, report = _run(site, x)
    assert report.near_misses == [] and [r.fused_op for r in report.rewrites] == [
        "quantfuse.silu_and_mul_per_block_quant"], str(report)
    assert report.rewrites[0].params["recipe"] == recipe
    want = site(x)
    got = gm(*inputs)
    for w, g in zip(want, got, strict=True):
        assert (w.shape, w.dtype) == (g.shape, g.dtype)
        assert torch.equal(_bits(w), _bits(g))
    assert want[1][3].isnan().any()


def test_pow_and_exp2_are_one_ue8m0_recipe():
    """``torch.pow(2.0, e)`` and ``torch.exp2(e)`` give the same powers of two for every integer e a
    scale of max |y| takes (and NaN for NaN, of another sign on the CPU): one recipe."""
    s = torch.cat([torch.rand(4096) * 100, torch.logspace(-40, 37, 400), torch.tensor([float("nan"), 0.0, float("inf")])])
    e = torch.ceil(torch.log2(s))
    assert torch.equal(_bits(torch.pow(2.0, e)), _bits(torch.exp2(e)))
    assert torch.equal(_bits(torch.pow(2.0, e)), _bits(reference._ue8m0(s, quantfuse.catalog.Ue8m0.EXP2_CEIL_LOG2)))


def test_deepgemm_first_cast_fused_bit_for_bit():
    (x,) = _inputs()
    gm, inputs, report = _run(deepgemm_first_site, x)
    assert report.near_misses == [] and [r.fused_op for r in report.rewrites] == [
        "quantfuse.silu_and_mul_per_block_quant"], str(report)
    assert report.rewrites[0].params["recipe"] == "eps=0.0001,apply=mul_ratio,clamp=False"
    want, got = deepgemm_first_site(x), gm(*inputs)
    for w, g in zip(want, got, strict=True):
        assert (w.shape, w.dtype) == (g.shape, g.dtype)
        assert torch.equal(_bits(w), _bits(g))
    # the multiplier is not a function of the stored scale: y / s gives other codes somewhere
    y = F.silu(x[:, :512].float()).to(torch.bfloat16) * x[:, 512:]
    by_scale = (y.view(9, -1, 128).float() / want[1].unsqueeze(2)).to(FP8).view(9, 512)
    assert not torch.equal(_bits(by_scale), _bits(want[0]))


def test_a_ratio_of_another_maximum_is_a_near_miss():
    def other(x):
        gate, up = x.chunk(2, dim=-1)
        y = F.silu(gate) * up
        yv = y.view(y.shape[0], -1, 128)
        amax = yv.abs().float().amax(dim=2).clamp(1e-4)
        return (yv * (440.0 / amax.unsqueeze(2))).to(FP8), amax / 448.0
    (x,) = _inputs()
    _, _, report = _run(other, x)
    assert report.rewrites == [], str(report)
    (miss,) = report.near_misses
    assert "y * (440.0 / amax), not y * (448.0 / amax)" in miss.reason
