"""On a GPU: FP8 sites recognised with a symbolic token count (tests/test_recognise_symbolic.py's
cases on CUDA). One compiled graph serves every count, its outputs equal eager PyTorch's bit for
bit, and the fused op runs a kernel, not the torch reference: the C++ dispatcher's call signature
leaves the token count out, so the counts share one decision."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from quantfuse.custom_ops import oracle  # noqa: E402
from test_recognise_symbolic import CASES, _bits, _compiled  # noqa: E402


@pytest.mark.parametrize("name", list(CASES))
def test_one_cuda_graph_fuses_every_token_count_bit_exact(name):
    fn, make, dims, spec = CASES[name]

    def on_cuda(t):
        return tuple(a.cuda() for a in make(t))

    oracle.reset_counts()
    report, runs = _compiled(fn, on_cuda, dims)
    assert len(report.graphs) == 1, f"recompiled: {report}"
    assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
    if spec is not None:
        assert report.rewrites[0].params.get("recipe", "") == spec, str(report)
    for eager, got in runs:
        for e, g in zip(eager, got):
            assert e.shape == g.shape and e.dtype == g.dtype
            assert torch.equal(_bits(e), _bits(g))
    op = report.rewrites[0].fused_op.split(".")[-1]
    backends = {b for (o, b), n in oracle.call_counts().items() if o == op and n}
    assert backends and backends != {"torch"}, backends
