"""Never slower: on the CPU a native site is kept (Inductor's C++ beats the torch reference),
and on every device a site whose quantized output is only dequantised in the graph; the report
says why, and the op form is still fused."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

import quantfuse
from corpus import OpFormPairs, SliceSiluView
from helpers import count_targets, post_grad_graph
from quantfuse.passes import profitability

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import fp8_gemms  # noqa: E402


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


class _DequantisedSite(torch.nn.Module):
    """SiLU×Mul -> FP8 per-group quant, its output read by ``consumer``: ``"dequant"`` (only
    ``q.float() * s``, the round trip), ``"output"`` (q returned as well), ``"gemm"`` (an
    opaque FP8 GEMM, the examples' stand-in for ``torch._scaled_mm``)."""

    def __init__(self, consumer: str):
        super().__init__()
        self.consumer = consumer
        self.w = torch.randn(256, 256).to(torch.float8_e4m3fn)
        self.w_s = torch.rand(2, 2) + 0.5

    def make_input(self):
        return torch.randn(16, 512, dtype=torch.bfloat16)

    def forward(self, x):
        gate, up = x.chunk(2, dim=-1)
        yg = (torch.nn.functional.silu(gate) * up).unflatten(-1, (-1, 128)).float()
        s = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
        q = (yg / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        if self.consumer == "gemm":
            return fp8_gemms.block_scaled_mm(q.flatten(-2), s.squeeze(-1), self.w, self.w_s)
        deq = (q.float() * s).flatten(-2).to(torch.bfloat16)
        return (deq, q) if self.consumer == "output" else deq


@pytest.mark.parametrize("consumer,fused", [("dequant", False), ("output", True), ("gemm", True)])
def test_a_site_only_dequantised_is_kept_on_every_device(consumer, fused):
    """Inductor fuses an inline dequantisation into the site's own kernel (it never writes the
    FP8 tensor): the site is kept, on a GPU graph too, unless something reads ``q`` from memory."""
    config = quantfuse.FusionConfig(native_on_cpu=True)
    gm, before, report = _run(_DequantisedSite(consumer), config)
    if fused:
        assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
        assert count_targets(gm, "quantfuse.silu_and_mul_per_block_quant") == 1
    else:
        assert report.rewrites == [] and [m.reason for m in report.near_misses] == [
            profitability.DEQUANTISED_REASON], str(report)
        assert str(gm.graph) == before
    # the decision itself, on the graph's quantized node: the same on a GPU graph
    q = next(n for n in post_grad_graph(_DequantisedSite(consumer), _DequantisedSite(consumer).make_input()).graph.nodes
             if n.meta.get("val") is not None and getattr(n.meta["val"], "dtype", None) == torch.float8_e4m3fn)
    assert (profitability.dequantised_reason(q) is None) == fused


def test_the_examples_block_scaled_mm_differentiates_as_its_dequantised_product():
    """``fp8_gemms.block_scaled_mm``'s backward gives the gradients autograd gives the inline
    dequantise-and-multiply it stands for (the main example may run in grad mode)."""
    torch.manual_seed(0)
    q = torch.randn(8, 256).to(torch.float8_e4m3fn).requires_grad_()
    s = (torch.rand(8, 2) + 0.5).requires_grad_()
    w, w_s = torch.randn(256, 256).to(torch.float8_e4m3fn), torch.rand(2, 2) + 0.5
    grad = torch.randn(8, 256, dtype=torch.bfloat16)
    got = torch.autograd.grad(fp8_gemms.block_scaled_mm(q, s, w, w_s), (q, s), grad)
    x = (q.float().unflatten(-1, (-1, 128)) * s.unsqueeze(-1)).flatten(-2)
    wf = w.float() * w_s.repeat_interleave(128, 0).repeat_interleave(128, 1)
    want = torch.autograd.grad((x @ wf.t()).to(torch.bfloat16), (q, s), grad)
    assert got[0].dtype == torch.float8_e4m3fn and torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8))
    assert torch.equal(got[1], want[1])
