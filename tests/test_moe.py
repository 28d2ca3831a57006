"""The pass inside mixture-of-experts layers written in PyTorch (issue 19): the plain layer of
``examples/fp8_moe.py``, a batched ``[E, C, 2I]`` layer, transformers' ``grouped_mm`` /
``batched_mm`` experts forwards, and the five conditions under which inference engines fuse
SiLU×Mul + FP8 1x128 by hand (each fused here, or a near miss with its reason).

Every test traces the post-grad graph once (no code generation), runs the pass on it, and
compares the rewritten graph with eager bit for bit.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from quantfuse import catalog
from helpers import count_targets, post_grad_graph, post_grad_graph_and_inputs

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))
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
