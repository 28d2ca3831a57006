"""The ``out`` overloads on CUDA tensors: every op with CUDA kernels, written into given
outputs (poisoned first), equals its default overload bit for bit, experts ops included."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from helpers import example_call, poisoned_like, same_bits  # noqa: E402
from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend  # noqa: E402

if torch.cuda.is_available() and not cuda_backend.is_available():
    pytestmark = pytest.mark.skip(reason=f"CUDA extension unavailable: {cuda_backend.unavailable_reason()}")

ENTRIES = [pytest.param(e, id=e.name) for e in catalog.OPS.values() if cuda_backend.implements(e)]


@pytest.mark.parametrize("entry", ENTRIES)
def test_out_overload_equals_the_op_on_cuda(entry):
    # three experts, one of them empty
    args = example_call(entry, 300, 512, device="cuda", expert_counts=(100, 0, 200))
    op = getattr(torch.ops.quantfuse, entry.name)
    want = op.default(*args)
    want = want if isinstance(want, tuple) else (want,)
    outs = {name: poisoned_like(w) for name, w in zip(entry.out_names, want)}
    op.out(*args, **outs)
    for name, w in zip(entry.out_names, want):
        got = outs[name]
        assert got.stride() == w.stride()
        assert same_bits(got, w), f"{entry.name}.out: {name}"
