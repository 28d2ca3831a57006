"""The experts ops on the GPU: the Triton kernel against the reference on the same GPU, bit for
bit, on poisoned buffers (every op, both MX schemes and roundings, bf16 / fp16, experts with 0,
1, 127, 128, 129 tokens: tests/test_experts_ops.py::run_cases), and the op itself running on
Triton because the CUDA backend declines it. Skipped cleanly without CUDA."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import oracle  # noqa: E402
from quantfuse.custom_ops import triton_schemes as ts  # noqa: E402
from test_experts_ops import _input, offsets, run_cases  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _available():
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "GPU tests must not run under the interpreter"
    assert ts.is_available(), ts._failed


def _make(lead, width, dtype, specials=True):
    x = _input(lead[0], width, dtype, seed=width + lead[0]) if specials else _input(lead[0], width, dtype, seed=7)
    return x.cuda()


def test_triton_equals_reference_on_the_gpu():
    checks, failures, ran = run_cases(ts, _make, "cuda")
    assert failures == [], failures[:20]
    assert sorted(ran) == sorted(n for n, e in catalog.OPS.items() if e.experts)
    assert checks >= 2 * 250


def test_the_ops_run_on_triton():
    counts = [129, 0, 1]
    eo, bo = offsets(counts, device="cuda")
    x = _make((sum(counts),), 512, torch.bfloat16)
    oracle.clear_cache()
    oracle.reset_counts()
    q, s = torch.ops.quantfuse.silu_and_mul_mxfp8_experts_quant(x, eo, bo, 3, 8)
    assert oracle.call_counts()[("silu_and_mul_mxfp8_experts_quant", "triton")] == 1
    want = torch.ops.quantfuse.mxfp8_experts_quant(torch.ops.quantfuse.silu_and_mul(x), eo, bo, 3, 8)
    assert torch.equal(q.view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(s, want[1])
