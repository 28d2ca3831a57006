"""Numerics at the edges the pattern matcher's and the recogniser's MX / UE8M0 sites meet:
scales on a binade edge, non-finite blocks, float32 activations. Every fused site here equals
eager running the model's code, bit for bit, or is reported with the reason it is not fused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from quantfuse import catalog, reference
from quantfuse.patterns import site
from helpers import post_grad_graph

FP8 = torch.float8_e4m3fn


def _run(gm):
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig())
    fusion(gm.graph)
    gm.recompile()
    return fusion.report


def _bits(t):
    return t.view(torch.uint8) if t.dtype == FP8 else t


# --- UE8M0 written as exp2(ceil(log2(s))) --------------------------------------------------------

def relu2_group_quant_exp2(x):
    """Squared ReLU, FP8 per group of 128 with the scale rounded as models write it."""
    y = torch.relu(x) ** 2
    yg = y.unflatten(-1, (-1, 128)).float()
    s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
    s = torch.exp2(torch.ceil(torch.log2(s)))
    return (yg / s).clamp(-448, 448).to(FP8).flatten(-2), s.squeeze(-1)


def _binade_edge_input() -> torch.Tensor:
    """fp32 x whose first group's relu(x)^2 has an amax with amax / 448 just above 2^-6, where
    float32 log2 rounds to -6 exactly (exp2(ceil(log2 s)) = 2^-6, the exact rounding 2^-5)."""
    k = torch.arange(-20000, 20000, dtype=torch.float64)
    amax = (torch.tensor(448 * 2.0 ** -6).double() * (1 + k * 2.0 ** -24)).float()
    s = amax / 448.0
    edge = torch.exp2(torch.ceil(torch.log2(s))) != reference.ue8m0_ceil(s)
    roots = amax[edge].sqrt()
    roots = roots[roots * roots == amax[edge]]
    assert len(roots), "no binade-edge amax is a float32 square"
    x = torch.rand(3, 256) * 0.5
    x[:, 5] = roots[0]
    return x


def test_exp2_ceil_log2_is_its_own_recipe_and_equals_eager_at_binade_edges():
    x = _binade_edge_input()
    gm = post_grad_graph(relu2_group_quant_exp2, x)
    report = _run(gm)
    (r,) = report.rewrites
    assert r.pattern.startswith("recognised:") and r.params == {
        "group_size": 128, "column_major_scales": False, "use_ue8m0": False, "recipe": "ue8m0=exp2"}
    (q_e, s_e), (q_f, s_f) = relu2_group_quant_exp2(x), gm(x)
    assert torch.equal(_bits(q_e), _bits(q_f)) and torch.equal(s_e, s_f)
    # the edge is hit: the exact power-of-two rounding (use_ue8m0=True) gives another scale there
    _, s_exact = torch.ops.quantfuse.relu2_per_block_quant(x, 128, use_ue8m0=True)
    assert (s_exact[:, 0] == 2 * s_e[:, 0]).all() and torch.equal(s_exact[:, 1], s_e[:, 1])


def test_exp2_ceil_log2_and_its_orders_are_kernel_recipes_on_a_gpu_graph():
    """The CUDA per-group kernel computes exp2(ceil(log2 s)) (csrc/act_quant.cuh group_scale) and
    reads the UE8M0 order against the floors at run time (ScaleRecipe): on a GPU graph both sites
    fuse; a recipe no kernel computes (a NaN eps) is kept with its reason."""
    xv = torch.empty(4, 256, device="meta")
    params = {"group_size": 128, "column_major_scales": False, "use_ue8m0": False, "recipe": "ue8m0=exp2"}
    site.check_kernel("relu2", "fp8_per_group", params, xv)
    site.check_kernel("relu2", "fp8_per_group",
                      {**params, "recipe": "floor_at=scale,ue8m0=exp2,ue8m0_after_floor=False"}, xv)
    with pytest.raises(site.NotFusable, match="not a kernel recipe"):
        site.check_kernel("relu2", "fp8_per_group", {**params, "recipe": "eps=nan"}, xv)
    site.check_kernel("relu2", "fp8_per_group", {**params, "recipe": "eps=nan"}, torch.empty(4, 256))  # CPU: the reference


# --- MX blocks holding inf (an fp16 activation overflows easily) -----------------------------------

@pytest.mark.parametrize("rceil", [True, False], ids=["rceil", "floor"])
@pytest.mark.parametrize("mx", ["_mx8", "_mx4"])
def test_inf_blocks_fused_equal_eager(mx, rceil):
    """relu(x) ** 2 of a large fp16 value is inf: eager's clamp(ceil(log2(inf / 448)), -127, 127)
    (or the floor form) is 127, so the block's byte is 254, ±inf encodes as the element maximum and
    the rest as y * 2^-127; the fused op (the pattern matcher's site) gives the same bits."""
    import corpus

    quant = getattr(corpus, mx)

    def fn(x):
        return quant(F.relu(x).square(), rceil)
    x = torch.randn(4, 256, dtype=torch.float16)
    x[0, 3] = 300.0       # 90000 > 65504: inf
    x[1, 40:72] = 400.0   # a whole block of inf
    x[2, 100] = 1e4       # inf beside finite values of every size
    x[2, 96:100] = torch.tensor([60000.0, 1.0, 2.0, 255.0]).sqrt()
    gm = post_grad_graph(fn, x)
    report = _run(gm)
    assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
    (q_e, s_e), (q_f, s_f) = fn(x), gm(x)
    assert (s_e == 254).sum() == 4 and torch.equal(s_e, s_f)
    assert torch.equal(_bits(q_e), _bits(q_f))


def test_nan_blocks_get_the_e8m0_nan_byte():
    """NaN: eager's (nan + 127).to(uint8) is undefined in C++; the fused op writes E8M0's NaN."""
    x = torch.ones(2, 64)
    x[0, 1] = float("nan")
    for op in (reference.mxfp8_quant, reference.mxfp4_quant):
        for rounding in ("rceil", "floor"):
            _, s = op(x, rounding)
            assert s[0, 0] == catalog.E8M0_NAN and s[0, 1] == s[1, 0] == s[1, 1] != catalog.E8M0_NAN


# --- MX of a float32 activation ----------------------------------------------------------------------

def _fp32_edge_input(max_elem: float) -> torch.Tensor:
    """fp32 [gate | up] whose first block of F.silu(gate) * up has an amax just above
    max_elem * 2^70, where float32 log2(amax / max_elem) rounds to 70 exactly (its ulp there is
    2^-17): eager's exponent is one below the exact one. F.silu(32) is 32 in fp32, so
    y = 32 * up exactly."""
    k = torch.arange(1, 400, dtype=torch.float64)
    amax = (torch.tensor(max_elem * 2.0 ** 70).double() * (1 + k * 2.0 ** -24)).float()
    amax = amax[(torch.log2(amax / max_elem) == 70) & (amax / max_elem > 2.0 ** 70)]
    gate = torch.full((2, 256), 32.0)
    assert torch.equal(F.silu(gate), gate)
    up = torch.rand(2, 256)
    up[:, 5] = amax[0] / 32
    return torch.cat([gate, up], -1)


@pytest.mark.parametrize("mx,max_elem", [("_mx8", 448.0), ("_mx4", 6.0)])
def test_fp32_mx_sites_are_reported_not_fused(mx, max_elem):
    """Fusing would be wrong: at such an amax eager's bytes differ from the fused op's."""
    import corpus

    quant = getattr(corpus, mx)

    def fn(x):
        return quant(F.silu(x[:, :256]) * x[:, 256:], True)
    x = _fp32_edge_input(max_elem)
    (q_e, s_e) = fn(x)
    op = getattr(torch.ops.quantfuse, f"silu_and_mul_mxfp{mx[-1]}_quant")
    q_f, s_f = op(x, "rceil")
    assert not torch.equal(s_e, s_f)  # the exponent log2 computes is not the exact one
    gm = post_grad_graph(fn, x)
    before = str(gm.graph)
    report = _run(gm)
    assert report.rewrites == [] and str(gm.graph) == before
    assert [m.reason for m in report.near_misses] == [site.FP32_MX_REASON]
