"""On a GPU: FP8 and MX sites recognised with a symbolic token count (tests/test_recognise_symbolic.py's
cases on CUDA). One compiled graph serves every count, its outputs equal eager PyTorch's bit for
bit, and the fused op runs a kernel, not the torch reference: the C++ dispatcher's call signature
leaves the token count out, so the counts share one decision."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from quantfuse.custom_ops import oracle  # noqa: E402
from test_recognise_symbolic import CASES, assert_case_fused  # noqa: E402


@pytest.mark.parametrize("name", list(CASES))
def test_one_cuda_graph_fuses_every_token_count_bit_exact(name):
    oracle.reset_counts()
    report = assert_case_fused(name, to=lambda a: a.cuda())
    op = report.rewrites[0].fused_op.split(".")[-1]
    backends = {b for (o, b), n in oracle.call_counts().items() if o == op and n}
    assert backends and backends != {"torch"}, backends
