"""Plain-torch reference maths for every quantfuse op (the numerics contract).

These functions run on any device and any torch version, and are the ``torch``
backend of the ops in :mod:`quantfuse.custom_ops.ops`.  They are also exported as
``quantfuse.reference`` so users can check a kernel against them.

Contract (docs/numerics.md): all arithmetic in fp32;
``amax = max(max|y| over the group, 1e-10)``; ``scale = amax * fp32(1/448)``; UE8M0 mode
rounds the scale up to a power of two; ``q = e4m3(clamp(y / scale, -448, 448))``.
The fused op rounds the activation to the input dtype before quantising, so fused
and unfused results agree bit for bit.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
EPS = 1e-10


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` computed in fp32, returned in ``x.dtype``."""
    d = x.shape[-1] // 2
    xf = x.float()
    gate, up = xf[..., :d], xf[..., d:]
    return (gate / (1.0 + torch.exp(-gate)) * up).to(x.dtype)


def ue8m0_ceil(scale: torch.Tensor) -> torch.Tensor:
    """Smallest power of two >= ``scale`` (exact, unlike ``exp2(ceil(log2(s)))``).

    ``log2`` in fp32 rounds values just above a power of two down onto it, so the
    libm form can return a scale one binade too small; the exponent bits cannot.
    Non-positive, infinite and NaN inputs pass through ``exp2(ceil(log2(s)))``.
    """
    mant, exp = torch.frexp(scale)
    # scale = mant * 2**exp with mant in [0.5, 1); mant == 0.5 is an exact power of two.
    exact = torch.ldexp(torch.ones_like(scale), exp - (mant == 0.5).to(exp.dtype))
    finite_pos = torch.isfinite(scale) & (scale > 0)
    return torch.where(finite_pos, exact, torch.exp2(torch.ceil(torch.log2(scale))))


def group_scales(y32: torch.Tensor, use_ue8m0: bool) -> torch.Tensor:
    """Per-group fp32 scales for a ``[..., G, group]`` fp32 tensor, shape ``[..., G]``.

    NaN anywhere in a group makes that group's scale NaN (torch's amax propagates
    NaN; kernels must do the same).
    """
    amax = y32.abs().amax(dim=-1).clamp_min(EPS)
    # `amax / 448` is what models write, and what torch on CUDA (eager, for a scalar
    # divisor, and Inductor, for a constant one) computes as a multiply by fp32(1/448);
    # on the CPU it is a true division.  The contract is the multiply, on every device,
    # so that the fused op reproduces native CUDA graphs' scales bit for bit.
    scale = amax * torch.full_like(amax, 1.0 / FP8_MAX)
    return ue8m0_ceil(scale) if use_ue8m0 else scale


def _alloc_scales(lead: tuple[int, ...], groups: int, device, column_major: bool) -> torch.Tensor:
    if column_major:
        # [..., G] view of contiguous [G, ...] storage: what a TMA-fed GEMM reads.
        return torch.empty((groups, *lead), dtype=torch.float32, device=device).movedim(0, -1)
    return torch.empty((*lead, groups), dtype=torch.float32, device=device)


def per_token_group_quant_fp8(
    x: torch.Tensor,
    group_size: int,
    column_major_scales: bool = False,
    use_ue8m0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic FP8 E4M3 quantisation in groups of ``group_size`` along the last dim.

    Returns ``(q, s)``: ``q`` has ``x``'s shape in float8_e4m3fn, ``s`` is fp32
    ``[..., H // group_size]`` (column-major storage when ``column_major_scales``).
    """
    *lead, hidden = x.shape
    groups = hidden // group_size
    y32 = x.float().reshape(*lead, groups, group_size)
    scale = group_scales(y32, use_ue8m0)
    q = (y32 / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    s = _alloc_scales(tuple(lead), groups, x.device, column_major_scales)
    s.copy_(scale)
    return q.reshape(x.shape), s


def silu_and_mul_per_block_quant(
    x: torch.Tensor,
    group_size: int,
    column_major_scales: bool = False,
    use_ue8m0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``per_token_group_quant_fp8(silu_and_mul(x), ...)``.

    The activation is rounded to ``x.dtype`` before quantising (docs/numerics.md,
    "Common rules"), so the result equals the unfused pair bit for bit.
    """
    return per_token_group_quant_fp8(silu_and_mul(x), group_size, column_major_scales, use_ue8m0)


# --- more activations and schemes (issue: every activation × scheme pair) ----------------

def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU ``relu(x) ** 2`` (non-gated), fp32 maths, output in ``x.dtype``."""
    return torch.relu(x.float()).square().to(x.dtype)


def per_token_quant_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic FP8 E4M3 quantisation with one scale per token: ``(q, s[..., 1])``.

    The same maths as :func:`per_token_group_quant_fp8` with one group per row.
    """
    return per_token_group_quant_fp8(x, x.shape[-1])


MX_BLOCK = 32
E8M0_BIAS = 127
E8M0_NAN = 0xFF
#: element format -> (largest magnitude, exponent of the largest binade)
MX_ELEMENTS = {"e4m3": (448.0, 8), "e2m1": (6.0, 2)}
SCALE_ROUNDINGS = ("floor", "rceil")


def _ceil_log2(v: torch.Tensor) -> torch.Tensor:
    mant, exp = torch.frexp(v)
    return exp - (mant == 0.5).to(exp.dtype)


def mx_block_exponents(x: torch.Tensor, element: str, scale_rounding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared exponents of 32-element blocks: ``(exponent int32 [..., G], non-finite mask)``.

    floor (OCP spec): ``floor(log2(amax)) - emax_elem``; rceil (NVIDIA): the smallest
    power of two not below ``amax * fp32(1 / max_elem)`` (fp32 multiply, as in
    TransformerEngine).  Both exact from the exponent bits, clamped to E8M0's
    ``[-127, 127]`` (an all-zero block gets 2**-127).  A block holding NaN or inf is a
    NaN block (scale byte 0xFF).
    """
    if scale_rounding not in SCALE_ROUNDINGS:
        raise ValueError(f"scale_rounding must be one of {SCALE_ROUNDINGS}, got {scale_rounding!r}")
    max_elem, emax = MX_ELEMENTS[element]
    amax = x.float().unflatten(-1, (-1, MX_BLOCK)).abs().amax(-1)
    bad = ~torch.isfinite(amax)
    safe = torch.where(bad | (amax == 0), torch.ones_like(amax), amax)
    if scale_rounding == "floor":
        exp = torch.frexp(safe)[1] - 1 - emax  # amax = m * 2**k, m in [0.5, 1): floor(log2) = k - 1
    else:
        # amax * fp32(1/max_elem), as NVIDIA's kernels and FP8 scales compute it; a tiny
        # subnormal amax can make the product 0, whose exponent is the smallest, -127
        r = safe * torch.full_like(safe, 1.0 / max_elem)
        exp = _ceil_log2(r)
        exp = torch.where(r == 0, torch.full_like(exp, -E8M0_BIAS), exp)
    exp = torch.where(amax == 0, torch.full_like(exp, -E8M0_BIAS), exp)
    return exp.clamp(-E8M0_BIAS, E8M0_BIAS).to(torch.int32), bad


def _scaled_blocks(x: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
    # dividing by a power of two is exact; ldexp(1, -e) stays finite for |e| <= 127
    return x.float().unflatten(-1, (-1, MX_BLOCK)) * torch.ldexp(torch.ones_like(exp, dtype=torch.float32),
                                                                   -exp).unsqueeze(-1)


def _scale_bytes(exp: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    return torch.where(bad, E8M0_NAN, exp + E8M0_BIAS).to(torch.uint8)


def swizzle_128x4(s: torch.Tensor) -> torch.Tensor:
    """E8M0 scale bytes ``[..., G]`` -> the 128x4 tiled layout that block-scaled tensor-core
    GEMMs read (cuBLAS / CUTLASS block-scale layout, torchao's ``to_blocked``).

    Rows (tokens, leading dims flattened) are padded to a multiple of 128 and groups to a
    multiple of 4 with zero bytes; the result is ``[T_pad, G_pad]`` whose memory holds the
    128 x 4 tiles row-major by (row block, column block), and inside a tile the byte of
    (r, c) at ``(r % 32) * 16 + (r // 32) * 4 + c``.
    """
    s2 = s.reshape(-1, s.shape[-1])
    t, g = s2.shape
    tp, gp = -(-t // 128) * 128, -(-g // 4) * 4
    padded = torch.nn.functional.pad(s2, (0, gp - g, 0, tp - t))  # zero bytes; one kernel
    # [row block, r // 32, r % 32, col block, c] -> [row block, col block, r % 32, r // 32, c]
    return padded.view(tp // 128, 4, 32, gp // 4, 4).permute(0, 3, 2, 1, 4).reshape(tp, gp)


def _mx_scales(exp: torch.Tensor, bad: torch.Tensor, swizzled: bool) -> torch.Tensor:
    s = _scale_bytes(exp, bad)
    return swizzle_128x4(s) if swizzled else s


def mxfp8_quant(x: torch.Tensor, scale_rounding: str = "rceil",
                is_sf_swizzled_layout: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MXFP8: E4M3 elements, one E8M0 scale byte per 32 elements: ``(q, s uint8 [..., H/32])``
    (``is_sf_swizzled_layout``: ``s`` in the 128x4 tiled layout, see :func:`swizzle_128x4`).

    Elements saturate at ±448; a NaN block is all NaN with scale byte 0xFF.
    """
    exp, bad = mx_block_exponents(x, "e4m3", scale_rounding)
    v = _scaled_blocks(x, exp).clamp(-448.0, 448.0)
    v = torch.where(bad.unsqueeze(-1), torch.full_like(v, float("nan")), v)
    return v.to(FP8_DTYPE).flatten(-2), _mx_scales(exp, bad, is_sf_swizzled_layout)


#: E2M1 magnitudes by code 0..7
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to E2M1 codes (sign bit 8), nearest-even, saturating at ±6."""
    mag = v.abs().clamp(max=6.0)
    # the grid step is 0.5 below 2, 1 below 4, 2 up to 6; torch.round is half-to-even,
    # and an even multiple of the step is an even code
    mag = torch.where(mag < 2, torch.round(mag * 2) / 2,
                      torch.where(mag < 4, torch.round(mag), torch.round(mag / 2) * 2))
    code = torch.where(mag <= 2, mag * 2, torch.where(mag == 3, 5.0, torch.where(mag == 4, 6.0, 7.0)))
    return code.to(torch.uint8) | (torch.signbit(v).to(torch.uint8) << 3)


def mxfp4_quant(x: torch.Tensor, scale_rounding: str = "rceil",
                is_sf_swizzled_layout: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MXFP4: E2M1 elements packed two a byte (element 2i in the low nibble), one E8M0
    scale byte per 32 elements: ``(q uint8 [..., H/2], s uint8 [..., H/32])``
    (``is_sf_swizzled_layout``: ``s`` in the 128x4 tiled layout, see :func:`swizzle_128x4`).

    Elements saturate at ±6; NaN blocks get scale byte 0xFF and element codes 0.
    """
    exp, bad = mx_block_exponents(x, "e2m1", scale_rounding)
    codes = e2m1_codes(_scaled_blocks(x, exp))
    codes = torch.where(bad.unsqueeze(-1), torch.zeros_like(codes), codes).flatten(-2)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), _mx_scales(exp, bad, is_sf_swizzled_layout)
