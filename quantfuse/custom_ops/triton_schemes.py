"""``triton`` backend: every activation x quantisation op of :data:`catalog.OPS` from one kernel family.

The backend protocol (:mod:`quantfuse.custom_ops.plan`): :data:`NAME`, :func:`is_available`,
:func:`supports` and :func:`run`. Everything a launch needs that depends only on
``plan.key`` (constexpr switches, views, grids, scale strides) is worked out once per key
into a launch closure, so a call costs a dict look-up plus the Triton launch.

The activation (identity / ``silu_and_mul`` / ``relu2``), the gated input layout (halves,
separate, interleaved) and the scheme (none, FP8 per-token, FP8 per-group, FP8 static,
MXFP8, MXFP4) are ``tl.constexpr`` switches, with the integer codes of
:func:`catalog.codes`, of two ``@triton.jit`` kernels that share their helpers:

* ``_row_kernel``: a tile of ``ROWS`` rows; schemes *none* (activation only), FP8 static
  (no reduction) and FP8 per-token. A row that fits one ``BLOCK`` stays in registers (one
  pass); a longer per-token row is read twice in chunks (pass 1: amax, pass 2: quantise;
  the re-read hits L2).
* ``_group_kernel``: a tile of ``BLOCK_G`` groups of ``GS`` elements (flattened over
  rows); FP8 per-group (GS 64/128, fp32 or UE8M0 scales, any scale strides), MXFP8 and
  MXFP4 (GS 32, E8M0 scale bytes, every MX rounding and special-block field of the catalog
  as ``constexpr`` codes, row-major or 128x4 swizzled).

Layouts are read in place: halves as two offsets into ``x``, separate as a second base
pointer, interleaved as a view of ``x`` with one word per (gate, up) pair, unpacked on
the bits (a stride-2 load of 16-bit elements would not vectorise).

Numerics are reference.py's bit for bit (same GPU): silu as ``g / (1 + exp(-g))`` with
libdevice's accurate ``exp`` and IEEE division (``tl.div_rn``), no FMA contraction
(``enable_fp_fusion=False``); for 16-bit inputs silu is rounded to the input dtype before
the multiply by ``up`` and the product rounded again (``catalog.ActRounding.SILU_THEN_MUL``:
eager's ``F.silu(g) * u``); relu2 as ``relu(x) * relu(x)`` rounded once; amax from the
integer bits of ``|y|`` (integer order == float order for non-negative floats, and NaN's
bits are the largest, so the max propagates NaN for free); FP8 scale ``amax *
fp32(1/448)``; ``q = e4m3(clamp(y / scale))`` with NaN kept, the division correctly
rounded (one reciprocal per row or group and a Markstein correction); MX exponents from
the exponent bits exactly as ``reference.mx_exponents``.

The SiLU division stays a ``div.rn`` per element (one SiLU for every kernel): an
``rcp.approx`` + Markstein division gives the same bits only for ``|g| < 87``, and Triton
cannot branch per thread, so the guard that sends the rest to ``div.rn`` is tile-wide: a
block reduction (more barriers) and a larger kernel (``benchmarks/triton_sass.py``).

Under ``TRITON_INTERPRET=1`` (CPU tests) the kernels run with ``INTERP=True``: the
interpreter has no libdevice (``tl.exp``, i.e. numpy's ``exp``, is used, which differs
from torch's CPU ``exp`` in the last bit, so the interpreter test swaps the reference's
``exp`` for numpy's), its fma rounds twice (so it divides instead of the Markstein
correction), and its fp32 -> bf16 / fp8 casts truncate, so bf16 rounding and e4m3
encoding are done on the integer bits (``SOFT``: the same maths the hardware ``cvt.rn``
does; ``_SOFT_CASTS`` forces that path on the GPU too, for testing).

Triton is imported lazily: importing this module never needs triton or CUDA.
"""

from __future__ import annotations

import functools
import logging
import os
import struct

import torch

from quantfuse import catalog
from quantfuse.catalog import ActRounding, ApplyForm, Grouping, Layout, MxByte0, MxInf, MxNan, MxRounding, ScaleLayout, StepDtype, Ue8m0

NAME = "triton"

log = logging.getLogger("quantfuse.triton")

_CODES = catalog.codes()

# Kernel switch codes and format constants. Triton kernels may read only tl.constexpr
# globals, and triton is imported lazily, so _kernels() rebinds each name listed in
# _KERNEL_GLOBALS to a tl.constexpr of its value; host code reads _CODES instead.
_IDENTITY = _CODES[f"act_{catalog.IDENTITY.name}"]
_SILU = _CODES[f"act_{catalog.SILU_AND_MUL.name}"]
_RELU2 = _CODES[f"act_{catalog.RELU2.name}"]
_SWIGLU_OAI = _CODES[f"act_{catalog.SWIGLUOAI_AND_MUL.name}"]
_S_NONE = _CODES["scheme_none"]
_S_TOKEN = _CODES[f"scheme_{catalog.FP8_PER_TOKEN.key}"]
_S_GROUP = _CODES[f"scheme_{catalog.FP8_PER_GROUP.key}"]
_S_STATIC = _CODES[f"scheme_{catalog.FP8_STATIC.key}"]
_S_TENSOR = _CODES[f"scheme_{catalog.FP8_PER_TENSOR.key}"]
_S_MXFP8 = _CODES[f"scheme_{catalog.MXFP8.key}"]
_S_MXFP4 = _CODES[f"scheme_{catalog.MXFP4.key}"]
_HALVES = _CODES[f"layout_{Layout.HALVES.value}"]
_SEPARATE = _CODES[f"layout_{Layout.SEPARATE.value}"]
_INTERLEAVED = _CODES[f"layout_{Layout.INTERLEAVED.value}"]
#: input dtype -> KIND code of the kernels
_KIND_OF = {dt: i for i, dt in enumerate(catalog.INPUT_DTYPES)}
_BF16 = _KIND_OF[torch.bfloat16]
_F16 = _KIND_OF[torch.float16]
_F32 = _KIND_OF[torch.float32]
_FP8_MAX = catalog.E4M3.max
_FP8_INV = 1.0 / catalog.E4M3.max  # rounded to fp32 in the kernels: what torch multiplies by
_FP8_EMAX = catalog.E4M3.emax
_FP4_INV = 1.0 / catalog.E2M1.max
_FP4_EMAX = catalog.E2M1.emax
_E8M0_BIAS = catalog.E8M0_BIAS
_E8M0_NAN = catalog.E8M0_NAN
_FP8_OVERFLOW = catalog.E4M3.overflow
#: half an ulp of the element's mantissa in a float32's mantissa field (MxRounding.EVEN's adder)
_FP8_HALF_ULP = 1 << (22 - catalog.E4M3.mant)
_FP4_HALF_ULP = 1 << (22 - catalog.E2M1.mant)
_MXR_RCEIL = _CODES[f"mx_rounding_{MxRounding.RCEIL.value}"]
_MXR_CEIL = _CODES[f"mx_rounding_{MxRounding.CEIL.value}"]
_MXR_EVEN = _CODES[f"mx_rounding_{MxRounding.EVEN.value}"]
_MX_INF_BITS = _CODES[f"mx_inf_{MxInf.BITS.value}"]
_MX_B0_MIN_NORMAL = _CODES[f"mx_byte0_{MxByte0.MIN_NORMAL.value}"]
_MX_B0_ONE = _CODES[f"mx_byte0_{MxByte0.ONE.value}"]
_MX_B0_EXP2 = _CODES[f"mx_byte0_{MxByte0.EXP2.value}"]
_MX_B0_POW = _CODES[f"mx_byte0_{MxByte0.POW.value}"]
_MX_INF_EXP2 = _CODES[f"mx_inf_{MxInf.EXP2.value}"]
_MX_NAN_NAN = _CODES[f"mx_nan_{MxNan.NAN.value}"]
#: what a byte-0 block's elements are multiplied by for MxByte0.MIN_NORMAL: 1 / fp32's smallest normal
_MX_MIN_NORMAL_INV = 2.0 ** (catalog.E8M0_BIAS - 1)
_UE8M0_NONE = _CODES[f"ue8m0_{Ue8m0.NONE.value}"]
_UE8M0_EXACT = _CODES[f"ue8m0_{Ue8m0.EXACT.value}"]
_UE8M0_EXP2 = _CODES[f"ue8m0_{Ue8m0.EXP2_CEIL_LOG2.value}"]
_KERNEL_GLOBALS = ("_IDENTITY", "_SILU", "_RELU2", "_SWIGLU_OAI", "_S_NONE", "_S_TOKEN", "_S_GROUP", "_S_STATIC", "_S_TENSOR",
                   "_S_MXFP8", "_S_MXFP4", "_HALVES", "_SEPARATE", "_INTERLEAVED", "_BF16", "_F16", "_F32", "_FP8_MAX",
                   "_FP8_INV", "_FP8_EMAX", "_FP4_INV", "_FP4_EMAX", "_E8M0_BIAS", "_E8M0_NAN", "_FP8_OVERFLOW",
                   "_UE8M0_NONE", "_UE8M0_EXACT", "_UE8M0_EXP2", "_FP8_HALF_ULP", "_FP4_HALF_ULP", "_MXR_RCEIL",
                   "_MXR_CEIL", "_MXR_EVEN", "_MX_INF_BITS", "_MX_INF_EXP2", "_MX_B0_MIN_NORMAL", "_MX_B0_ONE",
                   "_MX_B0_EXP2", "_MX_B0_POW", "_MX_NAN_NAN",
                   "_MX_MIN_NORMAL_INV")

# the swizzled scale offset in _store_mx_scale is written with shifts for this tile
assert (catalog.SWIZZLE_ROWS, catalog.SWIZZLE_COLS) == (128, 4)

#: what the kernels implement; anything else the catalog adds gets a reason from supports()
_ACTIVATIONS = (catalog.IDENTITY, catalog.SILU_AND_MUL, catalog.RELU2, catalog.SWIGLUOAI_AND_MUL)
_SCHEMES = (catalog.FP8_PER_TOKEN, catalog.FP8_PER_GROUP, catalog.FP8_STATIC, catalog.FP8_PER_TENSOR, catalog.MXFP8,
            catalog.MXFP4)
_LAYOUTS = (Layout.HALVES, Layout.SEPARATE, Layout.INTERLEAVED)
_ROUNDINGS = (ActRounding.ONCE, ActRounding.SILU_THEN_MUL, ActRounding.EACH_OP)

_TILE = 4096           # elements per program (group kernel; row kernel for short rows)
_MAX_ROW_BLOCK = 8192  # longest row kept whole in registers; longer rows are chunked
_CHUNK = 4096

#: force the integer-bit bf16 rounding / e4m3 encoding on the GPU (tests); None = only
#: under the interpreter
_SOFT_CASTS: bool | None = None

_failed: str | None = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=1)
def _kernels():
    """Define the kernels on first use (needs triton); returns a namespace dict."""
    global triton, tl, libdevice  # the interpreter looks tl up in the kernels' globals
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import libdevice

    g = globals()
    g.update({n: tl.constexpr(g[n].value if isinstance(g[n], tl.constexpr) else g[n]) for n in _KERNEL_GLOBALS})

    @triton.jit
    def _load_f32(ptr, offs, mask, KIND: tl.constexpr, SOFT: tl.constexpr):
        if SOFT and KIND == _BF16:
            # bf16 passed as an int16 view: widen the bits exactly
            b = tl.load(ptr + offs, mask=mask, other=0).to(tl.int32)
            v = ((b & 0xFFFF) << 16).to(tl.float32, bitcast=True)
        else:
            v = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
        return v

    @triton.jit
    def _bf16_rne_bits(y):
        # fp32 bits rounded to bf16 (nearest even), low half zero; NaN stays NaN
        b = y.to(tl.int32, bitcast=True)
        r = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
        return tl.where(y != y, (b & -65536) | 0x400000, r)

    @triton.jit
    def _round_to_input(y, KIND: tl.constexpr, SOFT: tl.constexpr):
        # an intermediate eager would store in x.dtype (RNE); fp32 inputs are unchanged
        if KIND == _F16:
            y = y.to(tl.float16).to(tl.float32)
        elif KIND == _BF16:
            if SOFT:
                y = _bf16_rne_bits(y).to(tl.float32, bitcast=True)
            else:
                y = y.to(tl.bfloat16).to(tl.float32)
        return y

    @triton.jit
    def _unpack_pairs(w, KIND: tl.constexpr):
        # elements 2i (low half of the word) and 2i + 1 (high half) of a pair view
        # (int64 words for fp32, int32 for 16-bit types) as fp32, exactly
        if KIND == _F32:
            lo = w.to(tl.int32).to(tl.float32, bitcast=True)
            hi = (w >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        elif KIND == _F16:
            lo = w.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            hi = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        else:
            lo = (w << 16).to(tl.float32, bitcast=True)
            hi = (w & -65536).to(tl.float32, bitcast=True)
        return lo, hi

    @triton.jit
    def _bases(rows, H, GATED: tl.constexpr, LAYOUT: tl.constexpr):
        # where row `rows` of gate and up start: elements of x / up, or for INTERLEAVED
        # words of x's pair view (one word per output element)
        if GATED and LAYOUT == _HALVES:
            xb = rows * (2 * H)
            ub = xb + H
        else:
            xb = rows * H
            ub = xb
        return xb, ub

    @triton.jit
    def _activation(x_ptr, u_ptr, xoff, uoff, mask, alpha, limit, ACT: tl.constexpr, GATED: tl.constexpr,
                    LAYOUT: tl.constexpr, KIND: tl.constexpr, SILU_ROUNDED: tl.constexpr,
                    SOFT: tl.constexpr, INTERP: tl.constexpr):
        if GATED and LAYOUT == _INTERLEAVED:
            a, u = _unpack_pairs(tl.load(x_ptr + xoff, mask=mask, other=0), KIND)
        else:
            a = _load_f32(x_ptr, xoff, mask, KIND, SOFT)
            u = a
            if GATED:
                u = _load_f32(u_ptr, uoff, mask, KIND, SOFT)
        return _act(a, u, alpha, limit, ACT, KIND, SILU_ROUNDED, SOFT, INTERP)

    @triton.jit
    def _pair_activation(x_ptr, u_ptr, xb, ub, pc, m, alpha, limit, ACT: tl.constexpr, GATED: tl.constexpr,
                         LAYOUT: tl.constexpr, KIND: tl.constexpr, SILU_ROUNDED: tl.constexpr,
                         SOFT: tl.constexpr, INTERP: tl.constexpr):
        # output elements 2i (lo) and 2i + 1 (hi) of a tile, xb / ub its first element
        if GATED and LAYOUT == _INTERLEAVED:
            if KIND == _F32:
                # int64 words (gate, up), one per output element
                w = xb[:, None] + 2 * pc[None, :]
                glo, ulo = _unpack_pairs(tl.load(x_ptr + w, mask=m, other=0), KIND)
                ghi, uhi = _unpack_pairs(tl.load(x_ptr + w + 1, mask=m, other=0), KIND)
            else:
                # int64 words (gate, up, gate, up), one per output pair
                w = tl.load(x_ptr + (xb // 2)[:, None] + pc[None, :], mask=m, other=0)
                glo, ulo = _unpack_pairs(w.to(tl.int32), KIND)
                ghi, uhi = _unpack_pairs((w >> 32).to(tl.int32), KIND)
        else:
            glo, ghi = _unpack_pairs(tl.load(x_ptr + (xb // 2)[:, None] + pc[None, :], mask=m, other=0), KIND)
            ulo, uhi = glo, ghi
            if GATED:
                ulo, uhi = _unpack_pairs(tl.load(u_ptr + (ub // 2)[:, None] + pc[None, :], mask=m, other=0), KIND)
        ylo = _act(glo, ulo, alpha, limit, ACT, KIND, SILU_ROUNDED, SOFT, INTERP)
        yhi = _act(ghi, uhi, alpha, limit, ACT, KIND, SILU_ROUNDED, SOFT, INTERP)
        return ylo, yhi

    @triton.jit
    def _act(a, u, alpha, limit, ACT: tl.constexpr, KIND: tl.constexpr, SILU_ROUNDED: tl.constexpr,
             SOFT: tl.constexpr, INTERP: tl.constexpr):
        # act(a, u) in fp32 with eager's roundings to the input dtype (u: up, when gated)
        if ACT == _IDENTITY:
            y = a
        elif ACT == _SWIGLU_OAI:
            y = _swiglu_oai(a, u, alpha, limit, KIND, SOFT, INTERP)
        else:
            if ACT == _SILU:
                if INTERP:
                    e = tl.exp(-a)  # the interpreter has no libdevice
                else:
                    e = libdevice.exp(-a)  # accurate expf, as torch's CUDA exp
                s = tl.div_rn(a, 1.0 + e)
                if SILU_ROUNDED:
                    s = _round_to_input(s, KIND, SOFT)
                y = s * u
            else:
                r = tl.where(a < 0.0, 0.0, a)  # relu that keeps NaN
                y = r * r
            y = _round_to_input(y, KIND, SOFT)
        return y

    @triton.jit
    def _swiglu_oai(a, u, alpha, limit, KIND: tl.constexpr, SOFT: tl.constexpr, INTERP: tl.constexpr):
        # transformers' GptOssExperts._apply_gate op by op, each result rounded to the input
        # dtype as eager stores it (reference.swigluoai_and_mul); the clamps keep NaN, and a
        # limit that the dtype cannot hold is rounded by the store, as eager's clamp does
        g = _round_to_input(tl.where(a > limit, limit, a), KIND, SOFT)
        v = _round_to_input(tl.where(u > limit, limit, tl.where(u < -limit, -limit, u)), KIND, SOFT)
        z = _round_to_input(g * alpha, KIND, SOFT)
        if INTERP:
            e = tl.exp(-z)  # the interpreter has no libdevice
        else:
            e = libdevice.exp(-z)  # accurate expf: torch's CUDA sigmoid is 1 / (1 + exp(-z))
        sig = _round_to_input(tl.div_rn(1.0, 1.0 + e), KIND, SOFT)
        glu = _round_to_input(g * sig, KIND, SOFT)
        return _round_to_input(_round_to_input(v + 1.0, KIND, SOFT) * glu, KIND, SOFT)

    @triton.jit
    def _abs_bits(y):
        return y.to(tl.int32, bitcast=True) & 0x7FFFFFFF

    @triton.jit
    def _floor_bits(v, FLOOR: tl.constexpr):
        # max(v, floor) keeping NaN, on the bits (v >= +0 or NaN: the bits of non-negative floats
        # order as their values and NaN's are the largest; a floor <= 0 changes nothing)
        if FLOOR > 0:
            v = tl.maximum(v.to(tl.int32, bitcast=True), FLOOR).to(tl.float32, bitcast=True)
        return v

    @triton.jit
    def _pow2_ceil(scale, SUBNORMAL: tl.constexpr):
        # the smallest power of two >= scale from the bits (reference.ue8m0_ceil); 0, inf, NaN stay.
        # SUBNORMAL: the recipe lets the scale be subnormal, which is first scaled by 2^64, exactly
        b = scale.to(tl.int32, bitcast=True)
        e = (b >> 23) & 0xFF
        t = scale
        if SUBNORMAL:
            t = tl.where(e == 0, scale * 18446744073709551616.0, scale)
        tb = t.to(tl.int32, bitcast=True)
        up = tl.where((tb & 0x7FFFFF) == 0, tb, (((tb >> 23) & 0xFF) + 1) << 23).to(tl.float32, bitcast=True)
        if SUBNORMAL:
            up = tl.where(e == 0, up * 5.421010862427522e-20, up)  # 2^-64: a power of two >= 2^-149, exact
        return tl.where(e != 0xFF, up, scale)

    @triton.jit
    def _fp8_scale(amax_bits, KIND: tl.constexpr, AMAX_FLOOR: tl.constexpr, SCALE_FLOOR: tl.constexpr,
                   POW2_FLOOR: tl.constexpr, STEP_INPUT: tl.constexpr, UE8M0: tl.constexpr, CAREFUL: tl.constexpr,
                   SOFT: tl.constexpr, INTERP: tl.constexpr):
        # reference.fp8_scales, as csrc/act_quant.cuh fp8_scale: the floors are the fp32 bits of
        # CallPlan.fp8_floors; amax * fp32(1/448), rounded to the input dtype for STEP_INPUT; UE8M0
        # one of the catalog's codes; CAREFUL: the recipe lets the scale leave the range where the
        # divisions' fast forms are exact (_recipe_consts)
        amax = _floor_bits(amax_bits.to(tl.float32, bitcast=True), AMAX_FLOOR)
        scale = amax * _FP8_INV
        if STEP_INPUT:
            scale = _round_to_input(scale, KIND, SOFT)
        scale = _floor_bits(scale, SCALE_FLOOR)
        if UE8M0 == _UE8M0_EXACT:
            scale = _pow2_ceil(scale, CAREFUL)
        elif UE8M0 == _UE8M0_EXP2:
            # torch's exp2(ceil(log2(s))): on the GPU the CUDA math library's log2f / exp2f that
            # eager's kernels call (libdevice, linked without flush-to-zero for these kernels)
            if INTERP:
                scale = tl.exp2(tl.ceil(tl.log2(scale)))
            else:
                scale = libdevice.exp2(tl.ceil(libdevice.log2(scale)))
        return _floor_bits(scale, POW2_FLOOR)

    @triton.jit
    def _e4m3_bits(v):
        # RNE e4m3fn code of fp32 v with |v| <= 448 or NaN (NaN -> 0x7F with its sign, as torch's
        # cast), from the bits
        b = v.to(tl.int32, bitcast=True)
        sign = (b >> 24) & 0x80
        a = b & 0x7FFFFFFF
        normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - 960  # rebias 127 -> 7 (120 << 3)
        # below 2**-6: subnormal steps of 2**-9; (f + 1.5 * 2**23) rounds f to an integer
        f = a.to(tl.float32, bitcast=True) * 512.0 + 12582912.0
        sub = f.to(tl.int32, bitcast=True) - 0x4B400000
        code = tl.where(a < 0x3C800000, sub, normal)
        return (tl.where(a > 0x7F800000, 0x7F, code) | sign).to(tl.uint8)

    @triton.jit
    def _div_by_scale(y, scale, POW2: tl.constexpr, MAY_OVERFLOW: tl.constexpr, INTERP: tl.constexpr,
                      MUL_INV: tl.constexpr, CAREFUL: tl.constexpr):
        # y / scale[:, None] correctly rounded, with one division per row or group instead
        # of one div.rn (a dozen instructions and a slow-path branch) per element, as the
        # CUDA kernels do (csrc/act_quant.cuh scale_fast, markstein_div): r = RN(1 / scale)
        # in the scale's own (row) layout, q0 = y * r, and one Markstein correction
        # q0 - r * RN(scale * q0 - y), which keeps -0 because the sign is flipped through r:
        # Triton's unary minus is 0 - x, so negating the residual, as the CUDA kernel does,
        # turns -(+0) into +0 and y = -0 into q = +0. A power-of-two scale (POW2) makes
        # y * r the rounded quotient already. scale = inf (an inf amax) gives r = 0, and
        # y * 0 is y / inf (+-0, NaN for inf). MAY_OVERFLOW: a quotient beyond fp32's range
        # (a given scale) keeps q0 = +-inf, where the correction would give NaN. MUL_INV: the
        # recipe's y * (1 / scale), y * r itself, for every scale. CAREFUL: scales outside
        # [2^-64, 2^126] (0 and subnormal ones included) may occur; those rows or groups divide
        # with div.rn. The interpreter's fma rounds twice, so it divides.
        if MUL_INV:
            return y * tl.div_rn(1.0, scale)[:, None]
        if INTERP:
            return tl.div_rn(y, scale[:, None])
        r = tl.broadcast_to(tl.div_rn(1.0, scale)[:, None], y.shape)
        q0 = y * r
        if POW2:
            q = q0
        else:
            q = tl.fma(tl.fma(tl.broadcast_to(scale[:, None], y.shape), q0, -y), -r, q0)
            if MAY_OVERFLOW:
                q = tl.where(tl.abs(q0) > 3.4028234663852886e38, q0, q)
            else:
                q = tl.where(r == 0.0, q0, q)
        if CAREFUL:
            fast = (scale >= 5.421010862427522e-20) & (scale <= 8.507059173023462e37)
            q = tl.where(fast[:, None], q, tl.div_rn(y, scale[:, None]))
        return q

    @triton.jit
    def _apply_scale(y, scale, amax_bits, AMAX_FLOOR: tl.constexpr, POW2: tl.constexpr, INTERP: tl.constexpr,
                     MUL_INV: tl.constexpr, RATIO: tl.constexpr, CAREFUL: tl.constexpr):
        # the dynamic recipes' apply step: y * (448 / a) for RATIO (apply=mul_ratio: a the floored
        # amax, 448 / a as torch computes it, RN(RN(1 / a) * 448)), else _div_by_scale
        if RATIO:
            amax = _floor_bits(amax_bits.to(tl.float32, bitcast=True), AMAX_FLOOR)
            return y * (tl.div_rn(1.0, amax) * _FP8_MAX)[:, None]
        return _div_by_scale(y, scale, POW2, False, INTERP, MUL_INV, CAREFUL)

    @triton.jit
    def _div_static(y, s, INTERP: tl.constexpr, MUL_INV: tl.constexpr):
        # y / s for a given per-tensor scale s (a scalar). The Markstein residual is exact,
        # and q0's sign right, for 0 < s in [2^-64, 2^64] wherever the e4m3 code depends on
        # it (|y / s| >= 2^-11); any other scale (subnormal, huge, <= 0, NaN: nonsense, but
        # defined) takes div.rn, on a branch uniform over the program. MUL_INV: the recipe's
        # y * (1 / s), for every scale
        sv = tl.zeros([y.shape[0]], dtype=tl.float32) + s
        if MUL_INV:
            q = _div_by_scale(y, sv, False, True, INTERP, True, False)
        elif INTERP:
            q = _div_by_scale(y, sv, False, True, INTERP, False, False)
        elif (s >= 5.421010862427522e-20) & (s <= 1.8446744073709552e19):
            q = _div_by_scale(y, sv, False, True, INTERP, False, False)
        else:
            q = tl.div_rn(y, tl.broadcast_to(sv[:, None], y.shape))
        return q

    @triton.jit
    def _store_fp8(q_ptr, offs, v, mask, SOFT: tl.constexpr):
        # v is clamped to [-448, 448] or NaN
        if SOFT:
            tl.store(q_ptr + offs, _e4m3_bits(v), mask=mask)
        else:
            tl.store(q_ptr + offs, v.to(tl.float8e4nv), mask=mask)

    @triton.jit
    def _store_q(q_ptr, offs, v, mask, CLAMP: tl.constexpr, SOFT: tl.constexpr):
        # v = y / s: clamped to [-448, 448] (NaN kept) then cast, or without CLAMP torch's cast
        # alone: NaN (0x7F with v's sign) past E4M3's overflow, inf included (c10's
        # fp8e4m3fn_from_fp32_value), else what the clamp gives; q_ptr is then a uint8 view
        c = _clamp_fp8(v)
        if CLAMP:
            _store_fp8(q_ptr, offs, c, mask, SOFT)
        else:
            if SOFT:
                code = _e4m3_bits(c).to(tl.int32)
            else:
                code = c.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
            nan = 0x7F | ((v.to(tl.int32, bitcast=True) >> 24) & 0x80)
            tl.store(q_ptr + offs, tl.where(tl.abs(v) > _FP8_OVERFLOW, nan, code).to(tl.uint8), mask=mask)

    @triton.jit
    def _clamp_fp8(v):
        return tl.where(v > _FP8_MAX, _FP8_MAX, tl.where(v < -_FP8_MAX, -_FP8_MAX, v))  # keeps NaN

    @triton.jit
    def _store_act(o_ptr, offs, y, mask, KIND: tl.constexpr, SOFT: tl.constexpr):
        if SOFT and KIND == _BF16:  # int16 view; y is already bf16-exact
            tl.store(o_ptr + offs, (y.to(tl.int32, bitcast=True) >> 16).to(tl.int16), mask=mask)
        else:
            tl.store(o_ptr + offs, y.to(o_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["T", "nparts", "tiles"])
    def _tensor_amax_kernel(x_ptr, u_ptr, p_ptr, T, H, alpha, limit, nparts, tiles,
                            ACT: tl.constexpr, GATED: tl.constexpr, LAYOUT: tl.constexpr, KIND: tl.constexpr,
                            SILU_ROUNDED: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                            NCHUNK: tl.constexpr, SOFT: tl.constexpr, INTERP: tl.constexpr):
        # the per-tensor scheme's first pass: program p of nparts takes the tiles (of ROWS rows)
        # p, p + nparts, ... below tiles and stores the bits of max |act(x)| over them at p_ptr[p] (the bits
        # of non-negative floats order as their values, NaN's above inf: the max keeps NaN)
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        acc = tl.zeros([ROWS], dtype=tl.int32)
        tile = pid
        while tile < tiles:
            rows = tile * ROWS + tl.arange(0, ROWS)
            tile += nparts
            rmask = rows < T
            xrow, urow = _bases(rows.to(tl.int64), H, GATED, LAYOUT)
            for c in range(NCHUNK):
                cc = c * BLOCK + cols
                m = rmask[:, None] & (cc < H)[None, :]
                y = _activation(x_ptr, u_ptr, xrow[:, None] + cc[None, :], urow[:, None] + cc[None, :], m,
                                alpha, limit, ACT, GATED, LAYOUT, KIND, SILU_ROUNDED, SOFT, INTERP)
                acc = tl.maximum(acc, tl.max(tl.where(m, _abs_bits(y), 0), axis=1))
        tl.store(p_ptr + pid, tl.max(acc, axis=0))

    @triton.jit(do_not_specialize=["T", "nparts"])
    def _row_kernel(x_ptr, u_ptr, o_ptr, s_ptr, T, H, alpha, limit, p_ptr, nparts,
                    ACT: tl.constexpr, GATED: tl.constexpr, LAYOUT: tl.constexpr, SCHEME: tl.constexpr,
                    KIND: tl.constexpr, SILU_ROUNDED: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK: tl.constexpr, NCHUNK: tl.constexpr, NPARTS: tl.constexpr,
                    AMAX_FLOOR: tl.constexpr, SCALE_FLOOR: tl.constexpr, POW2_FLOOR: tl.constexpr,
                    STEP_INPUT: tl.constexpr, UE8M0: tl.constexpr, MUL_INV: tl.constexpr, RATIO: tl.constexpr,
                    CLAMP: tl.constexpr, CAREFUL: tl.constexpr, SOFT: tl.constexpr, INTERP: tl.constexpr):
        # SCHEME _S_STATIC: s_ptr is the given scale (read); _S_TOKEN: the scales (written);
        # _S_TENSOR: the one scale (written by program 0) from the nparts (<= NPARTS) amax bits at
        # p_ptr of _tensor_amax_kernel. AMAX_FLOOR ... CAREFUL: the FP8 recipe (_recipe_consts;
        # static: MUL_INV and CLAMP only)
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rmask = rows < T
        rows64 = rows.to(tl.int64)
        xrow, urow = _bases(rows64, H, GATED, LAYOUT)
        orow = rows64 * H
        cols = tl.arange(0, BLOCK)
        if SCHEME == _S_NONE or SCHEME == _S_STATIC:
            if SCHEME == _S_STATIC:
                s = tl.load(s_ptr)
            for c in range(NCHUNK):
                cc = c * BLOCK + cols
                m = rmask[:, None] & (cc < H)[None, :]
                y = _activation(x_ptr, u_ptr, xrow[:, None] + cc[None, :], urow[:, None] + cc[None, :], m,
                                alpha, limit, ACT, GATED, LAYOUT, KIND, SILU_ROUNDED, SOFT, INTERP)
                if SCHEME == _S_NONE:
                    _store_act(o_ptr, orow[:, None] + cc[None, :], y, m, KIND, SOFT)
                else:
                    _store_q(o_ptr, orow[:, None] + cc[None, :], _div_static(y, s, INTERP, MUL_INV), m, CLAMP, SOFT)
        elif SCHEME == _S_TOKEN and NCHUNK == 1:
            m = rmask[:, None] & (cols < H)[None, :]
            y = _activation(x_ptr, u_ptr, xrow[:, None] + cols[None, :], urow[:, None] + cols[None, :], m,
                            alpha, limit, ACT, GATED, LAYOUT, KIND, SILU_ROUNDED, SOFT, INTERP)
            amax_bits = tl.max(_abs_bits(y), axis=1)
            scale = _fp8_scale(amax_bits, KIND, AMAX_FLOOR, SCALE_FLOOR, POW2_FLOOR, STEP_INPUT, UE8M0, CAREFUL, SOFT, INTERP)
            v = _apply_scale(y, scale, amax_bits, AMAX_FLOOR, UE8M0 != _UE8M0_NONE, INTERP, MUL_INV, RATIO, CAREFUL)
            _store_q(o_ptr, orow[:, None] + cols[None, :], v, m, CLAMP, SOFT)
            tl.store(s_ptr + rows64, scale, mask=rmask)
        else:
            # pass 1: the amax (per token: of each row, read in chunks; per tensor: of the partial maxima)
            if SCHEME == _S_TENSOR:
                pk = tl.arange(0, NPARTS)
                amax_bits = tl.zeros([ROWS], dtype=tl.int32) + tl.max(tl.load(p_ptr + pk, mask=pk < nparts, other=0),
                                                                      axis=0)
            else:
                amax_bits = tl.zeros([ROWS], dtype=tl.int32)
                for c in range(NCHUNK):
                    cc = c * BLOCK + cols
                    m = rmask[:, None] & (cc < H)[None, :]
                    y = _activation(x_ptr, u_ptr, xrow[:, None] + cc[None, :], urow[:, None] + cc[None, :], m,
                                    alpha, limit, ACT, GATED, LAYOUT, KIND, SILU_ROUNDED, SOFT, INTERP)
                    amax_bits = tl.maximum(amax_bits, tl.max(_abs_bits(y), axis=1))
            scale = _fp8_scale(amax_bits, KIND, AMAX_FLOOR, SCALE_FLOOR, POW2_FLOOR, STEP_INPUT, UE8M0, CAREFUL, SOFT, INTERP)
            # pass 2: the codes
            for c in range(NCHUNK):
                cc = c * BLOCK + cols
                m = rmask[:, None] & (cc < H)[None, :]
                y = _activation(x_ptr, u_ptr, xrow[:, None] + cc[None, :], urow[:, None] + cc[None, :], m,
                                alpha, limit, ACT, GATED, LAYOUT, KIND, SILU_ROUNDED, SOFT, INTERP)
                v = _apply_scale(y, scale, amax_bits, AMAX_FLOOR, UE8M0 != _UE8M0_NONE, INTERP, MUL_INV, RATIO,
                                 CAREFUL)
                _store_q(o_ptr, orow[:, None] + cc[None, :], v, m, CLAMP, SOFT)
            if SCHEME == _S_TENSOR:
                tl.store(s_ptr + rows64 * 0, scale, mask=rows == 0)  # the one scale, by program 0
            else:
                tl.store(s_ptr + rows64, scale, mask=rmask)

    @triton.jit(do_not_specialize=["total_groups", "groups_per_row"])
    def _group_kernel(x_ptr, u_ptr, q_ptr, s_ptr, total_groups, groups_per_row, H, s_st, s_sg, alpha, limit, dev_f,
                      ACT: tl.constexpr, GATED: tl.constexpr, LAYOUT: tl.constexpr, SCHEME: tl.constexpr,
                      KIND: tl.constexpr, SILU_ROUNDED: tl.constexpr, GS: tl.constexpr, BLOCK_G: tl.constexpr,
                      AMAX_FLOOR: tl.constexpr, SCALE_FLOOR: tl.constexpr, POW2_FLOOR: tl.constexpr,
                      STEP_INPUT: tl.constexpr, UE8M0: tl.constexpr, MUL_INV: tl.constexpr, RATIO: tl.constexpr,
                      CLAMP: tl.constexpr, CAREFUL: tl.constexpr, MX_ROUNDING: tl.constexpr, MX_INF: tl.constexpr,
                      MX_BYTE0: tl.constexpr, MX_NAN: tl.constexpr, SWIZZLED: tl.constexpr,
                      SOFT: tl.constexpr, INTERP: tl.constexpr):
        # AMAX_FLOOR ... CAREFUL: the FP8 recipe (_recipe_consts); MX_*: the MX recipe's fields
        # (catalog.MX_CODE_FIELDS, as codes: _mx_flags), dev_f the device value one of them names
        # (_device_arg); SWIZZLED: MX scales in the 128x4 tiled layout with row-block stride s_st
        # (csrc/group_kernel.cuh)
        gi = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
        gmask = gi < total_groups
        t = (gi // groups_per_row).to(tl.int64)
        g = (gi % groups_per_row).to(tl.int64)
        if SCHEME == _S_GROUP:
            col = tl.arange(0, GS)
            xrow, urow = _bases(t, H, GATED, LAYOUT)
            m = gmask[:, None]
            qbase = t * H + g * GS
            y = _activation(x_ptr, u_ptr, (xrow + g * GS)[:, None] + col[None, :],
                            (urow + g * GS)[:, None] + col[None, :], m,
                            alpha, limit, ACT, GATED, LAYOUT, KIND, SILU_ROUNDED, SOFT, INTERP)
            amax_bits = tl.max(_abs_bits(y), axis=1)
            scale = _fp8_scale(amax_bits, KIND, AMAX_FLOOR, SCALE_FLOOR, POW2_FLOOR, STEP_INPUT, UE8M0, CAREFUL, SOFT, INTERP)
            v = _apply_scale(y, scale, amax_bits, AMAX_FLOOR, UE8M0 != _UE8M0_NONE, INTERP, MUL_INV, RATIO, CAREFUL)
            _store_q(q_ptr, qbase[:, None] + col[None, :], v, m, CLAMP, SOFT)
            tl.store(s_ptr + t * s_st + g * s_sg, scale, mask=gmask)
        else:
            e, bad = _mx_groups(x_ptr, u_ptr, q_ptr, t, g, gmask, H, alpha, limit, dev_f, ACT, GATED, LAYOUT, SCHEME,
                                KIND, SILU_ROUNDED, GS, MX_ROUNDING, MX_INF, MX_BYTE0, MX_NAN, SOFT, INTERP)
            _store_mx_scale(s_ptr, t, g, e, bad, s_st, s_sg, gmask, SWIZZLED)

    @triton.jit
    def _mx_groups(x_ptr, u_ptr, q_ptr, t, g, gmask, H, alpha, limit, dev_f, ACT: tl.constexpr, GATED: tl.constexpr,
                   LAYOUT: tl.constexpr, SCHEME: tl.constexpr, KIND: tl.constexpr, SILU_ROUNDED: tl.constexpr,
                   GS: tl.constexpr, MX_ROUNDING: tl.constexpr, MX_INF: tl.constexpr, MX_BYTE0: tl.constexpr,
                   MX_NAN: tl.constexpr, SOFT: tl.constexpr, INTERP: tl.constexpr):
        # the MX blocks (token t, group g) of a tile, gmask the real ones: q stored; returns
        # each block's exponent and whether it holds inf / NaN
        xrow, urow = _bases(t, H, GATED, LAYOUT)
        xb = xrow + g * GS
        ub = urow + g * GS
        m = gmask[:, None]
        qbase = t * H + g * GS
        if SCHEME == _S_MXFP4:
            # MXFP4 packs elements 2i and 2i + 1 into one byte: the kernel reads x as pairs
            # (a pair view, one word per two elements) and works on the even and the odd
            # halves, so no reshape / split reorders the tile (on sm_90 that reorder took
            # 2 KB of shared memory and two more barriers a tile; benchmarks/triton_sass.py)
            pc = tl.arange(0, GS // 2)
            ylo, yhi = _pair_activation(x_ptr, u_ptr, xb, ub, pc, m, alpha, limit, ACT, GATED, LAYOUT, KIND,
                                        SILU_ROUNDED, SOFT, INTERP)
            amax_bits = tl.maximum(tl.max(_abs_bits(ylo), axis=1), tl.max(_abs_bits(yhi), axis=1))
            e, bad = _mx_exponent(amax_bits, _FP4_EMAX, _FP4_INV, _FP4_HALF_ULP, MX_ROUNDING, MX_INF)
            lo = _e2m1_code(_mx_scaled(ylo, e, bad, dev_f, MX_INF, MX_BYTE0, MX_NAN), bad, MX_NAN)
            hi = _e2m1_code(_mx_scaled(yhi, e, bad, dev_f, MX_INF, MX_BYTE0, MX_NAN), bad, MX_NAN)
            packed = (lo | (hi << 4)).to(tl.uint8)
            tl.store(q_ptr + (qbase // 2)[:, None] + pc[None, :], packed, mask=m)
        else:
            col = tl.arange(0, GS)
            y = _activation(x_ptr, u_ptr, xb[:, None] + col[None, :], ub[:, None] + col[None, :], m,
                            alpha, limit, ACT, GATED, LAYOUT, KIND, SILU_ROUNDED, SOFT, INTERP)
            amax_bits = tl.max(_abs_bits(y), axis=1)
            e, bad = _mx_exponent(amax_bits, _FP8_EMAX, _FP8_INV, _FP8_HALF_ULP, MX_ROUNDING, MX_INF)
            v = _clamp_fp8(_mx_scaled(y, e, bad, dev_f, MX_INF, MX_BYTE0, MX_NAN))
            if MX_NAN == _MX_NAN_NAN:
                nan = (amax_bits * 0 + 0x7FC00000).to(tl.float32, bitcast=True)
                v = tl.where(bad[:, None], nan[:, None], v)
            _store_fp8(q_ptr, qbase[:, None] + col[None, :], v, m, SOFT)
        return e, bad

    @triton.jit(do_not_specialize=["num_experts", "groups_per_row", "padded_groups"])
    def _experts_kernel(x_ptr, u_ptr, q_ptr, s_ptr, eo_ptr, bo_ptr, num_experts, groups_per_row, padded_groups,
                        s_st, H, alpha, limit, dev_f, ACT: tl.constexpr, GATED: tl.constexpr, LAYOUT: tl.constexpr,
                        SCHEME: tl.constexpr, KIND: tl.constexpr, SILU_ROUNDED: tl.constexpr, GS: tl.constexpr,
                        ROWS: tl.constexpr, GC: tl.constexpr, E_POW2: tl.constexpr, MX_ROUNDING: tl.constexpr,
                        MX_INF: tl.constexpr, MX_BYTE0: tl.constexpr, MX_NAN: tl.constexpr,
                        SOFT: tl.constexpr, INTERP: tl.constexpr):
        # MX scales of tokens sorted by expert, in the 128x4 swizzled layout per expert: a
        # program owns ROWS scale rows (inside one 128-row tile, as ROWS divides 128) by GC
        # group columns, and writes every byte of it: the scales of its expert's tokens, zero
        # for the padding rows and columns and for rows of no expert, so the buffer needs no
        # zeroing pass. Its expert is the last one whose first scale row (blockscale_offsets,
        # checked on the host: multiples of 128, each expert's padded rows before the next's)
        # is not after the tile's
        sr0 = tl.program_id(0) * ROWS
        ex = tl.arange(0, E_POW2)
        starts = tl.load(bo_ptr + ex, mask=ex < num_experts, other=0).to(tl.int64)
        owner = tl.sum(((starts <= sr0) & (ex < num_experts)).to(tl.int32), axis=0) - 1
        e = tl.maximum(owner, 0)
        first = tl.load(eo_ptr + e).to(tl.int64)
        count = tl.where(owner >= 0, tl.load(eo_ptr + e + 1).to(tl.int64) - first, 0)
        i = tl.arange(0, ROWS * GC)
        r = i // GC
        g = tl.program_id(1) * GC + i % GC
        local = sr0 + r - tl.load(bo_ptr + e).to(tl.int64)  # the row inside the expert
        real = (local < count) & (g < groups_per_row)
        t = tl.where(real, first + local, 0)
        ex8, bad = _mx_groups(x_ptr, u_ptr, q_ptr, t, g, real, H, alpha, limit, dev_f, ACT, GATED, LAYOUT, SCHEME, KIND,
                              SILU_ROUNDED, GS, MX_ROUNDING, MX_INF, MX_BYTE0, MX_NAN, SOFT, INTERP)
        sb = tl.where(real, _mx_scale_byte(ex8, bad), 0).to(tl.uint8)
        tl.store(s_ptr + _swizzled_offset(sr0 + r, g, s_st), sb, mask=g < padded_groups)

    @triton.jit
    def _mx_scaled(y, e, bad, dev_f, MX_INF: tl.constexpr, MX_BYTE0: tl.constexpr, MX_NAN: tl.constexpr):
        # y times the block multiplier (reference.mx_multipliers), exact: 2**-e, a normal float for
        # e <= 126; an inf block's e = 127 (2**-127 is subnormal) as y * 2**-126 * c, c = 0.5, whose
        # first product is exact wherever the second can round to a non-zero element (|y| >= 2**117),
        # so the two round once as y * c * 2**-126 does; MxInf.EXP2: c = the device's exp2(-127.) *
        # 2**126 (dev_f, _device_arg); a byte-0 block's MxByte0 value (EXP2 / POW: dev_f, RN(1 / d));
        # a NaN block's 0 for MxNan.DIV_INF (y * 0 is y / inf)
        f = ((127 - tl.minimum(e, 126)) << 23).to(tl.float32, bitcast=True)
        if MX_BYTE0 == _MX_B0_MIN_NORMAL:
            f = tl.where(e == -_E8M0_BIAS, _MX_MIN_NORMAL_INV, f)
        elif MX_BYTE0 == _MX_B0_ONE:
            f = tl.where(e == -_E8M0_BIAS, 1.0, f)
        elif MX_BYTE0 == _MX_B0_EXP2 or MX_BYTE0 == _MX_B0_POW:
            f = tl.where(e == -_E8M0_BIAS, dev_f, f)
        if MX_NAN != _MX_NAN_NAN:
            f = tl.where(bad, 0.0, f)
        v = y * f[:, None]
        if MX_INF == _MX_INF_EXP2:
            return tl.where((e == 127)[:, None], v * dev_f, v)
        return tl.where((e == 127)[:, None], v * 0.5, v)

    @triton.jit
    def _mx_exponent(amax_bits, EMAX: tl.constexpr, INV: tl.constexpr, HALF_ULP: tl.constexpr,
                     MX_ROUNDING: tl.constexpr, MX_INF: tl.constexpr):
        # reference.mx_exponents, from the bits; bad: NaN in the block
        bad = amax_bits > 0x7F800000
        amax = amax_bits.to(tl.float32, bitcast=True)
        if MX_ROUNDING == _MXR_RCEIL:
            # ceil(log2(amax * fp32(1/max_elem))); a product that underflows to 0 gets -127
            p = (amax * INV).to(tl.int32, bitcast=True)
            pe = (p >> 23) & 0xFF
            pm = p & 0x7FFFFF
            e = tl.where(pe > 0, pe - 127 + (pm != 0).to(tl.int32), tl.where(pm > 0x400000, -126, -127))
        else:
            # floor(log2(amax)) - emax from the exponent field; zero / subnormal amax -> below -127;
            # ceil: one more unless the mantissa is 0; even: the amax rounded half up to the
            # element's mantissa bits first (HALF_ULP: a carry into the exponent field)
            b = amax_bits
            if MX_ROUNDING == _MXR_EVEN:
                b = amax_bits + HALF_ULP
            ae = (b >> 23) & 0xFF
            e = ae - 127 - EMAX
            if MX_ROUNDING == _MXR_CEIL:
                e += ((amax_bits & 0x7FFFFF) != 0).to(tl.int32)
            e = tl.where(ae == 0, -127, e)
        e = tl.where(amax_bits == 0, -127, e)
        if MX_INF == _MX_INF_BITS:
            e = tl.where(amax_bits == 0x7F800000, 128 - EMAX, e)
        else:
            e = tl.where(amax_bits == 0x7F800000, 127, e)
        return tl.minimum(tl.maximum(e, -_E8M0_BIAS), _E8M0_BIAS), bad

    @triton.jit
    def _e2m1_code(v, bad, MX_NAN: tl.constexpr):
        # E2M1 code of v (already divided by the scale) by counting the rounding thresholds
        # |v| passes (ties to even), sign in bit 3; 0 in a NaN block (MxNan.NAN) or for a NaN
        # value (MxNan.DIV_INF: E2M1 has no NaN)
        a = tl.abs(v)
        c = ((a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
             + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
             + (a > 5.0).to(tl.int32))
        c = c | ((v.to(tl.int32, bitcast=True) >> 28) & 0x8)
        if MX_NAN == _MX_NAN_NAN:
            return tl.where(bad[:, None], 0, c)
        return tl.where(v != v, 0, c)

    @triton.jit
    def _mx_scale_byte(e, bad):
        return tl.where(bad, _E8M0_NAN, e + _E8M0_BIAS).to(tl.uint8)

    @triton.jit
    def _swizzled_offset(t, g, s_st):
        # byte of scale (row t, group g) in the 128x4 tiled layout, s_st bytes a 128-row block
        return (t >> 7) * s_st + (g >> 2) * 512 + (t & 31) * 16 + ((t >> 5) & 3) * 4 + (g & 3)

    @triton.jit
    def _store_mx_scale(s_ptr, t, g, e, bad, s_st, s_sg, gmask, SWIZZLED: tl.constexpr):
        if SWIZZLED:
            so = _swizzled_offset(t, g, s_st)
        else:
            so = t * s_st + g * s_sg
        tl.store(s_ptr + so, _mx_scale_byte(e, bad), mask=gmask)

    # the interpreter re-executes kernel source against the module globals (closures are
    # lost), so every jit function is published there too
    g.update({f.__name__: f for f in (
        _load_f32, _unpack_pairs, _bases, _bf16_rne_bits, _round_to_input, _activation, _pair_activation, _act,
        _swiglu_oai,
        _abs_bits, _floor_bits, _pow2_ceil, _fp8_scale, _e4m3_bits, _div_by_scale, _apply_scale, _div_static, _mx_exponent,
        _mx_scaled, _e2m1_code, _store_mx_scale, _store_fp8, _store_q, _clamp_fp8, _store_act, _row_kernel, _group_kernel, _mx_groups,
        _mx_scale_byte, _swizzled_offset, _experts_kernel, _tensor_amax_kernel)})
    return {"row": _row_kernel, "group": _group_kernel, "experts": _experts_kernel, "tensor_amax": _tensor_amax_kernel}


def is_available() -> bool:
    """True when triton is importable and CUDA usable (or ``TRITON_INTERPRET=1``)."""
    global _failed
    if _failed is not None:
        return False
    try:
        if not _interpreting() and not torch.cuda.is_available():
            return False  # not cached: CUDA may be initialised later in tests
        _kernels()
        return True
    except Exception as e:  # noqa: BLE001 - any failure means "unavailable"
        _failed = f"{type(e).__name__}: {e}"
        log.warning("quantfuse Triton kernels unavailable: %s", _failed)
        return False


def _soft() -> bool:
    return _interpreting() if _SOFT_CASTS is None else bool(_SOFT_CASTS)


#: plan.key -> supports() answer (a reason, or None)
_reasons: dict[tuple, str | None] = {}
#: plan.key -> launch closure
_launchers: dict[tuple, object] = {}


def supports(plan) -> str | None:
    """None when every call with ``plan.key`` runs here, else a short reason."""
    key = plan.key
    if key in _reasons:
        return _reasons[key]
    why = _reason(plan)
    if why is not None and why.startswith("Triton unavailable"):
        return why  # not cached: CUDA may come up later
    _reasons[key] = why
    return why


def _reason(plan) -> str | None:
    if not (plan.device_type == "cuda" or (plan.device_type == "cpu" and _interpreting())):
        return f"input on {plan.device_type}: the Triton kernels need CUDA (or TRITON_INTERPRET=1 on the CPU)"
    act, scheme = plan.activation, plan.entry.scheme
    if act not in _ACTIVATIONS:
        return f"activation {act.name} has no Triton kernel"
    if act.rounding not in _ROUNDINGS:
        return f"activation rounding {act.rounding.value} is not implemented by the Triton kernels"
    if scheme is not None and scheme not in _SCHEMES:
        return f"scheme {scheme.key} has no Triton kernel"
    if plan.layout not in _LAYOUTS:
        return f"layout {plan.layout.value} is not implemented by the Triton kernels"
    if plan.dtype not in _KIND_OF:
        return f"dtype {plan.dtype} is not one the Triton kernels read"
    why = plan.kernel_reason()
    if why is not None:
        return why
    r = plan.recipe
    if r is not None and r.device_factor is not None:
        # the device's 2^-127 as torch computes it, read once (cuda_backend.mx_device_factor)
        from quantfuse.custom_ops import cuda_backend

        if torch.cuda.is_available() and not cuda_backend.device_factor_known(r) \
                and torch.cuda.is_current_stream_capturing():
            return cuda_backend.CAPTURE_REASON
    if not is_available():
        return f"Triton unavailable ({_failed or 'no CUDA'})"
    return None


def run(plan, outputs, x, up, scale) -> None:
    """Write ``outputs`` (``plan.empty_outputs``) for one call that :func:`supports` accepted."""
    launch = _launchers.get(plan.key)
    if launch is None:
        launch = _launchers[plan.key] = _launcher(plan)
    launch(plan.tokens, outputs, x, up, scale)


#: the recipe constants of kernels that read none (the activation ops, MX): no floor, no rounding
_NO_RECIPE = dict(AMAX_FLOOR=0, SCALE_FLOOR=0, POW2_FLOOR=0, STEP_INPUT=False, UE8M0=_CODES["ue8m0_none"], MUL_INV=False,
                  RATIO=False,
                  CLAMP=True, CAREFUL=False)
#: the scales the kernels' fast division forms are exact for (csrc/act_quant.cuh kFastScaleMin / Max)
_FAST_SCALES = (2.0 ** -64, 2.0 ** 126)


def _f32_bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


def _recipe_consts(plan) -> dict:
    """The FP8 recipe as the kernels' constexprs: the floors as fp32 bits (CallPlan.fp8_floors), the
    step dtype, the UE8M0 code, the apply form, the clamp (CallPlan.clamps), and CAREFUL: whether the recipe lets
    a scale leave :data:`_FAST_SCALES` (no floor, or a tiny one, or a 16-bit step dtype that rounds
    a small scale to 0), where the divisions take div.rn; one kernel per recipe, compiled on first
    use, so the default recipe's code is what it was."""
    r = plan.recipe
    if r is None or r.mx:
        return dict(_NO_RECIPE)
    consts = dict(_NO_RECIPE, MUL_INV=r.apply is ApplyForm.MUL_INV, RATIO=r.apply is ApplyForm.MUL_RATIO,
                  CLAMP=plan.clamps)
    if r.static:
        return consts
    floors = plan.fp8_floors
    step = plan.dtype if r.step_dtype is StepDtype.INPUT else torch.float32
    # the smallest scale the recipe gives: the floored amax over 448 (as the kernels compute it),
    # in the step dtype, then the scale floors; exp2(ceil(log2 s)) may halve it
    low = torch.tensor(max(floors[0], 0.0), dtype=torch.float32) * torch.tensor(1.0 / r.element.max, dtype=torch.float32)
    low = max(float(low.to(step)), floors[1]) / (2 if r.ue8m0 is Ue8m0.EXP2_CEIL_LOG2 else 1)
    low = max(low, floors[2])
    # the largest: amax / 448 <= 2^120 (a power of two above it), or a floor (twice it after UE8M0)
    careful = not low >= _FAST_SCALES[0] or max(floors) > _FAST_SCALES[1] / 2
    consts.update(AMAX_FLOOR=_f32_bits(floors[0]), SCALE_FLOOR=_f32_bits(floors[1]), POW2_FLOOR=_f32_bits(floors[2]),
                  STEP_INPUT=step is not torch.float32, UE8M0=_CODES[f"ue8m0_{r.ue8m0.value}"], CAREFUL=careful)
    return consts


def _launcher(plan):
    """The launch closure of one plan key: every choice made here, once."""
    act, scheme, r = plan.activation, plan.entry.scheme, plan.recipe
    kind = _KIND_OF[plan.dtype]
    hidden = plan.hidden
    gated = act.gated
    interleaved = gated and plan.layout is Layout.INTERLEAVED
    mxfp4 = scheme is catalog.MXFP4
    soft, interp = _soft(), _interpreting()
    k = _kernels()
    consts = dict(ACT=_CODES[f"act_{act.name}"], GATED=gated, LAYOUT=_CODES[f"layout_{plan.layout.value}"],
                  SCHEME=_CODES[f"scheme_{scheme.key}"] if scheme is not None else _CODES["scheme_none"],
                  KIND=kind, SILU_ROUNDED=act.rounding is ActRounding.SILU_THEN_MUL, SOFT=soft, INTERP=interp)
    if not interp:
        consts["enable_fp_fusion"] = False
    recipe = _recipe_consts(plan)
    if recipe["UE8M0"] == _UE8M0_EXP2 and not interp:
        # libdevice's log2f / exp2f as nvcc links them for torch's kernels: without flush-to-zero
        consts["enable_reflect_ftz"] = False
    # the activation's parameters (GPT-OSS's alpha, limit) as fp32 runtime arguments, as eager
    # uses a Python float scalar; 0.0 for activations without them (unread)
    params = plan.act_kwargs
    alpha, limit = params.get("alpha", 0.0), params.get("limit", 0.0)

    # the input as the kernels read it: a word per (gate, up) pair (interleaved), a word per
    # two elements (MXFP4), both (interleaved MXFP4: int64 words, a pair of pairs for 16-bit
    # inputs), or bf16 as raw int16 bits (soft casts)
    if interleaved or mxfp4:
        word = torch.int64 if (kind == _F32 or (interleaved and mxfp4)) else torch.int32
        # a view needs the element offset to be a multiple of the word; an unaligned input
        # (a view into a larger buffer) is copied once
        copy = not plan.aligned

        def view_in(t):
            return (t.clone() if copy else t).view(word)
    elif soft and kind == _BF16:
        def view_in(t):
            return t.view(torch.int16)
    else:
        def view_in(t):
            return t
    if scheme is None:
        out_view = torch.int16 if soft and kind == _BF16 else None
    elif not mxfp4 and (soft or not recipe["CLAMP"]):
        out_view = torch.uint8  # e4m3 codes written as bytes
    else:
        out_view = None

    def inputs(x, up):
        xk = view_in(x)
        if not gated or plan.layout is not Layout.SEPARATE:
            return xk, xk
        return xk, view_in(up)

    if scheme is None or scheme.base.grouping in (Grouping.PER_TOKEN, Grouping.PER_TENSOR):
        static = r is not None and r.static
        chunked = hidden > _MAX_ROW_BLOCK
        block, nchunk = (_CHUNK, -(-hidden // _CHUNK)) if chunked else (1 << max(0, hidden - 1).bit_length(), 1)
        rows = max(1, _TILE // block)  # fixed per hidden size: one compile for every T
        warps = 8 if rows * block >= 4096 else 4
        row_kernel = k["row"]
        per_tensor = scheme is catalog.FP8_PER_TENSOR
        # the per-tensor amax pass's programs: a few per SM (fixed per device: one compile)
        max_parts = _amax_programs()
        amax_kernel = k["tensor_amax"]
        act_consts = {n: consts[n] for n in ("ACT", "GATED", "LAYOUT", "KIND", "SILU_ROUNDED", "SOFT", "INTERP",
                                             "enable_fp_fusion") if n in consts}

        def launch(tokens, outputs, x, up, scale):
            if (tokens == 0 or hidden == 0) and not per_tensor:
                return
            xk, uk = inputs(x, up)
            o = outputs[0] if out_view is None else outputs[0].view(out_view)
            s = scale if static else (outputs[1] if len(outputs) > 1 else o)
            parts, nparts, grid = s, 1, -(-tokens // rows)
            if per_tensor:
                # an empty tensor: no partials, its amax taken as 0 (reference.quantize); one program
                # writes the scale
                tiles = grid if hidden else 0
                nparts, grid = min(max_parts, tiles), max(grid, 1)
                parts = torch.empty(max(nparts, 1), dtype=torch.int32, device=x.device)
                if nparts:
                    amax_kernel[(nparts,)](xk, uk, parts, tokens, hidden, alpha, limit, nparts, tiles, ROWS=rows,
                                           BLOCK=block, NCHUNK=nchunk, num_warps=warps, **act_consts)
            row_kernel[(grid,)](xk, uk, o, s, tokens, hidden, alpha, limit, parts, nparts, ROWS=rows, BLOCK=block,
                                NCHUNK=nchunk, NPARTS=max_parts, num_warps=warps, **recipe, **consts)
        return launch

    gs = r.group_size
    groups = hidden // gs
    swizzled = r.scale_layout is ScaleLayout.SWIZZLED
    column_major = r.scale_layout is ScaleLayout.COLUMN_MAJOR
    padded_groups = -(-groups // catalog.SWIZZLE_COLS) * catalog.SWIZZLE_COLS
    block_g = _TILE // gs
    if plan.entry.experts:
        return _experts_launcher(plan, k["experts"], inputs, out_view, groups, padded_groups, block_g, consts,
                                 alpha, limit)
    group_kernel = k["group"]
    flags = dict(GS=gs, BLOCK_G=block_g, SWIZZLED=swizzled, num_warps=4, **recipe, **_mx_flags(r))
    dev_f = _device_arg(r)

    def launch(tokens, outputs, x, up, scale):
        total = tokens * groups
        if total == 0:
            return
        if total >= 2**31:
            raise RuntimeError(f"quantfuse triton: too many groups ({total}) for 32-bit group indices")
        xk, uk = inputs(x, up)
        q = outputs[0] if out_view is None else outputs[0].view(out_view)
        s = outputs[1]
        if swizzled:
            st, sg = catalog.SWIZZLE_ROWS * padded_groups, 0  # row-block stride of the tiled layout
            if padded_groups != groups or tokens % catalog.SWIZZLE_ROWS:
                s.zero_()  # the padding (the kernel writes every real scale)
        elif column_major:
            st, sg = 1, tokens  # [..., G] view of [G, T] storage
        else:
            st, sg = groups, 1
        group_kernel[(-(-total // block_g),)](xk, uk, q, s, total, groups, hidden, st, sg, alpha, limit, dev_f,
                                              **flags, **consts)
    return launch


def _amax_programs() -> int:
    """Programs of the per-tensor amax pass: a power of two, about two per SM of the current
    device (so the second pass reads few partial maxima); 8 under the interpreter."""
    if _interpreting():
        return 8
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return 1 << (2 * sms - 1).bit_length()


def _device_arg(r) -> float:
    """``_mx_scaled``'s ``dev_f`` for recipe ``r``: a byte-0 block's RN(1 / d) (MX_DEVICE_BYTE0), an
    inf block's d scaled by 2**126 to a normal float (MX_DEVICE_INF: exact, d is a float32), d the
    device's 2^-127 read as the CUDA kernels read it (cuda_backend.mx_device_factor); 0.0 else."""
    if r is None or r.device_factor is None:
        return 0.0
    if _interpreting():  # the interpreter runs on the CPU: the CPU's values, as the reference there
        from quantfuse.custom_ops import reference

        f = float(reference.device_factor(r.device_factor, "cpu"))
    else:
        from quantfuse.custom_ops import cuda_backend

        f = cuda_backend.mx_device_factor(r)
    return f * 2.0 ** 126 if r.device_factor in catalog.MX_DEVICE_INF else f


def _mx_flags(r) -> dict:
    """The MX recipe fields as the kernels' constexpr codes (0s for the FP8 schemes: unread)."""
    return {f"MX_{field[3:].upper()}": _CODES[f"{field}_{getattr(r, field).value}"] if r.mx else 0
            for field, _ in catalog.MX_CODE_FIELDS}


def _experts_launcher(plan, kernel, inputs, out_view, groups, padded_groups, block_g, consts, alpha, limit):
    """The launch closure of an experts op: a program per (scale-row tile, group-column tile)
    of the whole scale buffer (``_experts_kernel``)."""
    r = plan.recipe
    gc = min(block_g, 1 << max(0, padded_groups - 1).bit_length())  # group columns a program
    rows = block_g // gc  # scale rows a program: divides the 128 of a swizzle tile
    assert catalog.SWIZZLE_ROWS % rows == 0
    e_pow2 = 1 << max(0, plan.num_experts - 1).bit_length()
    flags = dict(GS=r.group_size, ROWS=rows, GC=gc, E_POW2=e_pow2, num_warps=4, **_mx_flags(r))
    dev_f = _device_arg(r)
    col_tiles = -(-padded_groups // gc)
    s_st = catalog.SWIZZLE_ROWS * padded_groups

    def launch(tokens, outputs, x, up, offsets):
        s = outputs[1]
        if s.shape[0] == 0:
            return
        xk, uk = inputs(x, up)
        q = outputs[0] if out_view is None else outputs[0].view(out_view)
        kernel[(s.shape[0] // rows, col_tiles)](xk, uk, q, s, offsets[0], offsets[1], plan.num_experts, groups,
                                                padded_groups, s_st, plan.hidden, alpha, limit, dev_f, **flags,
                                                **consts)
    return launch
