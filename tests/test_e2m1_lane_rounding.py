"""Bit tricks of the CUDA kernels' 16-bit lane arithmetic (csrc/), emulated lane by lane
in torch on the CPU against independent references, for every finite bf16 and fp16 value:

- the E2M1 rounding of the MXFP4 kernels (``e2m1x2`` and ``pack_e2m1x8`` in
  csrc/quant_schemes.cuh) against the reference's nearest-even E2M1 codes;
- ReLU² on packed pairs (``Relu2::pair`` in csrc/act_quant.cuh: one ``mul.rn`` of the
  pair by itself) against torch's fp32 square rounded to the dtype.

The kernels' 16-bit float operations (fma.rn / mul.rn on bf16x2 / f16x2) round the exact
result to nearest-even once, with subnormals; ``rne`` does that in float64 (exact for
these operands). tests/gpu checks the kernels themselves.
"""

from __future__ import annotations

import pytest
import torch

from quantfuse.custom_ops.reference import e2m1_codes

DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
# dtype -> (mantissa bits, exponent bias)
FORMAT = {torch.bfloat16: (7, 127), torch.float16: (10, 15)}


def rne(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 x rounded once to nearest-even in ``dtype`` (subnormals kept, overflow to
    inf), returned as ``dtype``."""
    mbits, bias = FORMAT[dtype]
    _, e = torch.frexp(x)  # |x| in [2^(e-1), 2^e)
    ulp = torch.exp2((torch.clamp(e - 1, min=1 - bias) - mbits).double())
    r = torch.round(x / ulp) * ulp  # torch.round is half-to-even
    return torch.where(r.abs() > torch.finfo(dtype).max, r.sign() * torch.inf, r).to(dtype)


def every_value(dtype: torch.dtype) -> torch.Tensor:
    v = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return v[torch.isfinite(v)]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16).int() & 0xFFFF


def e2m1_lanes(a: torch.Tensor, saturate: bool) -> torch.Tensor:
    """``e2m1x2`` for one lane per element: the code in bits 0-2, the sign in bit 15."""
    mbits, bias = FORMAT[a.dtype]
    if saturate:
        a = a.clamp(-6.0, 6.0)
    ab = bits(a)
    m = torch.maximum(ab & (((1 << (15 - mbits)) - 1) << mbits), torch.tensor(bias << mbits))
    m_signed = (m | (ab & 0x8000)).to(torch.int16).view(a.dtype)
    t = rne(m_signed.double() * (1.5 * 2 ** (mbits - 1)) + a.double(), a.dtype)
    offset = ((mbits - 1) << mbits) + (1 << (mbits - 1)) + 2 * bias
    return bits(t) - m - offset + (m >> (mbits - 1))


def packed_nibbles(lanes: torch.Tensor) -> torch.Tensor:
    """``pack_e2m1x8``'s byte for a pair of lanes (p = lane0 | lane1 << 16), both nibbles."""
    pairs = lanes.reshape(-1, 2).long()
    p = pairs[:, 0] | (pairs[:, 1] << 16)
    byte = (p + (p >> 12) + (p >> 24)) & 0xFF
    return torch.stack([byte & 0xF, byte >> 4], dim=1).flatten().to(torch.uint8)


@DTYPES
@pytest.mark.parametrize("saturate", [False, True], ids=["rceil", "floor"])
def test_lane_rounding_equals_nearest_even_for_every_16bit_value(dtype, saturate):
    v = every_value(dtype)
    if not saturate:  # rceil scales leave |v| <= 6 (quant_schemes.cuh); floor up to 8
        v = v[v.abs() <= 6]
    v = v[: v.numel() // 2 * 2]
    lanes = e2m1_lanes(v, saturate)
    # every bit but the code and the sign is 0 (what the packing relies on)
    assert not bool((lanes & ~0x8007).any())
    assert bool(((lanes < 0x10000) & (lanes >= 0)).all())
    got, want = packed_nibbles(lanes), e2m1_codes(v.float())
    bad = got != want
    assert not bool(bad.any()), (f"{int(bad.sum())} of {v.numel()} differ, e.g. v={v[bad][:4].tolist()} "
                                 f"got {got[bad][:4].tolist()} want {want[bad][:4].tolist()}")
    # the cases that matter: every grid point, tie and their neighbours are among them
    assert {0.0, -0.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0} <= set(v.float().tolist())
    if saturate:
        assert 7.0 in set(v.float().tolist())


@DTYPES
def test_relu2_pair_equals_fp32_square_rounded(dtype):
    r = torch.relu(every_value(dtype).float())
    want = (r * r).to(dtype)  # what torch's relu(x).square() stores
    got = rne(r.double() * r.double(), dtype)  # mul.rn of the pair: one rounding
    assert torch.equal(bits(got), bits(want))
    # squares that round into the subnormal range and overflow are among them
    tiny = torch.finfo(dtype).tiny
    assert bool(((want.float() > 0) & (want.float() < tiny)).any()) and bool(torch.isinf(want.float()).any())
