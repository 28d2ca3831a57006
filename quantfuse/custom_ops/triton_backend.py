"""``triton`` backend: Triton kernels with the CUDA backend's numerics, bit for bit.

Numerics (docs/numerics.md, reference.py): accurate ``exp`` from libdevice
(``tl.exp`` is the fast ex2-based one; libdevice's FTZ flavour that Triton links
differs from the non-FTZ one only where exp(-g) is subnormal, where 1 + e == 1
anyway), correctly rounded divisions (``tl.div_rn``; Triton 3.6 lowers
``tl.fdiv(..., ieee_rounding=True)`` and ``/`` to ``div.full.f32``, a 2-ulp
approximation that flushes for huge denominators: that was the bit-exactness bug),
the scale as ``amax * fp32(1/448)`` (what torch computes for ``amax / 448.0`` on
CUDA), no FMA contraction (``enable_fp_fusion=False`` at launch, so ``1 + exp(-g)``
stays an add as in torch), NaN-propagating amax (``tl.max`` drops NaN), RNE
downcasts (``cvt.rn``) to fp16 / bf16 and e4m3.

Triton is imported lazily: importing this module never needs triton or CUDA.
"""

from __future__ import annotations

import functools
import logging

import torch

from quantfuse.custom_ops import kernel_inputs

NAME = "triton"

log = logging.getLogger("quantfuse.triton")

OPS = ("silu_and_mul", "per_token_group_quant_fp8", "silu_and_mul_per_block_quant")
SUPPORTED_DTYPES = kernel_inputs.SUPPORTED_DTYPES
SUPPORTED_GROUPS = kernel_inputs.FP8_GROUPS
_TILE = 4096  # elements per program in the quant kernel (BLOCK_G = _TILE // group)
_SILU_BLOCK = 1024

_failed: str | None = None


@functools.lru_cache(maxsize=1)
def _kernels():
    """Define the kernels on first use (needs triton); returns a namespace dict."""
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import libdevice

    @triton.jit
    def _nan_max(a, b):
        # torch.amax / clamp_min propagate NaN; tl.maximum's default does not.
        return tl.where((a > b) | (a != a), a, b)

    @triton.jit
    def _silu_mul(g, u):
        # silu(g) * u exactly as torch: g / (1 + exp(-g)) then * u, each fp32-rounded.
        # The division as nvcc's own correctly rounded fast path (approximate
        # reciprocal, one Newton step, q0 = g*r, one Markstein correction; zero results
        # take g's sign), exact for |g| < 87 (csrc/act_quant.cuh, silu_fast); a tile
        # holding any |g| >= 87 or NaN recomputes those elements with tl.div_rn.
        d = 1.0 + libdevice.exp(-g)
        r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [d],
                                      dtype=tl.float32, is_pure=True, pack=1)
        r = tl.fma(r, tl.fma(-d, r, 1.0), r)
        q0 = g * r
        q = libdevice.copysign(tl.fma(tl.fma(-d, q0, g), r, q0), g)
        bad = ~(tl.abs(g) < 87.0)
        if tl.max(bad.to(tl.int32)) > 0:
            q = tl.where(bad, tl.div_rn(g, d), q)
        return q * u

    @triton.jit
    def _ue8m0_ceil(s):
        # Smallest power of two >= s from the bits (reference.ue8m0_ceil). Scales
        # here are >= 1e-10 / 448, never subnormal; NaN / inf pass through.
        b = s.to(tl.int32, bitcast=True)
        e = (b >> 23) & 0xFF
        m = b & 0x7FFFFF
        up = tl.where(m == 0, b, (e + 1) << 23).to(tl.float32, bitcast=True)
        return tl.where((s > 0) & (e != 0xFF), up, s)

    @triton.jit
    def act_group_quant_kernel(
        x_ptr, q_ptr, s_ptr, total_groups, groups_per_row, hidden, s_st, s_sg,
        GS: tl.constexpr, BLOCK_G: tl.constexpr, GATED: tl.constexpr, UE8M0: tl.constexpr,
    ):
        gi = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
        gmask = gi < total_groups
        t = (gi // groups_per_row).to(tl.int64)
        g = (gi % groups_per_row).to(tl.int64)
        col = tl.arange(0, GS)
        in_row = 2 * hidden if GATED else hidden
        offs = (t * in_row + g * GS)[:, None] + col[None, :]
        m2 = gmask[:, None]
        a = tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float32)
        if GATED:
            u = tl.load(x_ptr + offs + hidden, mask=m2, other=0.0).to(tl.float32)
            # "Intermediate rounding": round the activation to the input dtype.
            y = _silu_mul(a, u).to(x_ptr.dtype.element_ty).to(tl.float32)
        else:
            y = a
        amax = tl.reduce(tl.abs(y), 1, _nan_max)
        amax = _nan_max(amax, 1e-10)
        # amax * fp32(1/448): what torch computes for `amax / 448.0` on CUDA (eager
        # and Inductor both multiply by the reciprocal of a constant divisor).
        scale = amax * (1.0 / 448.0)
        if UE8M0:
            scale = _ue8m0_ceil(scale)
        # Correctly rounded y / scale with one division per group, as the CUDA kernel
        # does: r = RN(1 / scale) in the scale's own (per-group) layout, then one Markstein
        # correction per element (an sm_90 compile with the run-time 16-byte pointer
        # specialisation: one div.rn per thread and group, not per element; an AOT compile
        # without that specialisation shows one per element).
        if UE8M0:
            # a power of two in [2^-43, 2^120]: 1 / scale is exact from the exponent
            # bits and y * (1 / scale) is the correctly rounded quotient; for a
            # non-finite scale r = 0 (inf) or NaN gives the true division's 0 / NaN
            e = (scale.to(tl.int32, bitcast=True) >> 23) & 0xFF
            r = ((254 - e) << 23).to(tl.float32, bitcast=True)
            r = tl.where(e != 0xFF, r, tl.where(scale != scale, scale, 0.0))
            v = y * r[:, None]
        else:
            # q0 - r * RN(scale * q0 - y) keeps -0 with the sign flipped through r (Triton's
            # unary minus is 0 - x: -(+0) would be +0); an inf scale (inf amax) gives r = 0 and
            # y * 0, which is y / inf; a NaN scale gives NaN either way
            r = tl.broadcast_to(tl.div_rn(1.0, scale)[:, None], y.shape)
            q0 = y * r
            q = tl.fma(tl.fma(tl.broadcast_to(scale[:, None], y.shape), q0, -y), -r, q0)
            v = tl.where(r == 0.0, q0, q)
        v = tl.clamp(v, -448.0, 448.0, propagate_nan=tl.PropagateNan.ALL)
        q_offs = (t * hidden + g * GS)[:, None] + col[None, :]
        tl.store(q_ptr + q_offs, v.to(tl.float8e4nv), mask=m2)
        tl.store(s_ptr + t * s_st + g * s_sg, scale, mask=gmask)

    @triton.jit
    def silu_and_mul_kernel(x_ptr, out_ptr, d, chunks, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        row = (pid // chunks).to(tl.int64)
        col = (pid % chunks) * BLOCK + tl.arange(0, BLOCK)
        mask = col < d
        src = x_ptr + row * 2 * d + col
        a = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(src + d, mask=mask, other=0.0).to(tl.float32)
        y = _silu_mul(a, u)
        tl.store(out_ptr + row * d + col, y.to(out_ptr.dtype.element_ty), mask=mask)

    return {"quant": act_group_quant_kernel, "silu": silu_and_mul_kernel, "triton": triton}


def is_available() -> bool:
    """True when CUDA and triton are importable and usable (cheap after the first call)."""
    global _failed
    if _failed is not None:
        return False
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available")
        _kernels()
        return True
    except Exception as e:  # noqa: BLE001 - any failure means "unavailable"
        _failed = f"{type(e).__name__}: {e}"
        log.warning("quantfuse Triton backend unavailable: %s", _failed)
        return False


def unsupported_reason(op: str, x: torch.Tensor, group_size: int | None) -> str | None:
    """None when ``op`` on ``x`` (and ``group_size``) runs here, else a short reason."""
    why = kernel_inputs.silu_fp8_group_reason(op, OPS, x, group_size)
    if why:
        return why
    if not is_available():
        return f"Triton unavailable ({_failed})"
    return None


def _check(x: torch.Tensor, outs: dict[str, torch.Tensor], gated: bool, group_size: int | None):
    reason = unsupported_reason(
        "silu_and_mul" if group_size is None else
        ("silu_and_mul_per_block_quant" if gated else "per_token_group_quant_fp8"),
        x, group_size)
    if reason is not None:
        raise RuntimeError(f"quantfuse triton backend: {reason}")
    for name, t in outs.items():
        if t.device != x.device:
            raise RuntimeError(f"quantfuse triton backend: {name} on {t.device}, x on {x.device}")


def silu_and_mul(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out[..., d] = silu(x[..., :d]) * x[..., d:]`` in ``x.dtype``."""
    _check(x, {"out": out}, True, None)
    d = x.shape[-1] // 2
    tokens = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if out.dtype != x.dtype or not out.is_contiguous() or out.numel() != tokens * d:
        raise RuntimeError(f"quantfuse triton backend: bad out {tuple(out.shape)} {out.dtype}")
    if tokens == 0 or d == 0:
        return
    k = _kernels()
    chunks = -(-d // _SILU_BLOCK)
    k["silu"][(tokens * chunks,)](x, out, d, chunks, BLOCK=_SILU_BLOCK, num_warps=4,
                                  enable_fp_fusion=False)


def _group_quant(q, s, x, group_size: int, use_ue8m0: bool, gated: bool) -> None:
    _check(x, {"q": q, "s": s}, gated, group_size)
    hidden = x.shape[-1] // 2 if gated else x.shape[-1]
    tokens = x.numel() // x.shape[-1] if x.shape[-1] else 0
    groups = hidden // group_size
    if q.dtype != torch.float8_e4m3fn or not q.is_contiguous() or q.numel() != tokens * hidden:
        raise RuntimeError(f"quantfuse triton backend: bad q {tuple(q.shape)} {q.dtype}")
    if s.dtype != torch.float32 or s.numel() != tokens * groups:
        raise RuntimeError(f"quantfuse triton backend: bad s {tuple(s.shape)} {s.dtype}")
    if tokens == 0 or groups == 0:
        return
    st, sg = s.view(tokens, groups).stride()
    total = tokens * groups
    if total >= 2**31:
        raise RuntimeError(f"quantfuse triton backend: too many groups ({total})")
    block_g = _TILE // group_size
    k = _kernels()
    grid = (-(-total // block_g),)
    k["quant"][grid](x, q, s, total, groups, hidden, st, sg, GS=group_size, BLOCK_G=block_g,
                     GATED=gated, UE8M0=bool(use_ue8m0), num_warps=4, enable_fp_fusion=False)


def per_token_group_quant_fp8(q, s, x, group_size: int, use_ue8m0: bool) -> None:
    """FP8 E4M3 per-token-group quantisation of ``x`` into ``q`` and scales ``s``."""
    _group_quant(q, s, x, group_size, use_ue8m0, gated=False)


def silu_and_mul_per_block_quant(q, s, x, group_size: int, use_ue8m0: bool) -> None:
    """Fused ``silu_and_mul`` + ``per_token_group_quant_fp8`` (activation rounded to x.dtype)."""
    _group_quant(q, s, x, group_size, use_ue8m0, gated=True)
