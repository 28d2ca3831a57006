"""The fused op's call in the rewritten graph: positional arguments, defaults left out
(quantfuse/patterns/op_call.py). Inductor's wrapper calls the op with the node's own args and
kwargs, so the node's form is the per-call cost the host pays."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from quantfuse import catalog
from quantfuse.patterns.op_call import positional_call
from helpers import post_grad_graph

FP8 = torch.float8_e4m3fn


def _op(name):
    return getattr(torch.ops.quantfuse, name).default


def _schema_kwargs(op):
    """Every argument after x by name, at its default (the call the kwargs form spells out)."""
    return {a.name: a.default_value for a in op._schema.arguments[1:] if a.has_default_value()}


@pytest.mark.parametrize("name", sorted(e.name for e in catalog.OPS.values() if not e.tensor_inputs))
def test_all_defaults_leave_only_required_positionals(name):
    op = _op(name)
    required = [a.name for a in op._schema.arguments[1:] if not a.has_default_value()]
    kwargs = {**_schema_kwargs(op), **{n: 128 for n in required}}
    args, rest = positional_call(op, ("x",), kwargs)
    assert args == ("x",) + (128,) * len(required)
    assert rest == {}


def test_a_non_default_keeps_the_positionals_before_it():
    op = _op("silu_and_mul_per_block_quant")
    args, rest = positional_call(op, ("x",), {"group_size": 64, "use_ue8m0": True, "up": "u", "recipe": ""})
    assert args == ("x", 64, False, True, "u")
    assert rest == {}


def test_keyword_only_arguments_stay_keywords_where_they_differ():
    op = _op("silu_and_mul_mxfp8_quant")
    args, rest = positional_call(op, ("x",), {"scale_rounding": "rceil", "is_sf_swizzled_layout": False,
                                               "interleaved": True, "recipe": "mx_rounding=floor"})
    assert args == ("x",)
    assert rest == {"interleaved": True, "recipe": "mx_rounding=floor"}


def test_a_missing_required_argument_is_named():
    with pytest.raises(TypeError, match="group_size"):
        positional_call(_op("silu_and_mul_per_block_quant"), ("x",), {"column_major_scales": True})


@pytest.mark.parametrize("name,kwargs", [
    ("silu_and_mul_per_block_quant", {"group_size": 128, "column_major_scales": True, "use_ue8m0": False}),
    ("silu_and_mul_mxfp8_quant", {"scale_rounding": "floor", "is_sf_swizzled_layout": False}),
    ("swigluoai_and_mul_per_token_quant_fp8", {"interleaved": True}),
])
def test_same_outputs_as_the_keyword_call(name, kwargs):
    op = _op(name)
    x = torch.randn(5, 512, dtype=torch.bfloat16) * 3
    args, rest = positional_call(op, (x,), kwargs)
    want, got = op(x, **kwargs), op(*args, **rest)
    for w, g in zip(want, got):
        assert w.stride() == g.stride()
        assert torch.equal(w.contiguous().view(torch.uint8), g.contiguous().view(torch.uint8))


def test_rewritten_node_is_positional():
    def f(x):
        d = x.shape[-1] // 2
        y = F.silu(x[..., :d]) * x[..., d:]
        yg = y.float().unflatten(-1, (-1, 128))
        s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
        return (yg / s).clamp(-448.0, 448.0).to(FP8).flatten(-2), s.squeeze(-1)

    gm = post_grad_graph(f, torch.randn(4, 512, dtype=torch.bfloat16))
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    fusion(gm.graph)
    assert len(fusion.report.rewrites) == 1, str(fusion.report)
    (node,) = [n for n in gm.graph.nodes if n.target is _op("silu_and_mul_per_block_quant")]
    assert node.args[1:] == (128,) and node.kwargs == {}
