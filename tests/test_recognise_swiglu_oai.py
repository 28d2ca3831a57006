"""The recogniser on GPT-OSS's clamped SwiGLU (``swigluoai_and_mul``) as transformers writes it.

transformers' own ``GptOssExperts`` runs under the pass (``batched_mm`` and ``grouped_mm``
experts implementations, a tiny config, CPU: ``tests/conftest.py`` sets
``QUANTFUSE_NATIVE_ON_CPU=1``), with an FP8 quantisation of the activation's output where a
W8A8 down projection quantises its input: only that linear is replaced, the activation is
transformers' ``GptOssExperts._apply_gate``. The fused result equals eager running the same code,
bit for bit. Traced post-grad graphs check the variants: other alpha / limit (read off the
literals), halves and two tensors, every FP8 scheme, and the spellings that compute something
else (no clamp on up, no ``+ 1``, another association), which are reported, never fused.
"""

from __future__ import annotations

import inspect
import pathlib
import sys
import types

import pytest
import torch

import quantfuse
from quantfuse import catalog
from test_recognise import (_near_miss, assert_fused_equals_eager, mx8_quant, vllm_group_quant,
                            vllm_static_quant, vllm_token_quant)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import fp8_gemms  # noqa: E402

moe = pytest.importorskip("transformers.integrations.moe")
gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")

ACT = catalog.SWIGLUOAI_AND_MUL
DEFAULTS = ACT.defaults


def _apply_gate(alpha=DEFAULTS["alpha"], limit=DEFAULTS["limit"]):
    """transformers' own ``GptOssExperts._apply_gate`` with the given parameters (it reads only these)."""
    experts = types.SimpleNamespace(alpha=alpha, limit=limit)
    return lambda gate_up: gpt_oss.GptOssExperts._apply_gate(experts, gate_up)


# --- transformers' GptOssExperts, compiled whole ---------------------------------------------------

#: the experts' hidden and intermediate sizes
INTERMEDIATE = 256


def _experts(implementation: str, alpha: float, limit: float):
    cfg = gpt_oss.GptOssConfig(hidden_size=INTERMEDIATE, intermediate_size=INTERMEDIATE, num_local_experts=4, num_experts_per_tok=2,
                               swiglu_limit=limit, num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=1, head_dim=32)
    cfg.swiglu_alpha = alpha  # GptOssConfig keeps transformers' 1.702 unless told otherwise
    cfg._experts_implementation = implementation
    torch.manual_seed(0)
    experts = gpt_oss.GptOssExperts(cfg).to(torch.bfloat16).eval()
    with torch.no_grad():
        # gate_up = hidden @ W + b is exact in bf16 (inputs in {-1, 0, 1}, sparse weights and
        # biases in quarters: every sum is a multiple of 1/4 below 64), so Inductor's GEMM, whatever
        # its order, gives eager's gate_up; the activation sees values past +-limit
        w = torch.randint(-4, 5, experts.gate_up_proj.shape) / 4 * (torch.rand(experts.gate_up_proj.shape) < 0.1)
        experts.gate_up_proj.copy_(w)
        experts.gate_up_proj_bias.copy_(torch.randint(-16, 17, experts.gate_up_proj_bias.shape) / 4)
        # the down projection passes the dequantised activation through exactly (identity
        # weights, no bias): the experts' output is then computed without rounding after the
        # quantisation (the routing weights are powers of two), by eager and Inductor alike, and
        # equal outputs mean equal FP8 codes and scales
        experts.down_proj.copy_(torch.eye(INTERMEDIATE).expand_as(experts.down_proj))
        experts.down_proj_bias.zero_()
    return experts


def _fp8_down(monkeypatch, linear: str, group: int | None):
    """A W8A8 down projection: the experts' second linear quantises its input to FP8 (per group
    of ``group``, or per token) and multiplies the dequantised values (the quant step a user
    adds; the activation before it is transformers' own)."""
    original = getattr(moe, linear)

    def fp8_linear(input, weight, *args, **kwargs):
        if input.shape[-1] != INTERMEDIATE:  # the gate_up projection
            return original(input, weight, *args, **kwargs)
        q, s = vllm_group_quant(input, group) if group else vllm_token_quant(input)
        a = inspect.signature(original).bind(input, weight, *args, **kwargs)
        a.apply_defaults()
        a = a.arguments
        # the examples' opaque FP8 GEMMs (they dequantise and multiply in bf16), for
        # transformers' [E, N, K] weights (is_transposed: [E, K, N])
        if linear == "_grouped_linear":
            out = fp8_gemms.grouped_mm(q, s, weight if a["is_transposed"] else weight.transpose(-2, -1), a["offs"])
        else:
            out = fp8_gemms.batched_mv(q, s, weight.transpose(-2, -1) if a["is_transposed"] else weight)
        return out if a["bias"] is None else out + a["bias"]

    monkeypatch.setattr(moe, linear, fp8_linear)


@pytest.mark.parametrize("alpha,limit", [(DEFAULTS["alpha"], DEFAULTS["limit"]), (1.3, 7.1)])
@pytest.mark.parametrize("group", [128, None])
@pytest.mark.parametrize("implementation,linear", [("batched_mm", "_batched_linear"),
                                                   ("grouped_mm", "_grouped_linear")])
def test_transformers_gpt_oss_experts_fused_bit_exact(monkeypatch, implementation, linear, group, alpha, limit):
    _fp8_down(monkeypatch, linear, group)
    experts = _experts(implementation, alpha, limit)
    torch.manual_seed(1)
    tokens = 6
    hidden = torch.randint(-1, 2, (tokens, INTERMEDIATE)).bfloat16()
    index = torch.stack([torch.arange(tokens) % 4, (torch.arange(tokens) + 1) % 4], -1)
    weights = torch.tensor([0.5, 0.25]).bfloat16().expand(tokens, 2).contiguous()  # exact products
    fusion = quantfuse.FusionPass()
    torch._dynamo.reset()
    compiled = torch.compile(experts, fullgraph=True, options={"post_grad_custom_post_pass": fusion,
                                                               "fx_graph_cache": False})
    with torch.no_grad():
        got, want = compiled(hidden, index, weights), experts(hidden, index, weights)
    torch._dynamo.reset()
    report = fusion.report
    assert report.near_misses == [], str(report)
    (r,) = report.rewrites
    scheme = "fp8_per_group" if group else "fp8_per_token"
    assert r.pattern == f"recognised:swigluoai_and_mul[interleaved]+{scheme}", str(report)
    assert r.fused_op == f"quantfuse.{catalog.fused_op_name(ACT.name, scheme)}"
    # the clamp bound as the 16-bit clamp stores it: eager's bf16 clamp at 7.1 is the clamp at
    # bf16(7.1) (the canonical evaluator reads the stored constant), the same bits (asserted above)
    assert (r.params["interleaved"], r.params["alpha"], r.params["limit"]) == (True, alpha, _stored(limit, torch.bfloat16))
    assert "_apply_gate" in r.source
    # the site's nodes (two slices, two clamps with their casts, the gate's ops, the quant) became
    # one call and its getitems; the gate_up bias add before it stays
    assert report.nodes_before - report.nodes_after >= 15, str(report)
    assert torch.equal(got, want)


# --- traced post-grad graphs: the variants ---------------------------------------------------------

def _gate_up(dtype=torch.bfloat16, tokens=6, width=512):
    """Values past +-limit and infinities where both readings (interleaved, halves) clamp them
    (a -inf gate makes -inf * 0 = NaN, and a NaN scale, which the bit-equality helper does not take)."""
    torch.manual_seed(2)
    x = torch.randn(tokens, width) * 6
    x[0, :6] = torch.tensor([100.0, float("inf"), -100.0, 50.0, -0.0, 100.0])
    x[0, -6:] = torch.tensor([100.0, -float("inf"), -0.0, 50.0, -50.0, 7.0])
    return x.to(dtype)


def _stored(value: float, dtype: torch.dtype) -> float:
    """``value`` as a tensor of ``dtype`` holds it."""
    return torch.tensor(value, dtype=dtype).item() if dtype != torch.float32 else value


@pytest.mark.parametrize("dtype", catalog.INPUT_DTYPES)
@pytest.mark.parametrize("alpha,limit", [(DEFAULTS["alpha"], DEFAULTS["limit"]), (1.3, 7.1), (2.0, 0.5)])
def test_parameters_are_read_from_the_literals(alpha, limit, dtype):
    """Another alpha / limit fuses with its own values; a limit no 16-bit dtype holds (7.1) as the
    16-bit clamp stores it (the same clamp of 16-bit values, bit-exact with eager)."""
    bias = torch.randn(512).to(dtype)
    report = assert_fused_equals_eager(lambda x, b: vllm_group_quant(_apply_gate(alpha, limit)(x + b), 128),
                                       _gate_up(dtype), bias)
    (r,) = report.rewrites
    assert (r.params["alpha"], r.params["limit"], r.params["interleaved"]) == (alpha, _stored(limit, dtype), True)
    assert r.activation == ACT.name and r.input_shape == (6, 512)


def _halves(x):
    d = x.shape[-1] // 2
    return x[..., :d], x[..., d:]


def _oai(gate, up, alpha=DEFAULTS["alpha"], limit=DEFAULTS["limit"]):
    """GptOssExperts._apply_gate's maths on gate and up given apart (vLLM's forward_native too)."""
    gate = gate.clamp(min=None, max=limit)
    up = up.clamp(min=-limit, max=limit)
    glu = gate * torch.sigmoid(gate * alpha)
    return (up + 1) * glu


def test_halves_and_two_tensors():
    x = _gate_up()
    report = assert_fused_equals_eager(lambda x: vllm_group_quant(_oai(*_halves(x)), 128), x)
    assert report.rewrites[0].pattern == "recognised:swigluoai_and_mul[halves]+fp8_per_group"
    assert "interleaved" not in report.rewrites[0].params
    g, u = _halves(x)
    report = assert_fused_equals_eager(lambda g, u: vllm_token_quant(_oai(g, u)), g.contiguous(), u.contiguous())
    assert report.rewrites[0].pattern == "recognised:swigluoai_and_mul[separate]+fp8_per_token"


def test_operand_orders_and_sigmoid_argument_order():
    """The same ops with commuted operands and up clamped in the other order: one meaning."""
    def spelled(x):
        gate, up = x[..., ::2], x[..., 1::2]
        gate = torch.clamp(gate, max=7.0)
        up = up.clamp(max=7.0).clamp(min=-7.0)
        return (gate * torch.sigmoid(1.702 * gate)) * (1 + up)

    report = assert_fused_equals_eager(lambda x: vllm_group_quant(spelled(x), 64), _gate_up())
    assert report.rewrites[0].params["group_size"] == 64


@pytest.mark.parametrize("scheme", ["fp8_per_group", "fp8_per_token", "fp8_static", "mxfp8"])
def test_every_fp8_scheme(scheme):
    act = _apply_gate()
    x = _gate_up()
    if scheme == "fp8_static":
        report = assert_fused_equals_eager(lambda x, s: vllm_static_quant(act(x), s), x, torch.tensor([0.03]))
    else:
        quant = {"fp8_per_group": lambda y: vllm_group_quant(y, 128, column_major=True, use_ue8m0=True),
                 "fp8_per_token": vllm_token_quant, "mxfp8": mx8_quant}[scheme]
        report = assert_fused_equals_eager(lambda x: quant(act(x)), x)
    assert report.rewrites[0].pattern == f"recognised:swigluoai_and_mul[interleaved]+{scheme}"


def _near(act, x=None):
    return _near_miss(lambda x: vllm_group_quant(act(x), 128), _gate_up() if x is None else x)


def _interleaved(fn):
    return lambda x: fn(x[..., ::2], x[..., 1::2])


NEAR = {
    "no clamp on up": (lambda g, u: (u + 1) * (g.clamp(max=7.0) * torch.sigmoid(g.clamp(max=7.0) * 1.702)),
                       "up is not clamped (up.clamp(-limit, limit))"),
    "no clamp on gate": (lambda g, u: (u.clamp(-7.0, 7.0) + 1) * (g * torch.sigmoid(g * 1.702)),
                         "the gate is not clamped from above (gate.clamp(max=limit))"),
    "up + 1 missing": (lambda g, u: (lambda g: u.clamp(-7.0, 7.0) * (g * torch.sigmoid(g * 1.702)))(g.clamp(max=7.0)),
                       "the clamped up is not offset by one ((up + 1) * ...)"),
    "another up limit": (lambda g, u: (lambda g: (u.clamp(-6.0, 6.0) + 1) * (g * torch.sigmoid(g * 1.702)))(
        g.clamp(max=7.0)), "up is clamped to [-6.0, 6.0] where GPT-OSS clamps it to [-limit, limit] with the "
                           "gate's limit 7.0"),
    "no alpha": (lambda g, u: (lambda g: (u.clamp(-7.0, 7.0) + 1) * (g * torch.sigmoid(g)))(g.clamp(max=7.0)),
                 "the sigmoid does not take the gate times a constant (sigmoid(gate * alpha))"),
}


@pytest.mark.parametrize("name", sorted(NEAR))
def test_spellings_that_compute_something_else_are_near_misses(name):
    fn, reason = NEAR[name]
    assert _near(_interleaved(fn)) == reason


def test_other_association_is_a_near_miss():
    """Multiplying (up + 1) by the gate before the sigmoid rounds unlike eager's op-by-op
    execution of transformers' code: reported with the expression it computes."""
    def assoc(g, u):
        g = g.clamp(max=7.0)
        return (u.clamp(-7.0, 7.0) + 1) * g * torch.sigmoid(g * 1.702)

    reason = _near(_interleaved(assoc))
    assert reason.startswith("the activation computes ") and "in that order (each op rounded to bfloat16" in reason


def test_silu_sites_keep_their_reading():
    """A site without GPT-OSS's clamps is read as before (SiLU x Mul, no parameters)."""
    x = _gate_up()
    d = x.shape[-1] // 2
    report = assert_fused_equals_eager(lambda x: vllm_group_quant(torch.nn.functional.silu(x[..., :d]) * x[..., d:],
                                                                  128), x)
    assert report.rewrites[0].activation == "silu_and_mul" and "alpha" not in report.rewrites[0].params
