"""The pass on real post-grad graphs: every corpus style fused, every near miss kept."""

from __future__ import annotations

import pytest
import torch

import quantfuse
from quantfuse import catalog
from corpus import NEAR_MISSES, STYLES, OpFormPairs
from corpus import SliceSiluView as SliceSilu
from helpers import count_targets, fp4_step_close, fp8_step_close, post_grad_graph

FUSED = "silu_and_mul_per_block_quant"


ALL_NATIVE = quantfuse.FusionConfig(native_fusions=quantfuse.passes.ALL_PAIRS)


def _run_pass(gm, config=ALL_NATIVE):
    fusion = quantfuse.FusionPass(config)
    fusion(gm.graph)
    gm.recompile()
    return fusion.report


UNFUSED = ("amax", "aten.sigmoid", "aten.exp.", "aten.relu", "quantfuse.silu_and_mul.default", "quantfuse.relu2.",
           "quantfuse.per_token_group_quant_fp8", "quantfuse.per_token_quant_fp8", "quantfuse.mxfp")


def _assert_same_quantisation(scheme, expected, got):
    """Per scheme: op forms are bit-identical; native forms agree within the contract."""
    e8m0 = getattr(torch, "float8_e8m0fnu", None)  # scales handed on in torch's E8M0 dtype: the bytes
    expected, got = [tuple(t.view(torch.uint8) if t.dtype == e8m0 else t for t in ts) for ts in (expected, got)]
    if scheme == "all" or torch.equal(expected[0].view(torch.uint8), got[0].view(torch.uint8)) \
            and torch.equal(expected[1], got[1]):
        assert all(torch.equal(a.view(torch.uint8) if a.dtype == torch.float8_e4m3fn else a,
                               b.view(torch.uint8) if b.dtype == torch.float8_e4m3fn else b)
                   for a, b in zip(expected, got))
        return
    s1, s2 = expected[1], got[1]
    if scheme == "mxfp4":
        fp4_step_close(expected[0], s1, got[0], s2)
        return
    if s1.dtype == torch.uint8:  # E8M0 bytes -> power-of-two scales
        s1, s2 = torch.exp2(s1.float() - 127), torch.exp2(s2.float() - 127)
    fp8_step_close(expected[0], s1, got[0], s2)


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.__name__)
def test_style_is_fused(style):
    module = style()
    x = module.make_input()
    gm = post_grad_graph(module, x)
    before = len(gm.graph.nodes)
    expected_out = gm(x)
    rewrites, fused, params = style.expected()
    assert count_targets(gm, "quantfuse.per_token_group_quant_fp8", "quantfuse.per_token_quant_fp8",
                         "quantfuse.mxfp", "aten.amax") == rewrites

    report = _run_pass(gm)

    assert len(report.rewrites) == rewrites, str(report)
    assert report.near_misses == []
    assert count_targets(gm, "quantfuse." + (fused if fused != "*" else "")) >= rewrites
    assert count_targets(gm, *UNFUSED) == 0
    assert len(gm.graph.nodes) < before
    for r in report.rewrites:
        if params is not None:
            # the recogniser (which reads the native form first) also names the MX layout and
            # notes what it chose; what the style fixes must be there as given
            assert {k: r.params.get(k) for k in params} == params and r.fused_op == "quantfuse." + fused
            assert set(r.params) - set(params) <= {"note", "is_sf_swizzled_layout", "recipe"}, r.params
        assert r.input_dtype == str(module.dtype).replace("torch.", "")
        assert "corpus.py" in r.source
    if style is OpFormPairs:
        assert sorted(r.fused_op for r in report.rewrites) == sorted(
            f"quantfuse.{a}_{s}" for a in ("silu_and_mul", "relu2")
            for s in ("per_block_quant", "per_token_quant_fp8", "mxfp8_quant", "mxfp4_quant"))
    # the rewritten graph computes the same thing within the numerics contract
    got = gm(x)
    layout = (lambda s: s.t()) if style.transposed_scales else (lambda s: s)
    for i in range(0, len(expected_out), 2):
        _assert_same_quantisation(style.scheme, (expected_out[i], layout(expected_out[i + 1])),
                                  (got[i], layout(got[i + 1])))
        assert got[i + 1].stride() == expected_out[i + 1].stride()
    if params and params.get("column_major_scales") and not style.__name__.startswith("OpForm"):
        assert count_targets(gm, "aten.clone", "aten.permute") == 0  # the layout copy was folded away


@pytest.mark.parametrize("style,reason", NEAR_MISSES, ids=lambda s: getattr(s, "__name__", ""))
def test_near_miss_is_kept_and_explained(style, reason):
    module = style()
    x = module.make_input()
    gm = post_grad_graph(module, x)
    before = str(gm.graph)

    report = _run_pass(gm)

    assert report.rewrites == []
    assert str(gm.graph) == before, "a near miss must leave the graph exactly as it was"
    assert len(report.near_misses) == 1, str(report)
    assert reason in report.near_misses[0].reason
    assert "corpus.py" in report.near_misses[0].source
    assert reason in str(report)


def test_pass_is_idempotent():
    module = STYLES[0]()
    gm = post_grad_graph(module, module.make_input())
    assert len(_run_pass(gm).rewrites) == 1
    after_once = str(gm.graph)
    second = _run_pass(gm)
    assert second.rewrites == [] and second.near_misses == []
    assert str(gm.graph) == after_once


def test_native_fusions_limit_the_native_form():
    """The default fuses every native pair (each beat Inductor on the H100); a pair left
    out of ``native_fusions`` stays as Inductor would compile it; PROFITABLE_NATIVE_TRITON
    (the advice for machines without a CUDA toolchain) keeps exactly its pairs."""
    from corpus import Relu2MulPerToken, Relu2Mxfp4Floor, Relu2Mxfp8Floor, Relu2SquareGroup, SiluMxfp8Rceil, SiluPerToken

    assert set(quantfuse.FusionConfig().native_fusions) == set(catalog.PAIRS)
    only_silu = quantfuse.FusionConfig(native_fusions=(("silu_and_mul", "fp8_per_group"),))
    triton = quantfuse.FusionConfig(native_fusions=quantfuse.passes.PROFITABLE_NATIVE_TRITON)
    for style, default, restricted, on_triton in ((Relu2SquareGroup, 1, 0, 0), (Relu2Mxfp8Floor, 1, 0, 1),
                                                  (SliceSilu, 1, 1, 1), (Relu2Mxfp4Floor, 1, 0, 1),
                                                  (SiluMxfp8Rceil, 1, 0, 0), (Relu2MulPerToken, 1, 0, 1),
                                                  (SiluPerToken, 1, 0, 0)):
        module = style()
        for config, n in ((quantfuse.FusionConfig(), default), (only_silu, restricted), (triton, on_triton)):
            gm = post_grad_graph(module, module.make_input())
            assert len(_run_pass(gm, config).rewrites) == n, (style.__name__, config.native_fusions)


def test_disabled_form_is_not_rewritten():
    module = STYLES[0]()
    gm = post_grad_graph(module, module.make_input())
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(forms=("op",)))
    fusion(gm.graph)
    assert fusion.report.rewrites == []
    assert count_targets(gm, FUSED) == 0


def test_group_size_config_restricts_rewrites():
    module = STYLES[1]()  # group 64
    gm = post_grad_graph(module, module.make_input())
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(group_sizes=(128,)))
    fusion(gm.graph)
    assert fusion.report.rewrites == []
    assert "group size 64 is not supported (supported: 128)" in fusion.report.near_misses[0].reason
