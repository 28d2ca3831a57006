"""Pattern registration on first use: a graph's first compile traces only the pattern groups
whose ops the graph holds (:func:`quantfuse.patterns.act_quant.passes_for`), and no group a
site needs is ever skipped (each group's trigger ops are in every one of its traces)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from quantfuse.patterns import act_quant
from helpers import post_grad_graph

CONFIG = quantfuse.FusionConfig().pattern_key()


@pytest.mark.parametrize("spec", act_quant.enabled_specs(CONFIG), ids=lambda s: s.name)
def test_every_trace_holds_its_groups_trigger(spec):
    gm, _ = spec.build()
    assert act_quant.may_match(spec, act_quant.GraphOps.of(gm.graph))


def _group_quant(y, group=128):
    yg = y.unflatten(-1, (-1, group)).float()
    s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (yg / s).clamp(-448, 448).to(torch.float8_e4m3fn).flatten(-2), s.squeeze(-1)


@pytest.mark.parametrize("act,widths", [("relu2", ("16bit",)), ("silu_and_mul", ("16bit", "fp32"))])
def test_a_graph_registers_only_the_groups_it_can_match(act, widths):
    """A bf16 graph: its FP8 groups for its activation; F.silu decomposes to an fp32 exp, which the
    fp32 traces have too, so silu's fp32 groups are registered as well."""
    def fn(x):
        d = x.shape[-1] // 2
        return _group_quant(F.silu(x[:, :d]) * x[:, d:] if act == "silu_and_mul" else F.relu(x).square())
    gm = post_grad_graph(fn, torch.randn(4, 512, dtype=torch.bfloat16))
    groups = [p.pass_name for p in act_quant.passes_for(CONFIG, gm.graph)]
    # the FP8 schemes whose spellings reduce by amax and cast to FP8 (per group, per tensor, per token)
    assert sorted(groups) == [f"quantfuse:native/{act}/{s}/{w}"
                              for s in ("fp8_per_group", "fp8_per_tensor", "fp8_per_token") for w in widths]
    assert act_quant.passes_for(CONFIG, torch.fx.Graph()) == []


def test_a_graph_the_recogniser_fuses_whole_registers_no_pattern():
    """The native patterns run after the recogniser, on what it left: a graph whose every site it
    fused traces none of them (no setup time), and the report names the recogniser."""
    act_quant._group_pass.cache_clear()
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    fusion(post_grad_graph(lambda x: _group_quant(F.relu(x).square()), torch.randn(4, 256, dtype=torch.bfloat16)).graph)
    (report,) = fusion.report.graphs
    assert [r.pattern for r in report.rewrites] == ["recognised:relu2[halves]+fp8_per_group"]
    assert act_quant._group_pass.cache_info().currsize == 0
    assert report.setup_seconds < report.seconds


def test_the_report_times_the_registration_of_new_groups():
    """A pass whose groups are not registered yet reports the time it spent registering them
    (part of its time); once they are, the next pass of the same graph spends none there."""
    def fn(x):  # groups of 32: no recipe takes them, so the site's ops stay for the patterns to try
        return _group_quant(F.relu(x).square(), 32)
    act_quant._group_pass.cache_clear()
    config = quantfuse.FusionConfig(native_on_cpu=True)
    first, second = quantfuse.FusionPass(config), quantfuse.FusionPass(config)
    first(post_grad_graph(fn, torch.randn(4, 256, dtype=torch.bfloat16)).graph)
    second(post_grad_graph(fn, torch.randn(4, 256, dtype=torch.bfloat16)).graph)
    (a,), (b,) = first.report.graphs, second.report.graphs
    assert 0 < a.setup_seconds <= a.seconds
    assert b.setup_seconds < a.setup_seconds / 10
