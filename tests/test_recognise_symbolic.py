"""Sites recognised by meaning in graphs whose token count is symbolic (``mark_dynamic`` on the
leading dims, as serving engines compile): one compiled graph serves every token count, and its
outputs are bit-identical to eager's at each (quantfuse/patterns/canonical.py ``symbolic_rows``).
MX sites too, with a 128x4 swizzle chain after the scales folded into the op (the chain is
evaluated at sample counts, quantfuse/patterns/swizzle.py). What the analysis cannot prove for
every count is reported."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from test_recognise import (FP8, VLLM_FLOOR, _mx_input, mx8_quant, vllm_group_quant, vllm_silu_and_mul,
                            vllm_static_quant, vllm_tensor_quant, vllm_token_quant)
import swizzle_spelled
from test_recognise_mxfp4 import mxfp4, silu_mul

TOKENS = (5, 9, 33)


def _bits(t):
    return t.view(torch.uint8) if t.dtype == FP8 else t


def _compiled(fn, make, dims=(0,), dynamic=None, tokens=TOKENS):
    """``fn`` compiled once with the pass, called at each of ``tokens`` with ``dims`` of every
    input marked dynamic: (the pass's report, [(eager outputs, compiled outputs)])."""
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    torch._dynamo.reset()
    runs = []
    try:
        with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True):
            compiled = torch.compile(fn, dynamic=dynamic, options={"post_grad_custom_post_pass": fusion})
            for t in tokens:
                args = make(t)
                for a in args:
                    if a.dim() > 1:
                        for d in dims:
                            torch._dynamo.mark_dynamic(a, d)
                eager, got = fn(*args), compiled(*args)
                runs.append(tuple(v if isinstance(v, tuple) else (v,) for v in (eager, got)))
    finally:
        torch._dynamo.reset()
    return fusion.report, runs


def _rows(h):
    return lambda t: ((torch.randn(t, h, dtype=torch.bfloat16) * 3),)


def _mx_rows(h):
    return lambda t: (_mx_input(t, h),)


CASES = {
    "vLLM per-group 128": (lambda x: vllm_group_quant(vllm_silu_and_mul(x), 128), _rows(1024), (0,), VLLM_FLOOR),
    "vLLM per-group 64, UE8M0": (lambda x: vllm_group_quant(vllm_silu_and_mul(x), 64, use_ue8m0=True), _rows(512),
                                 (0,), VLLM_FLOOR + ",ue8m0=exp2,ue8m0_after_floor=False"),
    "vLLM per-token": (lambda x: vllm_token_quant(vllm_silu_and_mul(x)), _rows(512), (0,), None),
    "3-D, batch and sequence symbolic": (lambda x: vllm_group_quant(vllm_silu_and_mul(x), 128),
                                         lambda t: (torch.randn(2, t, 512, dtype=torch.bfloat16) * 3,), (0, 1),
                                         VLLM_FLOOR),
    "two Linear outputs": (lambda g, u: vllm_token_quant(F.silu(g) * u),
                           lambda t: (torch.randn(t, 256, dtype=torch.bfloat16) * 3,
                                      torch.randn(t, 256, dtype=torch.bfloat16) * 3), (0,), None),
    "vLLM dynamic per-tensor": (lambda x: vllm_tensor_quant(vllm_silu_and_mul(x)), _rows(512), (0,),
                                VLLM_FLOOR + ",apply=mul_inv"),
    "static per-tensor": (lambda x, s: vllm_static_quant(vllm_silu_and_mul(x), s),
                          lambda t: (torch.randn(t, 512, dtype=torch.bfloat16) * 3, torch.tensor([0.02])), (0,),
                          None),
    "MXFP8 rceil": (lambda x: mx8_quant(vllm_silu_and_mul(x)), _mx_rows(512), (0,), None),
    "MXFP8 floor, 3-D": (lambda x: mx8_quant(vllm_silu_and_mul(x), rceil=False),
                         lambda t: (_mx_input(2, t, 512),), (0, 1), None),
    "MXFP4": (lambda x: mxfp4(silu_mul(x), "round", True), _mx_rows(512), (0,), None),
    # the 128x4 swizzle (rows padded to 128) folded at a symbolic count: the op writes that layout
    "MXFP8, then a 128x4 swizzle": (lambda x: _swizzled_mx8(x), _mx_rows(512), (0,), None),
    "MXFP8, then F.pad and a 128x4 swizzle": (lambda x: _padded_mx8(x), _mx_rows(512), (0,), None),
    # batch and sequence both symbolic: the chain is evaluated at combinations of the two
    "MXFP8 [B, S], then a 128x4 swizzle": (lambda x: _swizzled_mx8(x, flatten=True),
                                           lambda t: (_mx_input(2 + t % 3, t, 512),), (0, 1), None),
}
SCHEMES = {"MXFP8 rceil": "mxfp8", "MXFP8 floor, 3-D": "mxfp8", "MXFP4": "mxfp4", "MXFP8, then a 128x4 swizzle": "mxfp8",
           "MXFP8, then F.pad and a 128x4 swizzle": "mxfp8", "MXFP8 [B, S], then a 128x4 swizzle": "mxfp8"}
#: the cases whose swizzle chain the op writes itself (is_sf_swizzled_layout=True)
SWIZZLED = {"MXFP8, then a 128x4 swizzle", "MXFP8, then F.pad and a 128x4 swizzle", "MXFP8 [B, S], then a 128x4 swizzle"}


def _swizzled_mx8(x, flatten=False):
    q, s = mx8_quant(vllm_silu_and_mul(x))  # uint8 scale bytes: CPU Inductor has no e8m0 type
    return q, swizzle_spelled.into_zeros(s.flatten(0, -2) if flatten else s)


def _padded_mx8(x):
    q, s = mx8_quant(vllm_silu_and_mul(x))
    return q, swizzle_spelled.padded(s).view(torch.uint8)


def assert_case_fused(name, to=lambda t: t):
    """CASES[name] compiled once (inputs moved by ``to``): one graph, one rewrite with the case's
    recipe, every token count's outputs bit-identical to eager's. Returns the report."""
    fn, make, dims, spec = CASES[name]
    report, runs = _compiled(fn, lambda t: tuple(to(a) for a in make(t)), dims)
    assert len(report.graphs) == 1, f"recompiled: {report}"
    assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
    if spec is not None:
        assert report.rewrites[0].params.get("recipe", "") == spec, str(report)
    if name in SCHEMES:
        assert report.rewrites[0].scheme == SCHEMES[name], str(report)
    for eager, got in runs:
        for e, g in zip(eager, got):
            assert e.shape == g.shape and e.dtype == g.dtype
            assert torch.equal(_bits(e), _bits(g))
    return report


@pytest.mark.parametrize("name", list(CASES))
def test_one_graph_fuses_every_token_count_bit_exact(name):
    report = assert_case_fused(name)
    if SCHEMES.get(name, "").startswith("mx"):
        # a swizzle chain after the scales is folded (evaluated at sample counts); else row-major
        assert report.rewrites[0].params.get("is_sf_swizzled_layout") is (name in SWIZZLED), str(report)


def _reason(fn, make, dims=(0,), dynamic=None):
    report, _ = _compiled(fn, make, dims, dynamic)
    assert report.rewrites == [], str(report)
    return " ".join(m.reason for m in report.near_misses)


def test_a_symbolic_hidden_size_is_reported():
    reason = _reason(lambda x: vllm_token_quant(vllm_silu_and_mul(x)), _rows(512), dynamic=True)
    assert "the hidden size must be static" in reason


def test_a_scale_across_tokens_is_reported():
    """amax over the token dim (one scale per column) reads rows the analysis cannot follow."""
    def fn(x):
        y = vllm_silu_and_mul(x).float()
        s = y.abs().amax(0, keepdim=True) / 448.0
        return (y / s).clamp(-448.0, 448.0).to(FP8), s
    assert _reason(fn, _rows(512)) != ""


def test_a_data_dependent_token_count_is_fused_bit_exact():
    """The rows an expert gets (``nonzero`` of the router's choice: an unbacked count), as an
    eager experts loop selects them."""
    def fn(x, ids):
        h = x[torch.nonzero(ids == 3).squeeze(-1)]
        return vllm_token_quant(vllm_silu_and_mul(h))

    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    torch._dynamo.reset()
    try:
        with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True), \
                torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            compiled = torch.compile(fn, options={"post_grad_custom_post_pass": fusion})
            for t in (16, 40):
                x = torch.randn(t, 512, dtype=torch.bfloat16) * 3
                ids = torch.arange(t) % 5
                for e, g in zip(fn(x, ids), compiled(x, ids)):
                    assert e.shape == g.shape and e.dtype == g.dtype
                    assert torch.equal(_bits(e), _bits(g))
    finally:
        torch._dynamo.reset()
    assert len(fusion.report.rewrites) >= 1 and fusion.report.near_misses == [], str(fusion.report)
    assert all(r.scheme == "fp8_per_token" for r in fusion.report.rewrites)


@pytest.mark.parametrize("name", sorted(SWIZZLED))
def test_a_folded_swizzle_is_bit_exact_across_its_tiles(name):
    """The folded chain at counts below, at and past the 128-row tiles. The model's own code
    recompiles past 128 rows (a guard of its view, with or without the pass): each graph, its
    count symbolic over its own range, folds the chain."""
    fn, make, dims, _ = CASES[name]
    report, runs = _compiled(fn, make, dims, tokens=(3, 128, 130, 300))
    assert report.rewrites and report.near_misses == [], str(report)
    assert all(r.params.get("is_sf_swizzled_layout") is True for r in report.rewrites), str(report)
    for eager, got in runs:
        for e, g in zip(eager, got):
            assert e.shape == g.shape and torch.equal(_bits(e), _bits(g))


def test_another_tile_at_a_symbolic_count_is_a_near_miss():
    """A 64x4 tiling after the scales: the op is fused with row-major scales and the chain kept,
    reported with the tile it uses (as at a static count)."""
    def fn(x):
        q, s = mx8_quant(vllm_silu_and_mul(x))
        t, g = s.shape
        tp, gp = -(-t // 64) * 64, -(-g // 4) * 4
        buf = torch.zeros(tp, gp, dtype=s.dtype)  # uint8 all the way: CPU Inductor has no e8m0 type
        buf[:t, :g] = s
        return q, buf.view(tp // 64, 4, 16, gp // 4, 4).permute(0, 3, 2, 1, 4).contiguous().view(tp, gp)
    report, runs = _compiled(fn, _mx_rows(512), tokens=(5, 33))
    assert len(report.graphs) == 1 and len(report.rewrites) == 1, str(report)
    assert report.rewrites[0].params.get("is_sf_swizzled_layout") is False
    assert [m.reason for m in report.near_misses] == [
        "the scale chain lays the scales out in 64x4 tiles; the fused op's swizzled layout has 128x4 tiles"], \
        str(report)
    for eager, got in runs:
        for e, g in zip(eager, got):
            assert torch.equal(_bits(e), _bits(g))


def test_a_swizzle_per_batch_row_is_not_the_swizzle_of_the_tokens():
    """Batch and sequence symbolic, each batch row padded to 128 rows and tiled apart: the same
    layout as the fused op's when B = 1, another when B > 1. The chain is evaluated at combinations
    of both symbols, so it is not folded; the op is fused with row-major scales, the chain kept."""
    def fn(x):
        q, s = mx8_quant(vllm_silu_and_mul(x))
        b, t, g = s.shape
        tp, gp = -(-t // 128) * 128, -(-g // 4) * 4
        buf = torch.zeros(b, tp, gp, dtype=s.dtype)
        buf[:, :t, :g] = s
        return q, buf.view(b, tp // 128, 4, 32, gp // 4, 4).permute(0, 1, 4, 3, 2, 5).contiguous().view(b * tp, gp)
    report, runs = _compiled(fn, lambda t: (_mx_input(2 + t % 3, t, 512),), (0, 1), tokens=(5, 33))
    assert len(report.rewrites) == 1 and report.rewrites[0].params.get("is_sf_swizzled_layout") is False, str(report)
    assert [m.reason.split(":")[0] for m in report.near_misses] == [
        "the scale chain lays the scales out unlike the fused op's 128x4 swizzled layout"], str(report)
    for eager, got in runs:
        for e, g in zip(eager, got):
            assert torch.equal(_bits(e), _bits(g))
