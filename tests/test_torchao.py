"""torchao's real float8 activation quantisation under the pass (issue 17: code from other projects).

``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` on transformers' ``LlamaMLP``:
torchao quantises ``down_proj``'s input ``act_fn(gate_proj(x)) * up_proj(x)`` per row
(``torchao/float8/inference.py``, ``torchao/quantization/quant_primitives.py``: amax in bf16,
``amax / 448`` in bf16, then fp32, ``x.float() / scale``, clamp, e4m3), which the recogniser fuses
to its recipe (per token, the scale computed in the input dtype, no floor). torchao refuses to
quantise without an sm89+ GPU; ``torch._scaled_mm`` runs on the CPU in torch 2.13, so the check
is bypassed here.
"""

from __future__ import annotations

import pytest
import torch

import quantfuse

torchao = pytest.importorskip("torchao")
from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quant_api, quantize_  # noqa: E402
from transformers import LlamaConfig  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaMLP  # noqa: E402


def _mlp(monkeypatch, config=None):
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    # every compile runs the pass (a cached graph would skip it)
    monkeypatch.setattr(torch._inductor.config, "force_disable_caches", True)
    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=256, intermediate_size=512, hidden_act="silu")).to(torch.bfloat16).eval()
    quantize_(mlp, config or Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return mlp


def test_torchao_float8_per_row_activation_quant_is_fused(monkeypatch):
    mlp = _mlp(monkeypatch)
    x = torch.randn(2, 9, 256, dtype=torch.bfloat16) * 2
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    torch._dynamo.reset()
    compiled = torch.compile(mlp, options={"post_grad_custom_post_pass": fusion})
    with torch.no_grad():
        eager, fused = mlp(x), compiled(x)
    torch._dynamo.reset()
    (graph,) = fusion.report.graphs
    (r,) = graph.rewrites
    assert r.fused_op == "quantfuse.silu_and_mul_per_token_quant_fp8" and r.params["up"]
    assert r.params["recipe"] == "floor_at=none,step_dtype=input"
    assert "modeling_llama.py" in r.source
    # torchao's quantisations of x itself (gate_proj, up_proj inputs) are no act -> quant site
    assert graph.near_misses == []
    # the model's output also runs Inductor's code for the unfused parts (torchao's quantisation of
    # x: Inductor keeps amax / 448 in fp32 where eager rounds it to bf16), which differs from eager
    # by itself: the pass must not add to that difference
    torch._dynamo.reset()
    with torch.no_grad():
        plain = torch.compile(mlp)(x)
    torch._dynamo.reset()

    def rel(a):
        return ((eager.float() - a.float()).norm() / eager.float().norm()).item()
    assert rel(fused) <= rel(plain) * 1.25 + 1e-3, (rel(fused), rel(plain))


def test_torchao_site_is_kept_for_speed_on_the_cpu_by_default(monkeypatch):
    mlp = _mlp(monkeypatch)
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=False))
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(mlp, options={"post_grad_custom_post_pass": fusion})(torch.randn(4, 256, dtype=torch.bfloat16))
    torch._dynamo.reset()
    (graph,) = fusion.report.graphs
    assert graph.rewrites == [] and [m.reason.split(":")[0] for m in graph.near_misses] == ["kept for speed"]


def test_torchao_site_is_rewritten_on_a_gpu_graph(monkeypatch):
    """The pass decision for a GPU graph (the site's input faked onto the meta device, as
    tests/test_moe.py does): torchao's per-row recipe (no floor, the scale computed in bf16) is one
    the CUDA and Triton kernels compute, so the site is rewritten, not kept for speed."""
    from helpers import post_grad_graph
    from quantfuse import catalog
    from quantfuse.patterns import recognise

    mlp = _mlp(monkeypatch)
    with torch.no_grad():
        gm = post_grad_graph(mlp, torch.randn(4, 256, dtype=torch.bfloat16))
    (q, ys, scale), = recognise.find_candidates(gm.graph)  # the activation's quant only
    config = quantfuse.FusionConfig(native_on_cpu=False)
    site = recognise.read_site(q, next(iter(ys)), scale, config)
    assert (site.recipe.floor_at, site.recipe.step_dtype) == (catalog.FloorAt.NONE, catalog.StepDtype.INPUT)
    assert recognise.should_fuse(site, config).startswith("kept for speed")  # a CPU graph
    site.x.meta["val"] = torch.empty(site.x.meta["val"].shape, dtype=torch.bfloat16, device="meta")
    if site.up is not None:
        site.up.meta["val"] = torch.empty(site.up.meta["val"].shape, dtype=torch.bfloat16, device="meta")
    assert recognise.should_fuse(site, config) is None


def test_torchao_default_per_tensor_activation_quant_is_fused(monkeypatch):
    """torchao's default float8 config quantises activations per tensor (one dynamic amax over the
    whole tensor, in bf16, then ``amax / 448`` in bf16 and fp32): the SiLU x Mul site is fused to
    the per-tensor op with that recipe, and the model stays as close to eager as without the pass."""
    config = Float8DynamicActivationFloat8WeightConfig()
    assert [type(g).__name__ for g in config.granularity] == ["PerTensor", "PerTensor"]
    mlp = _mlp(monkeypatch, config)
    x = torch.randn(2, 9, 256, dtype=torch.bfloat16) * 2
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    torch._dynamo.reset()
    with torch.no_grad():
        eager, fused = mlp(x), torch.compile(mlp, options={"post_grad_custom_post_pass": fusion})(x)
        torch._dynamo.reset()
        plain = torch.compile(mlp)(x)
    torch._dynamo.reset()
    (graph,) = fusion.report.graphs
    (r,) = graph.rewrites
    assert (r.fused_op, r.quant_key) == ("quantfuse.silu_and_mul_per_tensor_quant_fp8", "kFp8DynamicTensorSym")
    assert r.params["recipe"] == "floor_at=none,step_dtype=input" and r.params["up"]
    assert "modeling_llama.py" in r.source and graph.near_misses == []

    def rel(a):
        return ((eager.float() - a.float()).norm() / eager.float().norm()).item()
    assert rel(fused) <= rel(plain) * 1.25 + 1e-3, (rel(fused), rel(plain))
