"""On a GPU: the MX spellings the generator made the recogniser read (``2 ** e`` scales, the
scale cast to ``float8_e8m0fnu``, E2M1 by a lookup in a constant table), compiled with the pass,
equal eager PyTorch on the GPU bit for bit, with and without blocks whose nonzero amax clamps the
exponent to -127 (where CUDA's ``exp2(-127)`` is not 2^-127 and the fused op multiplies by the
reciprocal of the device's value: docs/numerics.md, "CUDA's 2^-127"); and the facts about CUDA
they rest on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import quantfuse  # noqa: E402
from spellings_mx import MxSpelling  # noqa: E402

#: the exponents whose power of two CUDA's exp2 gives exactly (the H200, torch 2.11: not -127)
EXACT = torch.arange(-126, 128, dtype=torch.float32)


def _powers(e: torch.Tensor) -> torch.Tensor:
    """2^e from the float32 bits (normal exponents): independent of any exp2 / pow."""
    return ((e.int() + 127) << 23).view(torch.float32)


def test_cuda_exp2_of_normal_exponents_is_exact_and_casts_to_its_byte():
    """``torch.exp2(e)`` is 2^e for every integer e in [-126, 127], and the cast of that power of
    two to float8_e8m0fnu is the byte ``e + 127``."""
    e = EXACT.cuda()
    s = torch.exp2(e)
    assert torch.equal(s, _powers(e))
    assert torch.equal(s.to(torch.float8_e8m0fnu).view(torch.uint8), (e + 127).to(torch.uint8))


def test_cuda_pow_of_two_is_exact_for_normal_exponents():
    """``2 ** e`` and ``torch.pow(2, e)`` are 2^e for every integer e in [-126, 127] (the ``2 ** e``
    MX scales rest on it; at -127 they differ from CUDA's exp2)."""
    e = EXACT.cuda()
    assert torch.equal(torch.pow(2, e), _powers(e)) and torch.equal(2 ** e, _powers(e))


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
    _check_compiled_equals_eager(spelling, tiny=False)


class BytesDiffer(AssertionError):
    """The fused op's bytes are not eager's (told apart from a report that did not fuse)."""


def _check_compiled_equals_eager(spelling: MxSpelling, tiny: bool) -> None:
    xs = [x.cuda() for x in spelling.make_inputs(tiny)]
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
        if not torch.equal(w, g):
            raise BytesDiffer(f"{int((w != g).sum())} bytes differ, first at {(w != g).nonzero()[:5].tolist()}")


TINY_SPELLINGS = [
    MxSpelling(element="e2m1", encoding="bucketize", packing="torchao"),
    MxSpelling(scale_form="pow"),
    MxSpelling(element="e2m1", scale_form="pow_fn", apply="one_over"),
    MxSpelling(apply="recip", act="relu2"),
]


@pytest.mark.parametrize("spelling", TINY_SPELLINGS, ids=lambda s: ",".join(
    f"{f.name}={getattr(s, f.name)}" for f in dataclasses.fields(s) if getattr(s, f.name) != f.default))
def test_cuda_minus_127_block_equals_eager(spelling):
    """The block of subnormals (amax 2^-129 in bf16, the exponent clamped to -127): eager CUDA
    scales by its own ``exp2(-127.)`` / ``pow(2., -127.)`` (exp2's is not 2^-127), and the fused op
    multiplies by RN(1 / d) of the value torch gives on this GPU (``MxByte0.EXP2`` / ``POW``, read
    once), which codes as ``y / d`` does; MXFP4 codes at the ties show a difference first."""
    _check_compiled_equals_eager(spelling, tiny=True)


def test_cuda_exp2_of_minus_127_is_not_the_power_of_two():
    """Why MxByte0.EXP2 / POW exist: on this GPU exp2(-127) or pow(2, -127) is not 2^-127 (if both
    ever are, the values equal EXACT's and the tiny-block tests above pass either way)."""
    e = torch.tensor([-127.0], device="cuda")
    exact = _powers(torch.tensor([-127.0])).cuda()
    assert not (torch.equal(torch.exp2(e), exact) and torch.equal(torch.pow(2, e), exact))


@pytest.mark.parametrize("spelling", ["times_exp2", "over_exp2"])
def test_cuda_byte_spelled_exp2_equals_eager(spelling):
    """Scales spelled from the byte with ``torch.exp2`` (tests/mx_device_spelled.py, read by
    evaluation): an inf block multiplied by CUDA's ``exp2(-127.)`` (MxInf.EXP2: torchao 0.12's
    RCEIL) and a byte-0 block divided by it (MxByte0.EXP2), compiled with the pass, give eager
    CUDA's bytes; the inf blocks hold finite values up to bf16's largest, where the device's value
    and 2^-127 code differently (the test fails if the fused op used 2^-127)."""
    from mx_device_spelled import SPECS, device_inputs, mx_fp8

    x = device_inputs(64, 1024, 2, device="cuda")
    fn = lambda t: mx_fp8(t, spelling)  # noqa: E731
    torch._dynamo.reset()
    compiled = quantfuse.compile(fn, dynamic=False)
    with torch.no_grad():
        got, want = compiled(x), fn(x)
    report = quantfuse.last_report()
    assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
    assert report.rewrites[0].params["recipe"] == SPECS[spelling]
    for w, g in zip(want, got, strict=True):
        assert w.dtype == g.dtype and w.shape == g.shape
        assert torch.equal(w.view(torch.uint8), g.view(torch.uint8)), int((w.view(torch.uint8) != g.view(torch.uint8)).sum())
    if spelling == "times_exp2":
        # the device's value matters here: with the exact 2^-127 some of these bytes differ
        y = (torch.nn.functional.silu(x[:, :1024]) * x[:, 1024:]).float()[:2].reshape(2, -1, 32)
        exact = torch.clamp(y * 2.0 ** -127, -448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
        dev = torch.clamp(y * torch.exp2(torch.tensor(-127.0, device="cuda")), -448, 448)
        assert not torch.equal(exact, dev.to(torch.float8_e4m3fn).view(torch.uint8)) or bool(
            torch.exp2(torch.tensor(-127.0, device="cuda")) == 2.0 ** -127)


@pytest.mark.parametrize("element", ["e4m3", "e2m1"])
def test_cuda_times_exp2_of_minus_e_equals_eager(element):
    """``y * torch.exp2(-e)`` (read symbolically: recognise.parse_apply's MX multiplier): an inf
    block's factor is CUDA's exp2(-127.) (MxInf.EXP2), which the fused op reads from torch; on inf
    blocks beside bf16's top values (tests/mx_device_spelled.py device_inputs) it gives eager CUDA's
    bytes."""
    from mx_device_spelled import device_inputs

    spelling = MxSpelling(element=element, apply="times_neg")
    x = device_inputs(64, 1024, 3, device="cuda")
    # no NaN block: eager's (nan + 127).to(torch.uint8) byte is undefined (docs/numerics.md)
    x = torch.where(torch.isnan(x), 1.0, x).to(x.dtype)
    torch._dynamo.reset()
    compiled = quantfuse.compile(spelling.fn, dynamic=False)
    with torch.no_grad():
        got, want = compiled(x), spelling.fn(x)
    report = quantfuse.last_report()
    assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
    assert "mx_inf=exp2" in report.rewrites[0].params["recipe"]
    for w, g in zip(want, got, strict=True):
        assert w.dtype == g.dtype and w.shape == g.shape
        assert torch.equal(w.view(torch.uint8), g.view(torch.uint8)), int((w.view(torch.uint8) != g.view(torch.uint8)).sum())
