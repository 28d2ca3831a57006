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
    assert r.pattern.startswith("native:") and r.params == {
        "group_size": 128, "column_major_scales": False, "use_ue8m0": False, "recipe": "ue8m0=exp2"}
    (q_e, s_e), (q_f, s_f) = relu2_group_quant_exp2(x), gm(x)
    assert torch.equal(_bits(q_e), _bits(q_f)) and torch.equal(s_e, s_f)
    # the edge is hit: the exact power-of-two rounding (use_ue8m0=True) gives another scale there
    _, s_exact = torch.ops.quantfuse.relu2_per_block_quant(x, 128, use_ue8m0=True)
    assert (s_exact[:, 0] == 2 * s_e[:, 0]).all() and torch.equal(s_exact[:, 1], s_e[:, 1])


def test_exp2_ceil_log2_is_kept_on_a_gpu_graph():
    """No CUDA / Triton kernel computes exp2(ceil(log2 s)): on a GPU graph the site is kept."""
    xv = torch.empty(4, 256, device="meta")
    params = {"group_size": 128, "column_major_scales": False, "use_ue8m0": False, "recipe": "ue8m0=exp2"}
    with pytest.raises(site.NotFusable, match="ue8m0=exp2 is not one the kernels implement.*no CUDA / Triton"):
        site.check_kernel("relu2", "fp8_per_group", params, xv)
    site.check_kernel("relu2", "fp8_per_group", params, torch.empty(4, 256))  # CPU: the reference runs it
    site.check_kernel("relu2", "fp8_per_group", {**params, "recipe": ""}, xv)
