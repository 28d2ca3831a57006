"""Sites recognised by meaning in graphs whose token count is symbolic (``mark_dynamic`` on the
leading dims, as serving engines compile): one compiled graph serves every token count, and its
outputs are bit-identical to eager's at each (quantfuse/patterns/canonical.py ``symbolic_rows``).
MX sites too (their scales row-major: a swizzle chain after them stays in the graph). What the
analysis cannot prove for every count is reported."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from test_recognise import (FP8, VLLM_FLOOR, _mx_input, mx8_quant, vllm_group_quant, vllm_silu_and_mul,
                            vllm_static_quant, vllm_token_quant)
import swizzle_spelled
from test_recognise_mxfp4 import mxfp4, silu_mul

TOKENS = (5, 9, 33)


def _bits(t):
    return t.view(torch.uint8) if t.dtype == FP8 else t


def _compiled(fn, make, dims=(0,), dynamic=None):
    """``fn`` compiled once with the pass, called at each token count with ``dims`` of every
    input marked dynamic: (the pass's report, [(eager outputs, compiled outputs)])."""
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    torch._dynamo.reset()
    runs = []
    try:
        with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True):
            compiled = torch.compile(fn, dynamic=dynamic, options={"post_grad_custom_post_pass": fusion})
            for t in TOKENS:
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
    "static per-tensor": (lambda x, s: vllm_static_quant(vllm_silu_and_mul(x), s),
                          lambda t: (torch.randn(t, 512, dtype=torch.bfloat16) * 3, torch.tensor([0.02])), (0,),
                          None),
    "MXFP8 rceil": (lambda x: mx8_quant(vllm_silu_and_mul(x)), _mx_rows(512), (0,), None),
    "MXFP8 floor, 3-D": (lambda x: mx8_quant(vllm_silu_and_mul(x), rceil=False),
                         lambda t: (_mx_input(2, t, 512),), (0, 1), None),
    "MXFP4": (lambda x: mxfp4(silu_mul(x), "round", True), _mx_rows(512), (0,), None),
    # the 128x4 swizzle (rows padded to 128) is not folded at a symbolic count: it stays after the op
    "MXFP8, then a 128x4 swizzle": (lambda x: _swizzled_mx8(x), _mx_rows(512), (0,), None),
}
SCHEMES = {"MXFP8 rceil": "mxfp8", "MXFP8 floor, 3-D": "mxfp8", "MXFP4": "mxfp4", "MXFP8, then a 128x4 swizzle": "mxfp8"}


def _swizzled_mx8(x):
    q, s = mx8_quant(vllm_silu_and_mul(x))  # uint8 scale bytes: CPU Inductor has no e8m0 type
    return q, swizzle_spelled.into_zeros(s)


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
        # at a symbolic count the op writes row-major scales; a swizzle chain stays after it
        assert report.rewrites[0].params.get("is_sf_swizzled_layout") is False, str(report)


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
