"""The planned-outputs step on a CUDA graph: the pass leaves the fused call as its ``out``
overload on buffers Inductor allocates (no output asserts), and the compiled graph computes
what the same compile with the default call computes, bit for bit."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

import quantfuse  # noqa: E402
from quantfuse.custom_ops import cuda_backend  # noqa: E402
from quantfuse.passes import planned_outputs  # noqa: E402
from helpers import compiled_and_code, same_bits  # noqa: E402

if torch.cuda.is_available() and not cuda_backend.is_available():
    pytestmark = pytest.mark.skip(reason=f"CUDA extension unavailable: {cuda_backend.unavailable_reason()}")


def _site(x, w):
    gate, up = x.chunk(2, dim=-1)
    y = F.silu(gate) * up
    amax = y.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    s = amax / 448.0
    q = (y.float() / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return (q.float() * s).to(torch.bfloat16) @ w, q, s


@pytest.mark.parametrize("tokens", [16, 300])
def test_cuda_graph_calls_the_out_overload_and_matches_the_default_call(tokens, monkeypatch):
    assert planned_outputs.pays_on(torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = (torch.randn(tokens, 2048, device="cuda", generator=gen) * 3).to(torch.bfloat16)
    w = torch.randn(1024, 256, device="cuda", generator=gen).to(torch.bfloat16)
    fusion = quantfuse.FusionPass()
    got, code = compiled_and_code(_site, fusion, x, w)
    report = fusion.report.graphs[-1]
    assert len(report.rewrites) == 1 and report.planned_outputs == 1
    fused = report.rewrites[0].fused_op
    call = next(line for line in code.splitlines() if f"torch.ops.{fused}.out(" in line)
    for buf in re.findall(r"\bout(?:_scales)?=(\w+)", call):
        assert f"{buf} = empty_strided_cuda(" in code and f"assert_size_stride({buf}," not in code
    monkeypatch.setattr(planned_outputs, "pays_on", lambda device: False)
    default_fusion = quantfuse.FusionPass()
    want, default_code = compiled_and_code(_site, default_fusion, x, w)
    assert f"torch.ops.{fused}.default(" in default_code
    for g, w_ in zip(got, want):
        assert same_bits(g, w_)


@pytest.mark.parametrize("call", [
    lambda x: torch.ops.quantfuse.silu_and_mul_per_block_quant(x, 128, True),
    lambda x: torch.ops.quantfuse.silu_and_mul_mxfp8_quant(x, "rceil", True),
], ids=["column-major", "mxfp8-swizzled"])
def test_dynamic_token_count_on_planned_buffers_equals_the_default_call(call):
    """A dynamic token count: the buffers sized by sym nodes of x (strides (1, T), swizzled rows
    -128 * ((-T) // 128)), launched from C++ after its per-call shape check, bit-exact."""
    fusion = quantfuse.FusionPass()
    torch._dynamo.reset()
    try:
        with torch._inductor.config.patch(force_disable_caches=True, fx_graph_cache=False):
            compiled = torch.compile(call, options={"post_grad_custom_post_pass": fusion})
            for tokens in (16, 37, 300):
                x = (torch.randn(tokens, 1024, device="cuda") * 3).to(torch.bfloat16)
                torch._dynamo.mark_dynamic(x, 0)
                for g, w in zip(compiled(x), call(x)):
                    assert g.shape == w.shape and g.stride() == w.stride()
                    assert same_bits(g, w), tokens
    finally:
        torch._dynamo.reset()
    assert [g.planned_outputs for g in fusion.report.graphs] == [1]
