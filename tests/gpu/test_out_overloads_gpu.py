"""The ``out`` overloads on CUDA tensors: every op with CUDA kernels, written into given
outputs (poisoned first), equals its default overload bit for bit, experts ops included."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend  # noqa: E402
from quantfuse.custom_ops.plan import expert_offsets  # noqa: E402

if torch.cuda.is_available() and not cuda_backend.is_available():
    pytestmark = pytest.mark.skip(reason=f"CUDA extension unavailable: {cuda_backend.unavailable_reason()}")

ENTRIES = [pytest.param(e, id=e.name) for e in catalog.OPS.values() if e.activation.cuda]


def _poisoned(w: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(w)
    if w.element_size() > 1:
        return out.fill_(float("nan"))
    out.view(torch.uint8).fill_(0x5A)
    return out


@pytest.mark.parametrize("entry", ENTRIES)
def test_out_overload_equals_the_op_on_cuda(entry):
    torch.manual_seed(0)
    tokens, hidden = 300, 512
    x = torch.randn(tokens, hidden * (2 if entry.activation.gated else 1), device="cuda", dtype=torch.bfloat16) * 3
    params = tuple(p.example for p in entry.params)
    if entry.experts:  # three experts, one of them empty
        tensors, params = expert_offsets([100, 0, 200], device="cuda"), (3, *params[1:])
    elif entry.tensor_inputs:
        tensors = (torch.tensor([0.05], device="cuda"),)
    else:
        tensors = ()
    op = getattr(torch.ops.quantfuse, entry.name)
    want = op.default(x, *tensors, *params)
    want = want if isinstance(want, tuple) else (want,)
    outs = {name: _poisoned(w) for name, w in zip(entry.out_names, want)}
    op.out(x, *tensors, *params, **outs)
    for name, w in zip(entry.out_names, want):
        got = outs[name]
        assert got.stride() == w.stride()
        if w.element_size() == 1:
            assert torch.equal(got.view(torch.uint8), w.view(torch.uint8)), f"{entry.name}.out: {name}"
        else:
            assert torch.equal(got.nan_to_num(1.5), w.nan_to_num(1.5)), f"{entry.name}.out: {name}"
