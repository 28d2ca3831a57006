"""The pass on real post-grad graphs: every corpus style fused, every near miss kept."""

from __future__ import annotations

import pytest
import torch

import quantfuse
from corpus import NEAR_MISSES, STYLES
from helpers import count_targets, fp8_step_close, post_grad_graph

FUSED = "silu_and_mul_per_block_quant"


def _run_pass(gm):
    fusion = quantfuse.FusionPass()
    fusion(gm.graph)
    gm.recompile()
    return fusion.report


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.__name__)
def test_style_is_fused(style):
    module = style()
    x = module.make_input()
    gm = post_grad_graph(module, x)
    before = len(gm.graph.nodes)
    expected_out = gm(x)
    n_act = count_targets(gm, "amax", "quantfuse.per_token_group_quant_fp8")
    rewrites, group, ue8m0, col_major = style.expect
    assert n_act == rewrites

    report = _run_pass(gm)

    assert len(report.rewrites) == rewrites, str(report)
    assert report.near_misses == []
    assert count_targets(gm, FUSED) == rewrites
    assert count_targets(gm, "amax", "aten.sigmoid", "aten.exp.", "quantfuse.silu_and_mul.",
                         "quantfuse.per_token_group_quant_fp8") == 0
    assert len(gm.graph.nodes) < before
    for r in report.rewrites:
        assert r.params == {"group_size": group, "column_major_scales": col_major, "use_ue8m0": ue8m0}
        assert r.input_dtype == str(module.dtype).replace("torch.", "")
        assert "corpus.py" in r.source
        assert r.fused_op == "quantfuse." + FUSED
    # the rewritten graph computes the same thing within the numerics contract
    got = gm(x)
    layout = (lambda s: s.t()) if style.transposed_scales else (lambda s: s)
    for i in range(0, len(expected_out), 2):
        fp8_step_close(expected_out[i], layout(expected_out[i + 1]), got[i], layout(got[i + 1]))
        assert got[i + 1].stride() == expected_out[i + 1].stride()
    if col_major and not style.__name__.startswith("OpForm"):  # the layout copy was folded away
        assert count_targets(gm, "aten.clone", "aten.permute") == 0


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
