"""Never slower: on the CPU a native site is kept (Inductor's C++ beats the torch reference),
the report says why, and the op form is still fused."""

from __future__ import annotations

import torch

import quantfuse
from corpus import OpFormPairs, SliceSiluView
from helpers import count_targets, post_grad_graph
from quantfuse.passes import profitability


def _run(module, config):
    gm = post_grad_graph(module, module.make_input())
    before = str(gm.graph)
    fusion = quantfuse.FusionPass(config)
    with torch.no_grad():
        fusion(gm.graph)
    return gm, before, fusion.report


def test_cpu_native_site_is_kept_for_speed_by_default():
    config = quantfuse.FusionConfig(native_on_cpu=False)
    gm, before, report = _run(SliceSiluView(), config)
    assert report.rewrites == []
    assert [m.reason for m in report.near_misses] == [profitability.CPU_REASON]
    assert str(gm.graph) == before  # kept means untouched


def test_cpu_native_site_is_fused_when_asked():
    gm, _, report = _run(SliceSiluView(), quantfuse.FusionConfig(native_on_cpu=True))
    assert len(report.rewrites) == 1 and report.near_misses == []
    assert count_targets(gm, "quantfuse.silu_and_mul_per_block_quant") == 1


def test_op_form_is_fused_on_the_cpu_by_default():
    module = OpFormPairs()
    gm, _, report = _run(module, quantfuse.FusionConfig(native_on_cpu=False))
    assert len(report.rewrites) == OpFormPairs.expect[0] and report.near_misses == []


def test_native_on_cpu_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("QUANTFUSE_NATIVE_ON_CPU", "0")
    assert quantfuse.FusionConfig().native_on_cpu is False
    monkeypatch.setenv("QUANTFUSE_NATIVE_ON_CPU", "1")
    assert quantfuse.FusionConfig().native_on_cpu is True
