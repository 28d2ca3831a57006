"""An independent float64 model of the numerics contract (no torch FP8 casts).

E4M3 rounding is done by searching the table of all 256 codes decoded from their
bits, so a bug in torch's or our float8 conversion cannot hide in both sides.
fp32 arithmetic is emulated by computing in float64 and rounding to fp32 after each
product or division (float64 has enough bits for that double rounding to be exact).
"""

from __future__ import annotations

import math

import torch


def decode_e4m3fn(code: int) -> float:
    """Value of an E4M3FN byte (bias 7, no infinities, 0x7F/0xFF NaN)."""
    sign = -1.0 if code & 0x80 else 1.0
    exp, man = (code >> 3) & 0xF, code & 0x7
    if exp == 0xF and man == 0x7:
        return float("nan")
    if exp == 0:
        return sign * man * 2.0 ** -9
    return sign * (1 + man / 8) * 2.0 ** (exp - 7)


_CODES = torch.arange(0, 0x7F)  # non-negative finite codes, increasing in value
_VALUES = torch.tensor([decode_e4m3fn(int(c)) for c in _CODES], dtype=torch.float64)


def encode_e4m3fn(v: torch.Tensor) -> torch.Tensor:
    """Round float64 values (|v| <= 448 or NaN) to E4M3FN codes, nearest-even."""
    mag = v.abs().clamp(max=448.0).nan_to_num(0.0)
    hi = torch.searchsorted(_VALUES, mag).clamp(max=len(_VALUES) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = mag - _VALUES[lo], _VALUES[hi] - mag
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (_CODES[hi] % 2 == 0))
    code = torch.where(pick_hi, _CODES[hi], _CODES[lo])
    code = code | torch.where(torch.signbit(v), 0x80, 0)  # -tiny rounds to -0, as the cast does
    return torch.where(v.isnan(), torch.tensor(0x7F), code).to(torch.uint8)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).to(torch.float64)


def group_quant(y: torch.Tensor, group: int, ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 [..., H], scales float64 [..., G]) for a 16/32-bit input y."""
    yg = y.to(torch.float64).unflatten(-1, (-1, group))
    amax = yg.abs().amax(-1)
    amax = torch.where(amax.isnan(), amax, amax.clamp(min=_f32(torch.tensor(1e-10)).item()))
    # `amax / 448` as torch computes it: on CUDA an fp32 multiply by fp32(1/448), on the CPU an
    # fp32 division (float64 then fp32 is the correctly rounded quotient)
    scale = _f32(amax * _f32(torch.tensor(1 / 448.0))) if y.device.type != "cpu" else _f32(_f32(amax) / 448.0)
    if ue8m0:
        # smallest power of two >= scale, by exhaustive exponent search
        exps = torch.arange(-150, 129, dtype=torch.float64)
        pows = torch.pow(2.0, exps)
        finite = scale.isfinite() & (scale > 0)
        idx = torch.searchsorted(pows, torch.where(finite, scale, torch.ones_like(scale)))
        scale = torch.where(finite, pows[idx], scale)
    q = _f32(yg / scale.unsqueeze(-1)).clamp(-448.0, 448.0)
    return encode_e4m3fn(q).flatten(-2), scale


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in float64 (not rounded)."""
    x = x.to(torch.float64)
    d = x.shape[-1] // 2
    g, u = x[..., :d], x[..., d:]
    return g / (1 + torch.exp(-g)) * u


# --- OCP microscaling (MX) ---------------------------------------------------------------

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def encode_e2m1(v: torch.Tensor) -> torch.Tensor:
    """Nearest-even E2M1 codes (sign bit 8) of float64 values, saturating at ±6."""
    mag = v.abs().clamp(max=6.0)
    d = (mag.unsqueeze(-1) - E2M1).abs()
    best = d.min(-1, keepdim=True).values
    ties = d == best
    # among equally near codes prefer the even one (even mantissa)
    even = ties & (torch.arange(8) % 2 == 0)
    code = torch.where(even.any(-1), even.float().argmax(-1), ties.float().argmax(-1))
    return (code | (torch.signbit(v).long() << 3)).to(torch.uint8)


def mx_exponent(block: list[float], element: str, rounding: str) -> int | None:
    """Shared exponent of one block by the definitions (None for a NaN block; an inf block
    gets E8M0's largest, 127, as the torch spelling's clamp of an infinite exponent): floor
    (OCP), rceil (NVIDIA), ceil, even (torchao's ``ScaleCalculationMode``)."""
    max_elem, emax = {"e4m3": (448.0, 8), "e2m1": (6.0, 2)}[element]
    if any(v != v for v in block):
        return None
    if any(v in (float("inf"), float("-inf")) for v in block):
        return 127
    amax = max(abs(v) for v in block)
    if amax == 0:
        return -127
    if rounding in ("floor", "ceil", "even"):
        e = math.floor(math.log2(amax))
        while 2.0 ** e > amax:  # guard log2 rounding
            e -= 1
        while 2.0 ** (e + 1) <= amax:
            e += 1
        if rounding == "ceil" and 2.0 ** e < amax:
            e += 1
        if rounding == "even":
            # amax rounded half up to the element's mantissa bits reaches the next binade
            mbits = {"e4m3": 3, "e2m1": 1}[element]
            if amax >= 2.0 ** (e + 1) * (1 - 2.0 ** -(mbits + 2)):
                e += 1
        e -= emax
    else:
        inv = float(torch.tensor(1 / max_elem, dtype=torch.float32))
        r = float(torch.tensor(amax * inv, dtype=torch.float32))  # fp32 multiply by fp32(1/max)
        e = -200
        while 2.0 ** e < r:
            e += 1
    return max(-127, min(127, e))
