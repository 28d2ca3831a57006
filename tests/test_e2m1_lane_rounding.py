"""The E2M1 rounding of the CUDA MXFP4 kernels (csrc/quant_schemes.cuh: e2m1x2_bf16 and
e2m1x2_f16), emulated lane by lane in torch on the CPU, against the reference's
nearest-even E2M1 codes for every finite bf16 and fp16 value.

The kernels round |v| to the E2M1 grid by adding C = 1.5 * 2^m * s in 16-bit float
arithmetic (s: the grid step of |v|'s binade, from the exponent E of max(|v|, 1)) and
read the code from the integer difference of the bits. Torch's CPU bf16 / fp16 add rounds
the exact sum to nearest-even once, as the GPU's add.rn.bf16x2 / add.rn.f16x2 do, so this
checks the formula and its constants; tests/gpu checks the kernels themselves.
"""

from __future__ import annotations

import pytest
import torch

from quantfuse.custom_ops.reference import e2m1_codes

# dtype -> (mantissa bits, exponent bias, exponent mask, C offset, code offset per lane)
LANES = {
    torch.bfloat16: (7, 127, 0x7F80, 0x0340, 0x00FE),
    torch.float16: (10, 15, 0x7C00, 0x2600, 0x001E),
}


def lane_codes(v: torch.Tensor) -> torch.Tensor:
    """The kernels' code for 16-bit values v (one lane each)."""
    mbits, _, exp_mask, c_offset, code_offset = LANES[v.dtype]
    bits = lambda t: t.view(torch.int16).int() & 0xFFFF  # noqa: E731
    a = torch.minimum(v.abs(), torch.tensor(6.0, dtype=v.dtype))
    am1 = torch.maximum(a, torch.tensor(1.0, dtype=v.dtype))
    eb = bits(am1)
    c = (eb & exp_mask) + c_offset
    t = a + c.to(torch.int16).view(v.dtype)
    code = bits(t) - c + ((eb >> (mbits - 1)) & (0x3E if mbits == 10 else 0x1FE)) - code_offset
    return (code | ((bits(v) >> 12) & 0x8)).to(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_lane_rounding_equals_nearest_even_for_every_16bit_value(dtype):
    v = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    v = v[torch.isfinite(v)]
    got, want = lane_codes(v), e2m1_codes(v.float())
    bad = got != want
    assert not bool(bad.any()), (f"{int(bad.sum())} of {v.numel()} differ, e.g. v={v[bad][:4].tolist()} "
                                 f"got {got[bad][:4].tolist()} want {want[bad][:4].tolist()}")
    # the cases that matter: every grid point, tie and their neighbours are among them
    assert {0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0} <= set(v.float().tolist())
