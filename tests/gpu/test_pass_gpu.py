"""On a GPU: the ops dispatch to the compiled kernels, and the compiled example runs them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import quantfuse  # noqa: E402
from quantfuse.custom_ops import oracle, reference  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
qf = torch.ops.quantfuse


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_ops_dispatch_to_the_forced_backend_and_match_unfused(backend, dtype, monkeypatch):
    monkeypatch.setenv(oracle.BACKEND_ENV, backend)
    oracle.reset_counts()
    x = (torch.randn(37, 2 * 7168, device="cuda") * 3).to(dtype)
    q, s = qf.silu_and_mul_per_block_quant(x, 128, True, False)
    y = qf.silu_and_mul(x)
    q2, s2 = qf.per_token_group_quant_fp8(y, 128, True, False)
    assert oracle.call_counts()[("silu_and_mul_per_block_quant", backend)] == 1
    assert oracle.call_counts()[("per_token_group_quant_fp8", backend)] == 1
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)
    assert s.stride() == (1, 37)
    # against the torch reference on the same GPU: scales equal, q within one step
    qr, sr = reference.silu_and_mul_per_block_quant(x, 128, True, False)
    assert torch.equal(s, sr)
    diff = (q.view(torch.uint8).int() - qr.view(torch.uint8).int()).abs()
    assert int(diff.max()) <= 1 and (diff != 0).float().mean().item() < 1e-3


def test_default_backend_on_gpu_is_cuda():
    oracle.reset_counts()
    qf.silu_and_mul_per_block_quant(torch.randn(4, 512, device="cuda", dtype=torch.bfloat16), 64)
    assert oracle.call_counts() == {("silu_and_mul_per_block_quant", "cuda"): 1}


@pytest.mark.parametrize("style", ["native", "op"])
def test_compiled_example_runs_the_cuda_kernel(style):
    import fp8_mlp

    oracle.reset_counts()
    assert fp8_mlp.main(["--device", "cuda", "--style", style, "--tokens", "128", "--layers", "2"]) == 0
    assert oracle.call_counts()[("silu_and_mul_per_block_quant", "cuda")] >= 2
    assert quantfuse.last_report().rewrites[0].params["column_major_scales"] is True
