"""The CUDA per-group kernel's ``ue8m0=exp2`` recipe (torch's ``exp2(ceil(log2(s)))``, the
DeepSeek-V3 / vLLM spelling of UE8M0 scales) against eager PyTorch on the GPU running that
spelling, at the binade edges where it differs from the exact power of two."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from quantfuse.custom_ops import cuda_backend, oracle, ops  # noqa: E402
from quantfuse.patterns import native  # noqa: E402


def _eager(x, g, column):
    d = x.shape[-1] // 2
    y = F.silu(x[..., :d]) * x[..., d:]
    q, s = native.fp8_group_quant(y, g, lambda s: torch.exp2(torch.ceil(torch.log2(s))))
    q, s = q.flatten(-2), s.squeeze(-1)
    return q, (s.t().contiguous().t() if column else s)


def _edge_input(dtype, gen):
    """Rows whose group amaxes sit just above, at and just below 448 * 2^k (s = amax / 448 at a
    binade edge, where log2 can round to the integer), among random rows."""
    x = torch.randn(64, 2 * 1024, device="cuda", generator=gen, dtype=torch.float32) * 3
    d = 1024
    x[:, d:] = 1.0  # up = 1: y = silu(gate) (rounded), so the gate sets the amax
    for r in range(0, 64, 2):
        k = (r // 2) % 24 - 12
        target = torch.tensor(448.0 * 2.0 ** k, dtype=torch.float32)
        x[r, : d] = x[r, :d].clamp(-1, 1)
        x[r, 5] = torch.nextafter(target, torch.tensor(float("inf"))) * (1 + (r % 4) * 2 ** -10)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("g,column", [(128, False), (64, True)])
def test_cuda_ue8m0_exp2_equals_eager(dtype, g, column):
    if not cuda_backend.is_available():
        pytest.skip(f"CUDA extension unavailable: {cuda_backend.unavailable_reason()}")
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = _edge_input(dtype, gen)
    op = ops.OPS["silu_and_mul_per_block_quant"]
    oracle.reset_counts()
    for _ in range(2):  # the Python planner's call, then the dispatcher path's
        q, s = op(x, g, column, recipe="ue8m0=exp2")
        eq, es = _eager(x, g, column)
        assert s.stride() == es.stride()
        assert torch.equal(s, es), (s != es).nonzero()[:5]
        assert torch.equal(q.view(torch.uint8), eq.view(torch.uint8))
    assert oracle.call_counts()[("silu_and_mul_per_block_quant", "cuda")] == 2


def test_cuda_ue8m0_exp2_at_the_binade_edge_differs_from_the_exact_power_of_two():
    """fp32 groups whose s = amax / 448 is a few ulps above 2^k: log2 rounds to k, so torch's
    spelling gives 2^k (and saturates the group's maximum) where the exact rounding gives 2^(k+1)."""
    if not cuda_backend.is_available():
        pytest.skip(f"CUDA extension unavailable: {cuda_backend.unavailable_reason()}")
    ks = torch.arange(-20, 20, device="cuda", dtype=torch.float32)
    s = torch.exp2(ks) * (1 + 2.0 ** -22)
    x = torch.rand(len(ks), 128, device="cuda") * 0.5
    x[:, 7] = s * 448.0  # the group's amax (s * 448 rounds back to s under the multiply by 1/448)
    op = ops.OPS["per_token_group_quant_fp8"]
    q, sc = op(x, 128, recipe="ue8m0=exp2")
    yg = x.unflatten(-1, (-1, 128))
    es = torch.exp2(torch.ceil(torch.log2(yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0)))
    eq = (yg / es).clamp(-448, 448).to(torch.float8_e4m3fn).flatten(-2)
    assert torch.equal(sc, es.squeeze(-1)) and torch.equal(q.view(torch.uint8), eq.view(torch.uint8))
    _, exact = op(x, 128, False, True)
    assert int((exact != sc).sum()) >= 1  # log2 rounded down to k (|k| >= 8 here)
