"""The pass's last step (``quantfuse.passes.planned_outputs``): every quantfuse call of a
post-grad graph becomes ``empty_strided`` buffers plus its ``out`` overload, the graph computes
the same bits, and Inductor's code for it calls the ``out`` overload on buffers it allocates,
with no tuple index or output asserts. On the CPU the step is off by default (``pays_on``), so
the tests force it."""

from __future__ import annotations

import re

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass

import quantfuse
from quantfuse import catalog
from quantfuse.custom_ops.plan import expert_offsets
from quantfuse.passes import planned_outputs
from torch.utils._sympy.functions import FloorDiv
from helpers import (compiled_and_code, count_targets, example_call, post_grad_graph, post_grad_graph_and_inputs,
                     same_bits)

TOKENS, HIDDEN = 6, 256
ENTRIES = [pytest.param(e, id=name) for name, e in catalog.OPS.items()]


def _always(device) -> bool:
    return True


def _op_form(entry):
    op = getattr(torch.ops.quantfuse, entry.name)

    def f(*args):
        return op(*args)
    return f


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_op_call_becomes_its_out_overload_and_computes_the_same(entry):
    args = example_call(entry, TOKENS, HIDDEN, expert_counts=(2, TOKENS - 2))
    gm, inputs = post_grad_graph_and_inputs(_op_form(entry), *args)
    name = f"quantfuse.{entry.name}."
    assert count_targets(gm, name + "default") == 1
    assert planned_outputs.run(gm.graph, pays=_always) == 1
    gm.graph.lint()
    gm.recompile()
    assert count_targets(gm, name + "default") == 0
    assert count_targets(gm, name + "out") == 1
    assert count_targets(gm, "aten.empty_strided") == len(entry.out_names)
    assert count_targets(gm, "getitem") == 0
    want = getattr(torch.ops.quantfuse, entry.name)(*args)
    want = want if isinstance(want, tuple) else (want,)
    got = gm(*inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype and (g.stride() == w.stride() or g.numel() <= 1)
        assert same_bits(g, w)


def test_cpu_graphs_keep_the_default_call():
    # pays_on: only where the C++ dispatcher serves the out overloads (a CUDA graph)
    entry = catalog.OPS["silu_and_mul_per_block_quant"]
    gm = post_grad_graph(_op_form(entry), *example_call(entry, TOKENS, HIDDEN))
    assert not planned_outputs.pays_on(torch.device("cpu"))
    assert planned_outputs.run(gm.graph) == 0
    assert count_targets(gm, "silu_and_mul_per_block_quant.default") == 1


class _Plan(CustomGraphPass):
    """The planned-outputs step forced (as on a CUDA graph), recording what it decided."""

    def __init__(self):
        self.kept, self.planned = [], 0

    def __call__(self, graph):
        for node in graph.nodes:
            entry = planned_outputs._entry(node)
            if entry is not None:
                self.kept.append(planned_outputs.reason_kept(node, entry))
        self.planned += planned_outputs.run(graph, pays=_always)

    def uuid(self):
        return None


def _experts_call(x):
    # the tokens over two experts, as a router would sort them (the offsets are graph inputs)
    t = x.shape[0]
    eo, bo = expert_offsets([t // 3, t - t // 3])
    return torch.ops.quantfuse.silu_and_mul_mxfp8_experts_quant(x, eo, bo, 2, 1)


DYNAMIC_CALLS = {
    "row-major": lambda x: torch.ops.quantfuse.silu_and_mul_per_block_quant(x, 128),
    # column-major scales: strides (1, T)
    "column-major": lambda x: torch.ops.quantfuse.silu_and_mul_per_block_quant(x, 128, True),
    "mxfp8": lambda x: torch.ops.quantfuse.silu_and_mul_mxfp8_quant(x, "rceil"),
    # swizzled scale rows: -128 * ((-T) // 128)
    "mxfp8-swizzled": lambda x: torch.ops.quantfuse.silu_and_mul_mxfp8_quant(x, "rceil", True),
    "mxfp4-swizzled": lambda x: torch.ops.quantfuse.silu_and_mul_mxfp4_quant(x, "floor", True),
    # experts scale rows: 128 * ((T + 127 * Min(E, T)) // 128)
    "experts": _experts_call,
}


@pytest.mark.parametrize("name", DYNAMIC_CALLS)
def test_a_dynamic_token_count_sizes_the_buffers_from_the_input(name):
    call = DYNAMIC_CALLS[name]
    plan = _Plan()
    torch._dynamo.reset()
    try:
        with torch._inductor.config.patch(force_disable_caches=True, fx_graph_cache=False):
            compiled = torch.compile(call, options={"post_grad_custom_post_pass": plan})
            for tokens in (8, 37, 130):
                x = torch.randn(tokens, 512, dtype=torch.bfloat16) * 3
                torch._dynamo.mark_dynamic(x, 0)  # the token count, as an engine compiles it
                got, want = compiled(x), call(x)
                for g, w in zip(got, want):
                    assert g.shape == w.shape and (g.stride() == w.stride() or g.numel() <= 1)
                    assert same_bits(g, w), (name, tokens)
    finally:
        torch._dynamo.reset()
    assert plan.kept == [None] and plan.planned == 1  # one graph for every token count


def test_a_size_not_computed_from_the_input_keeps_the_default_call():
    # an output size from another tensor's dim is no expression of x's sizes
    entry = catalog.OPS["silu_and_mul_per_block_quant"]
    gm = post_grad_graph(_op_form(entry), *example_call(entry, TOKENS, HIDDEN))
    node = next(n for n in gm.graph.nodes if planned_outputs._entry(n) is entry)
    symbol = sympy.Symbol("s99")
    assert not planned_outputs._expressible(symbol, planned_outputs._input_symbols(node))
    assert not planned_outputs._expressible(sympy.ceiling(symbol / 3), {symbol: 0})
    assert planned_outputs._expressible(-128 * FloorDiv(-symbol, 128), {symbol: 0})


class _FuseThenPlan(CustomGraphPass):
    """The fusion pass with its CPU rewrites on, then the planned-outputs step forced."""

    def __init__(self):
        self.fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
        self.planned = 0

    def __call__(self, graph):
        self.fusion(graph)
        self.planned += planned_outputs.run(graph, pays=_always)

    def uuid(self):
        return None


def _native_mlp_tail(x, w):
    """SiLU x Mul -> FP8 per-token quantisation as plain PyTorch, read by a matmul and pointwise
    code that Inductor could schedule anywhere its dependencies allow."""
    gate, up = x.chunk(2, dim=-1)
    y = F.silu(gate) * up
    amax = y.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    s = amax / 448.0
    q = (y.float() / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    early = x.float().sum(dim=-1, keepdim=True)  # independent of q: free to run before the call
    return q.float() @ w + early, s * 2 + early, q


def test_compiled_native_site_calls_the_out_overload_on_planned_buffers():
    torch.manual_seed(0)
    x = torch.randn(16, 1024, dtype=torch.bfloat16) * 3
    w = torch.randn(512, 8)
    plan = _FuseThenPlan()
    got, code = compiled_and_code(_native_mlp_tail, plan, x, w)
    assert len(plan.fusion.report.rewrites) == 1 and plan.planned == 1
    fused = plan.fusion.report.rewrites[0].fused_op
    assert f"torch.ops.{fused}.out(" in code
    assert f"torch.ops.{fused}.default(" not in code
    # Inductor allocated the op's outputs and asserts no size or stride of them
    call = next(line for line in code.splitlines() if f"torch.ops.{fused}.out(" in line)
    bufs = re.findall(r"\bout(?:_scales)?=(\w+)", call)
    assert len(bufs) == 2
    for buf in bufs:
        assert f"{buf} = empty_strided_cpu(" in code
        assert f"assert_size_stride({buf}," not in code
    # the site itself as eager computes it; the readers as the same compile without the step
    # computes them (Inductor's fp32 matmul and sums round apart from eager's)
    want = _native_mlp_tail(x, w)
    assert same_bits(got[2], want[2])
    fused_only, _ = compiled_and_code(_native_mlp_tail, quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True)), x, w)
    for g, f in zip(got, fused_only):
        assert same_bits(g, f)


def test_the_step_is_a_config_switch_in_the_pass_uuid(monkeypatch):
    on, off = quantfuse.FusionConfig(), quantfuse.FusionConfig(planned_outputs=False)
    assert on.planned_outputs is True and off.planned_outputs is False
    assert quantfuse.FusionPass(on).uuid() != quantfuse.FusionPass(off).uuid()
    monkeypatch.setenv("QUANTFUSE_PLANNED_OUTPUTS", "0")
    assert quantfuse.FusionConfig().planned_outputs is False
