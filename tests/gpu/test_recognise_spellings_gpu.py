"""On a GPU: the MX spellings the generator made the recogniser read (``2 ** e`` scales, the
scale cast to ``float8_e8m0fnu``, E2M1 by a lookup in a constant table), compiled with the pass,
equal eager PyTorch on the GPU bit for bit; and the two facts about CUDA they rest on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import quantfuse  # noqa: E402
from spellings_mx import MxSpelling  # noqa: E402


def test_cuda_power_of_two_spellings_agree_on_e8m0_exponents():
    """``torch.pow(2, e)`` is ``torch.exp2(e)`` for every E8M0 exponent, and the cast of that
    power of two to float8_e8m0fnu is the byte ``e + 127`` (2^-127, a subnormal float32, included)."""
    e = torch.arange(-127, 128, device="cuda", dtype=torch.float32)
    s = torch.exp2(e)
    assert torch.equal(torch.pow(2, e), s) and torch.equal(2 ** e, s)
    assert torch.equal(s.to(torch.float8_e8m0fnu).view(torch.uint8), (e + 127).to(torch.uint8))


SPELLINGS = [
    MxSpelling(scale_form="pow"),
    MxSpelling(element="e2m1", scale_form="pow_fn", rounding="floor"),
    MxSpelling(bytes_form="e8m0_cast", act="relu2", dtype=torch.float16),
    MxSpelling(element="e2m1", bytes_form="e8m0_cast", layout="separate"),
    MxSpelling(element="e2m1", encoding="bucketize", packing="torchao"),
    MxSpelling(element="e2m1", encoding="bucketize", rounding="floor", layout="interleaved", dtype=torch.float16),
]


@pytest.mark.parametrize("spelling", SPELLINGS, ids=lambda s: ",".join(
    f"{f.name}={getattr(s, f.name)}" for f in dataclasses.fields(s) if getattr(s, f.name) != f.default))
def test_compiled_mx_spelling_equals_eager_on_cuda(spelling):
    xs = [x.cuda() for x in spelling.make_inputs()]
    torch._dynamo.reset()
    compiled = quantfuse.compile(spelling.fn, dynamic=False)
    with torch.no_grad():
        got = compiled(*xs)
        want = spelling.fn(*xs)
    report = quantfuse.last_report()
    assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
    assert report.rewrites[0].fused_op == f"quantfuse.{spelling.activation}_{spelling.scheme.key}_quant"
    for w, g in zip(want, got, strict=True):
        assert w.dtype == g.dtype and w.shape == g.shape
        w, g = (t.view(torch.uint8) for t in (w, g))
        assert torch.equal(w, g), (w != g).nonzero()[:5]
