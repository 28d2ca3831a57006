"""The pass inside mixture-of-experts layers written in PyTorch (issue 19): the plain layer of
``examples/fp8_moe.py``, a batched ``[E, C, 2I]`` layer, transformers' ``grouped_mm`` /
``batched_mm`` experts forwards, and the five conditions under which inference engines fuse
SiLU×Mul + FP8 1x128 by hand (each fused here, or a near miss with its reason).

Every test traces the post-grad graph once (no code generation), runs the pass on it, and
compares the rewritten graph with eager bit for bit.
"""

from __future__ import annotations

import pathlib
import re
import sys

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from quantfuse import catalog
from helpers import count_targets, post_grad_graph, post_grad_graph_and_inputs

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))
import fp8_gemms  # noqa: E402
import fp8_moe  # noqa: E402

FP8 = torch.float8_e4m3fn


def _bits(t):
    return t.view(torch.uint8) if t.dtype == FP8 else t


def fuse(fn, *args, rewrites=1):
    """The post-grad graph of ``fn(*args)`` before and after the pass, and the report; asserts
    ``rewrites`` rewrites, no near miss, fewer nodes, and every output equal to eager's bits."""
    with torch.no_grad():
        gm, inputs = post_grad_graph_and_inputs(fn, *args)
        before = len(gm.graph.nodes)
        fusion = quantfuse.FusionPass(quantfuse.FusionConfig())
        fusion(gm.graph)
        gm.recompile()
        report = fusion.report
        assert len(report.rewrites) == rewrites and report.near_misses == [], str(report)
        assert count_targets(gm, "quantfuse.") == rewrites
        assert len(gm.graph.nodes) < before if rewrites else len(gm.graph.nodes) == before
        eager, fused = fn(*args), gm(*inputs)
    eager = eager if isinstance(eager, tuple) else (eager,)
    assert len(eager) == len(fused)
    for e, f in zip(eager, fused):
        assert e.shape == f.shape and e.dtype == f.dtype and torch.equal(_bits(e), _bits(f))
    return report


def near_miss(fn, *args):
    """The one near miss the pass reports for ``fn(*args)`` (the graph left as it was)."""
    with torch.no_grad():
        gm = post_grad_graph(fn, *args)
        before = str(gm.graph)
        fusion = quantfuse.FusionPass(quantfuse.FusionConfig())
        fusion(gm.graph)
    assert fusion.report.rewrites == [] and str(gm.graph) == before, str(fusion.report)
    (miss,) = fusion.report.near_misses
    return miss.reason


def tokens(n=24, hidden=256):
    torch.manual_seed(1)
    return torch.randn(n, hidden, dtype=torch.bfloat16)


# --- the plain-PyTorch layer of examples/fp8_moe.py ---------------------------------------------

GROUP_128 = {"group_size": 128, "column_major_scales": False, "use_ue8m0": False}
LAYERS = {
    # (activation, scales, ue8m0): (scheme, the fused op's parameters, recipe=)
    ("silu", "token", False): ("fp8_per_token", {}, None),
    ("silu", "block", False): ("fp8_per_group", GROUP_128, None),
    ("silu", "block", True): ("fp8_per_group", GROUP_128, "ue8m0=exp2"),
    ("relu2", "token", False): ("fp8_per_token", {}, None),
    ("relu2", "block", False): ("fp8_per_group", GROUP_128, None),
}


@pytest.mark.parametrize("activation,scales,ue8m0", list(LAYERS))
def test_plain_moe_layer_fused(activation, scales, ue8m0):
    """Router, top-k, tokens sorted by expert, FP8 grouped GEMMs, weighted combine: the quant of
    the gathered tokens (no activation) is left alone, the activation's quant is fused."""
    scheme, params, recipe = LAYERS[activation, scales, ue8m0]
    model = fp8_moe.build(scales=scales, ue8m0=ue8m0, activation=activation)
    (r,) = fuse(model, tokens()).rewrites
    act = "silu_and_mul" if activation == "silu" else "relu2"
    assert (r.activation, r.scheme) == (act, scheme)
    assert r.fused_op == f"quantfuse.{catalog.fused_op_name(act, scheme)}"
    assert r.input_shape == (48, 512 if activation == "silu" else 256)  # tokens * top-k rows, sorted
    assert {k: v for k, v in r.params.items() if k != "recipe"} == params
    assert r.params.get("recipe") == recipe
    assert "fp8_moe.py" in r.source and ("F.silu(gate) * up" in r.source or "F.relu(h)" in r.source)


# --- the batched [E, C, 2I] form ----------------------------------------------------------------

def batched_moe(x, router, w_up, w_down, k):
    """Every expert's capacity is every token (C = T): ``bmm`` over ``[E, C, H]``, the activation
    over ``[E, C, 2I]``, the per-token quant over the last dim of a 3D tensor, the routing weights
    (zero for tokens not routed to an expert) applied in the combine."""
    e = w_up.shape[0]
    probs = torch.softmax(F.linear(x, router).float(), dim=-1)
    top, ids = torch.topk(probs, k, dim=-1)
    dense = torch.zeros_like(probs).scatter(-1, ids, top / top.sum(-1, keepdim=True))  # [T, E]
    h = torch.bmm(x.expand(e, *x.shape), w_up.transpose(1, 2))  # [E, C, 2I]
    gate, up = h.chunk(2, dim=-1)
    q, s = fp8_moe.quant_fp8(F.silu(gate) * up)
    out = torch.bmm((q.float() * s).to(torch.bfloat16), w_down.transpose(1, 2))  # [E, C, H]
    return (out.float() * dense.t().unsqueeze(-1)).sum(0).to(x.dtype), q, s


def test_batched_experts_fused():
    torch.manual_seed(0)
    e, h, i = 4, 256, 256
    args = (tokens(), torch.randn(e, h, dtype=torch.bfloat16) / 16, torch.randn(e, 2 * i, h, dtype=torch.bfloat16) / 16,
            torch.randn(e, h, i, dtype=torch.bfloat16) / 16)
    (r,) = fuse(lambda *a: batched_moe(*a, k=2), *args).rewrites
    assert (r.activation, r.scheme, r.input_shape) == ("silu_and_mul", "fp8_per_token", (e, 24, 2 * i))


# --- transformers' experts implementations --------------------------------------------------------

def fp8_grouped_mm(input, weight, offs):
    """A W8A8 grouped GEMM in PyTorch in place of transformers' ``_grouped_mm``: the input
    quantised per 1x128 group as a Triton FP8 MoE does, then an FP8 grouped GEMM (the
    examples' opaque stand-in: it dequantises and multiplies in bf16)."""
    q, s = fp8_moe.quant_fp8(input, "block")
    return fp8_gemms.grouped_mm(q, s, weight, offs)


def fp8_batched_linear(input, weight, bias=None, is_transposed=False):
    """The same in place of transformers' ``_batched_linear`` (one expert's weight per row)."""
    q, s = fp8_moe.quant_fp8(input, "block")
    return fp8_gemms.batched_mv(q, s, weight)


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm"])
def test_transformers_experts_fused(implementation, monkeypatch):
    """transformers' own experts forwards (``grouped_mm_experts_forward``: tokens sorted by
    expert, histc offsets, gather and inverse permutation; ``batched_mm_experts_forward``: one
    expert weight gathered per row) in Qwen3-MoE's sparse block, with the GEMMs FP8 in PyTorch:
    the activation's quant feeding the down projection is fused, the hidden states' is left."""
    transformers = pytest.importorskip("transformers")
    from transformers.integrations import moe
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    monkeypatch.setattr(moe, "_grouped_mm", fp8_grouped_mm)
    monkeypatch.setattr(moe, "_batched_linear", fp8_batched_linear)
    cfg = transformers.Qwen3MoeConfig(hidden_size=256, moe_intermediate_size=256, num_experts=8,
                                      num_experts_per_tok=2, hidden_act="silu")
    cfg._experts_implementation = implementation
    torch.manual_seed(0)
    block = Qwen3MoeSparseMoeBlock(cfg).to(torch.bfloat16).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.05)
    (r,) = fuse(block, tokens().unsqueeze(0)).rewrites
    assert (r.activation, r.scheme, r.input_shape) == ("silu_and_mul", "fp8_per_group", (48, 512))
    assert r.params["group_size"] == 128 and "act_fn(gate) * up" in r.source


# --- the five conditions of the engines' hand-written fusion ----------------------------------
# gated SiLU, FP8 W8A8, 128x128 weight blocks, no LoRA reading the intermediate, not UE8M0

class LoRAMoE(fp8_moe.FP8MoE):
    """A LoRA adapter on the down projection reads the activation output (the intermediate)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        i, h = self.shape.inter, self.shape.hidden
        self.lora_a = torch.nn.Parameter(torch.randn(8, i, dtype=torch.bfloat16) / 16, requires_grad=False)
        self.lora_b = torch.nn.Parameter(torch.randn(h, 8, dtype=torch.bfloat16) / 16, requires_grad=False)

    def down(self, y, offs):
        return super().down(y, offs) + F.linear(F.linear(y, self.lora_a), self.lora_b)


class GeluMoE(fp8_moe.FP8MoE):
    """Gated GELU (GeGLU) experts."""

    def act(self, h):
        gate, up = h.chunk(2, dim=-1)
        return F.gelu(gate) * up


class Group32MoE(fp8_moe.FP8MoE):
    """FP8 activations with 1x32 groups (no fused op has that group size)."""

    def down(self, y, offs):
        yg = y.float().unflatten(-1, (-1, 32))
        s = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / fp8_moe.FP8_MAX
        a = (yg / s).clamp(-fp8_moe.FP8_MAX, fp8_moe.FP8_MAX).to(FP8).float() * s
        return torch._grouped_mm(a.flatten(-2).to(torch.bfloat16), self.w_down_ref.transpose(-2, -1), offs=offs)


def _layer(cls, **kwargs):
    torch.manual_seed(0)
    return cls(fp8_moe.SHAPES["small"], torch.device("cpu"), **kwargs).eval()


def test_lora_reading_the_activation_is_a_near_miss():
    reason = near_miss(_layer(LoRAMoE, scales="block"), tokens())
    assert re.match(r"activation output `mul(_\d+)?` ", reason), reason
    assert " has a consumer outside the pattern: " in reason and reason.split(": ")[-1].startswith("mm")


def test_another_gated_activation_is_a_near_miss():
    assert near_miss(_layer(GeluMoE, scales="block"), tokens()) == (
        f"the activation uses erf (`erf`): not a fused activation ({', '.join(catalog.ACTIVATIONS)})")


def test_another_activation_group_size_is_a_near_miss():
    assert near_miss(_layer(Group32MoE), tokens()) == "group size 32 is not supported (supported: 64, 128)"


@pytest.mark.parametrize("ue8m0", [False, True])
def test_the_decision_on_a_gpu_graph(ue8m0):
    """On a GPU graph the 1x128 site is fused, UE8M0 written as exp2(ceil(log2(s))) (DeepSeek-V3's
    and vLLM's spelling) included: the CUDA per-group kernel computes that recipe with the math
    library functions eager's kernels call."""
    from quantfuse.patterns import recognise

    with torch.no_grad():
        gm = post_grad_graph(_layer(fp8_moe.FP8MoE, scales="block", ue8m0=ue8m0), tokens())
    config = quantfuse.FusionConfig()
    (q, ys, scale), = recognise.find_candidates(gm.graph)  # the activation's quant only
    site = recognise.read_site(q, next(iter(ys)), scale, config)
    assert recognise.should_fuse(site, config) is None  # CPU graph (QUANTFUSE_NATIVE_ON_CPU=1)
    assert (site.recipe.ue8m0 is catalog.Ue8m0.EXP2_CEIL_LOG2) == ue8m0
    site.x.meta["val"] = torch.empty(site.x.meta["val"].shape, dtype=torch.bfloat16, device="meta")
    assert recognise.should_fuse(site, config) is None


class Relu2Mxfp8MoE(fp8_moe.FP8MoE):
    """Non-gated squared ReLU experts with MXFP8 activations (blocks of 32, E8M0 bytes)."""

    def down(self, y, offs):
        from test_recognise import mx8_quant

        q, s = mx8_quant(y, rceil=True)
        return fp8_gemms.mx_grouped_mm(q, s, self.w_down_ref.transpose(-2, -1), offs)


def test_relu2_mxfp8_experts_fused():
    (r,) = fuse(_layer(Relu2Mxfp8MoE, activation="relu2"), tokens()).rewrites
    assert (r.activation, r.scheme, r.fused_op) == ("relu2", "mxfp8", "quantfuse.relu2_mxfp8_quant")
    assert r.params == {"scale_rounding": "rceil", "is_sf_swizzled_layout": False, "recipe": "mx_byte0=exp2"}


def test_example_main_on_the_cpu(capsys):
    """``python examples/fp8_moe.py`` at the small shape: one site fused, the layer's output with the
    pass bit-identical to the output without it (and to eager), exit code 0."""
    assert fp8_moe.main(["--device", "cpu", "--tokens", "16"]) == 0
    out = capsys.readouterr().out
    assert "quantfuse: 1 rewrite(s), 0 near miss(es)" in out
    assert "fused  fp8_moe.py:" in out and "return F.silu(gate) * up" in out
    assert "as quantfuse.silu_and_mul_per_token_quant_fp8" in out and "recipe=" not in out  # the kernels' recipe
    assert "on bfloat16[32, 512]" in out
    assert "max |with pass - without| = 0; max |with pass - eager| = 0" in out and out.rstrip().endswith("OK")
