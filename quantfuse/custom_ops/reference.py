"""Plain-torch reference maths for every quantfuse op (the numerics contract).

These functions run on any device and any torch version, and are the ``torch``
backend of the ops in :mod:`quantfuse.custom_ops.ops`.  They are also exported as
``quantfuse.reference`` so users can check a kernel against them.

Contract (DESIGN.md, "Numerics"): all arithmetic in fp32;
``amax = max(max|y| over the group, 1e-10)``; ``scale = amax / 448``; UE8M0 mode
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
    scale = amax / FP8_MAX
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

    The activation is rounded to ``x.dtype`` before quantising (DESIGN.md,
    "Intermediate rounding"), so the result equals the unfused pair bit for bit.
    """
    return per_token_group_quant_fp8(silu_and_mul(x), group_size, column_major_scales, use_ue8m0)
