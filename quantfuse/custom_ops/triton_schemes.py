"""``triton`` backend, part two: every activation x quantisation-scheme pair from one kernel family.

The activation (identity / ``silu_and_mul`` / ``relu2``) and the scheme (none, FP8
per-token, FP8 per-group, MXFP8, MXFP4) are ``tl.constexpr`` switches of two
``@triton.jit`` kernels that share their helpers:

* ``_row_kernel``: a tile of ``ROWS`` rows; schemes *none* (activation only) and FP8
  per-token.  A row that fits one ``BLOCK`` stays in registers (one pass); a longer row
  is read twice in chunks (pass 1: amax, pass 2: quantise; the re-read hits L2).
* ``_group_kernel``: a tile of ``BLOCK_G`` groups of ``GS`` elements (flattened over
  rows); FP8 per-group (GS 64/128, fp32 or UE8M0 scales, any scale strides), MXFP8 and
  MXFP4 (GS 32, E8M0 scale bytes, ``floor`` or ``rceil`` rounding).

The Python wrappers are generated from the ``_ACTS`` x ``_SCHEMES`` tables.

Numerics are reference.py's bit for bit (same GPU): silu as ``g / (1 + exp(-g)) * u``
with libdevice's accurate ``exp`` and IEEE division (``tl.div_rn``), no FMA contraction
(``enable_fp_fusion=False``); relu2 as ``relu(x) * relu(x)``; the activation rounded to
a 16-bit input dtype (RNE) before the amax; amax from the integer bits of ``|y|``
(integer order == float order for non-negative floats, and NaN's bits are the largest,
so the max propagates NaN for free); FP8 scale ``amax * fp32(1/448)``; ``q =
e4m3(clamp(y / scale))`` with NaN kept; MX exponents from the exponent bits exactly as
``reference.mx_block_exponents``.

Under ``TRITON_INTERPRET=1`` (CPU tests) the kernels run with ``INTERP=True``: the
interpreter has no libdevice (``tl.exp``, i.e. numpy's ``exp``, is used, which differs
from torch's CPU ``exp`` in the last bit, so the interpreter test swaps the reference's
``exp`` for numpy's), and its fp32 -> bf16 / fp8 casts truncate, so bf16 rounding and
e4m3 encoding are done on the integer bits (the same maths the hardware ``cvt.rn``
does; ``_SOFT_CASTS`` forces that path on the GPU too, for testing).

Triton is imported lazily: importing this module never needs triton or CUDA.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from quantfuse.custom_ops import kernel_inputs

NAME = "triton"

log = logging.getLogger("quantfuse.triton")

SUPPORTED_DTYPES = kernel_inputs.SUPPORTED_DTYPES
SUPPORTED_GROUPS = kernel_inputs.FP8_GROUPS
MX_BLOCK = kernel_inputs.MX_BLOCK

_ACTS = kernel_inputs.ACT_CODES
_SCHEMES = kernel_inputs.SCHEME_CODES
_S_NONE, _S_TOKEN, _S_GROUP, _S_MXFP8, _S_MXFP4 = range(5)
#: op name -> (activation, scheme key), for every pair the kernels can run
_TABLE = kernel_inputs.OP_TABLE

#: ops this module answers for; the rest of _TABLE (silu_and_mul, per_token_group_quant_fp8,
#: silu_and_mul_per_block_quant) belongs to triton_backend, which the oracle asks first;
#: they are still callable here (tests use them for fused == unfused checks)
EXTRA_OPS = ("silu_and_mul", "per_token_group_quant_fp8", "silu_and_mul_per_block_quant")
OPS = tuple(op for op in _TABLE if op not in EXTRA_OPS)

_TILE = 4096          # elements per program (group kernel; row kernel for short rows)
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

    @triton.jit
    def _load_f32(ptr, offs, mask, KIND: tl.constexpr, SOFT: tl.constexpr):
        if SOFT and KIND == 2:
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
        # docs/numerics.md "Common rules": the activation is stored in x.dtype
        if KIND == 1:
            y = y.to(tl.float16).to(tl.float32)
        elif KIND == 2:
            if SOFT:
                y = _bf16_rne_bits(y).to(tl.float32, bitcast=True)
            else:
                y = y.to(tl.bfloat16).to(tl.float32)
        return y

    @triton.jit
    def _unpack_pairs(w, KIND: tl.constexpr):
        # elements 2i (low half of the word) and 2i + 1 (high half) of a pair view of x
        # (int64 words for fp32, int32 for 16-bit types) as fp32, exactly
        if KIND == 0:
            lo = w.to(tl.int32).to(tl.float32, bitcast=True)
            hi = (w >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        elif KIND == 1:
            lo = w.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            hi = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        else:
            lo = (w << 16).to(tl.float32, bitcast=True)
            hi = (w & -65536).to(tl.float32, bitcast=True)
        return lo, hi

    @triton.jit
    def _activation(x_ptr, offs, H, mask, ACT: tl.constexpr, KIND: tl.constexpr,
                    SOFT: tl.constexpr, INTERP: tl.constexpr):
        a = _load_f32(x_ptr, offs, mask, KIND, SOFT)
        u = a
        if ACT == 1:
            u = _load_f32(x_ptr, offs + H, mask, KIND, SOFT)
        return _act(a, u, ACT, KIND, SOFT, INTERP)

    @triton.jit
    def _act(a, u, ACT: tl.constexpr, KIND: tl.constexpr, SOFT: tl.constexpr, INTERP: tl.constexpr):
        # act(a, u) in fp32, rounded to the input dtype (u, the up half, is used when gated)
        if ACT == 0:
            y = a
        else:
            if ACT == 1:
                if INTERP:
                    e = tl.exp(-a)  # the interpreter has no libdevice
                else:
                    e = libdevice.exp(-a)  # accurate expf, as torch's CUDA exp
                y = tl.div_rn(a, 1.0 + e) * u
            else:
                r = tl.where(a < 0.0, 0.0, a)  # relu that keeps NaN
                y = r * r
            y = _round_to_input(y, KIND, SOFT)
        return y

    @triton.jit
    def _abs_bits(y):
        return y.to(tl.int32, bitcast=True) & 0x7FFFFFFF

    @triton.jit
    def _fp8_scale(amax_bits, UE8M0: tl.constexpr):
        # max(amax, 1e-10) keeping NaN (integer compare: NaN bits are the largest)
        amax = tl.where(amax_bits < 0x2EDBE6FF, 1e-10, amax_bits.to(tl.float32, bitcast=True))
        scale = amax * (1.0 / 448.0)
        if UE8M0:
            # smallest power of two >= scale from the bits (scale >= 1e-10/448: normal)
            b = scale.to(tl.int32, bitcast=True)
            e = (b >> 23) & 0xFF
            up = tl.where((b & 0x7FFFFF) == 0, b, (e + 1) << 23).to(tl.float32, bitcast=True)
            scale = tl.where(e != 0xFF, up, scale)
        return scale

    @triton.jit
    def _e4m3_bits(v):
        # RNE e4m3fn code of fp32 v with |v| <= 448 or NaN (NaN -> 0x7F), from the bits
        b = v.to(tl.int32, bitcast=True)
        sign = (b >> 24) & 0x80
        a = b & 0x7FFFFFFF
        normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - 960  # rebias 127 -> 7 (120 << 3)
        # below 2**-6: subnormal steps of 2**-9; (f + 1.5 * 2**23) rounds f to an integer
        f = a.to(tl.float32, bitcast=True) * 512.0 + 12582912.0
        sub = f.to(tl.int32, bitcast=True) - 0x4B400000
        code = tl.where(a < 0x3C800000, sub, normal) | sign
        return tl.where(a > 0x7F800000, 0x7F, code).to(tl.uint8)

    @triton.jit
    def _div_by_scale(y, scale, UE8M0: tl.constexpr, INTERP: tl.constexpr):
        # y / scale[:, None] correctly rounded, with one division per row or group instead
        # of one div.rn (a dozen instructions and a slow-path branch) per element, as the
        # CUDA kernels do (csrc/act_quant.cuh div_by_scale, markstein_div): r = RN(1 / scale)
        # in the scale's own (row) layout, q0 = y * r, and one Markstein correction
        # q0 - r * RN(scale * q0 - y), which keeps -0 because the sign is flipped through r:
        # Triton's unary minus is 0 - x, so negating the residual, as the CUDA kernel does,
        # turns -(+0) into +0 and y = -0 into q = +0 (caught on the H100). A UE8M0 scale is
        # a power of two, so y * r is the rounded quotient already. scale = inf (an inf
        # amax) gives r = 0, and y * 0 is y / inf (+-0, NaN for inf). The interpreter's fma
        # rounds twice, so it divides.
        if INTERP:
            return tl.div_rn(y, scale[:, None])
        r = tl.broadcast_to(tl.div_rn(1.0, scale)[:, None], y.shape)
        q0 = y * r
        if UE8M0:
            return q0
        q = tl.fma(tl.fma(tl.broadcast_to(scale[:, None], y.shape), q0, -y), -r, q0)
        return tl.where(r == 0.0, q0, q)

    @triton.jit
    def _store_fp8(q_ptr, offs, v, mask, SOFT: tl.constexpr):
        # v is clamped to [-448, 448] or NaN
        if SOFT:
            tl.store(q_ptr + offs, _e4m3_bits(v), mask=mask)
        else:
            tl.store(q_ptr + offs, v.to(tl.float8e4nv), mask=mask)

    @triton.jit
    def _clamp448(v):
        return tl.where(v > 448.0, 448.0, tl.where(v < -448.0, -448.0, v))  # keeps NaN

    @triton.jit
    def _store_act(o_ptr, offs, y, mask, KIND: tl.constexpr, SOFT: tl.constexpr):
        if SOFT:
            if KIND == 2:  # int16 view; y is already bf16-exact
                tl.store(o_ptr + offs, (y.to(tl.int32, bitcast=True) >> 16).to(tl.int16), mask=mask)
            else:
                tl.store(o_ptr + offs, y.to(o_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(o_ptr + offs, y.to(o_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["T"])
    def _row_kernel(x_ptr, o_ptr, s_ptr, T, H,
                    ACT: tl.constexpr, SCHEME: tl.constexpr, KIND: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK: tl.constexpr, NCHUNK: tl.constexpr,
                    SOFT: tl.constexpr, INTERP: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rmask = rows < T
        rows64 = rows.to(tl.int64)
        if ACT == 1:
            xrow = rows64 * (2 * H)
        else:
            xrow = rows64 * H
        orow = rows64 * H
        cols = tl.arange(0, BLOCK)
        if SCHEME == 0:
            for c in range(NCHUNK):
                cc = c * BLOCK + cols
                m = rmask[:, None] & (cc < H)[None, :]
                y = _activation(x_ptr, xrow[:, None] + cc[None, :], H, m, ACT, KIND, SOFT, INTERP)
                _store_act(o_ptr, orow[:, None] + cc[None, :], y, m, KIND, SOFT)
        else:
            if NCHUNK == 1:
                m = rmask[:, None] & (cols < H)[None, :]
                y = _activation(x_ptr, xrow[:, None] + cols[None, :], H, m, ACT, KIND, SOFT, INTERP)
                amax_bits = tl.max(_abs_bits(y), axis=1)
                scale = _fp8_scale(amax_bits, False)
                v = _clamp448(_div_by_scale(y, scale, False, INTERP))
                _store_fp8(o_ptr, orow[:, None] + cols[None, :], v, m, SOFT)
            else:
                amax_bits = tl.zeros([ROWS], dtype=tl.int32)
                for c in range(NCHUNK):
                    cc = c * BLOCK + cols
                    m = rmask[:, None] & (cc < H)[None, :]
                    y = _activation(x_ptr, xrow[:, None] + cc[None, :], H, m, ACT, KIND, SOFT, INTERP)
                    amax_bits = tl.maximum(amax_bits, tl.max(_abs_bits(y), axis=1))
                scale = _fp8_scale(amax_bits, False)
                for c in range(NCHUNK):
                    cc = c * BLOCK + cols
                    m = rmask[:, None] & (cc < H)[None, :]
                    y = _activation(x_ptr, xrow[:, None] + cc[None, :], H, m, ACT, KIND, SOFT, INTERP)
                    v = _clamp448(_div_by_scale(y, scale, False, INTERP))
                    _store_fp8(o_ptr, orow[:, None] + cc[None, :], v, m, SOFT)
            tl.store(s_ptr + rows64, scale, mask=rmask)

    @triton.jit(do_not_specialize=["total_groups", "groups_per_row"])
    def _group_kernel(x_ptr, q_ptr, s_ptr, total_groups, groups_per_row, H, s_st, s_sg,
                      ACT: tl.constexpr, SCHEME: tl.constexpr, KIND: tl.constexpr,
                      GS: tl.constexpr, BLOCK_G: tl.constexpr, FLAG: tl.constexpr,
                      SOFT: tl.constexpr, INTERP: tl.constexpr, SWIZZLED: tl.constexpr = False):
        # FLAG: use_ue8m0 for FP8 per-group, rceil (vs floor) for MX; SWIZZLED: MX scales in
        # the 128x4 tiled layout with row-block stride s_st (csrc/group_kernel.cuh)
        gi = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
        gmask = gi < total_groups
        t = (gi // groups_per_row).to(tl.int64)
        g = (gi % groups_per_row).to(tl.int64)
        col = tl.arange(0, GS)
        if ACT == 1:
            xbase = t * (2 * H) + g * GS
        else:
            xbase = t * H + g * GS
        m = gmask[:, None]
        qbase = t * H + g * GS
        if SCHEME == 4:
            # MXFP4 packs elements 2i and 2i + 1 into one byte: the kernel reads x as pairs
            # (a pair view, one word per two elements) and works on the even and the odd
            # halves, so no reshape / split reorders the tile (on sm_90 that reorder took
            # 2 KB of shared memory and two more barriers a tile; benchmarks/triton_sass.py)
            pc = tl.arange(0, GS // 2)
            woff = (xbase // 2)[:, None] + pc[None, :]
            glo, ghi = _unpack_pairs(tl.load(x_ptr + woff, mask=m, other=0), KIND)
            ulo, uhi = glo, ghi
            if ACT == 1:
                ulo, uhi = _unpack_pairs(tl.load(x_ptr + woff + H // 2, mask=m, other=0), KIND)
            ylo = _act(glo, ulo, ACT, KIND, SOFT, INTERP)
            yhi = _act(ghi, uhi, ACT, KIND, SOFT, INTERP)
            amax_bits = tl.maximum(tl.max(_abs_bits(ylo), axis=1), tl.max(_abs_bits(yhi), axis=1))
            e, bad = _mx_exponent(amax_bits, 2, 1.0 / 6.0, FLAG)
            f = ((127 - e) << 23).to(tl.float32, bitcast=True)[:, None]  # 2**-e (e <= 126 here)
            packed = (_e2m1_code(ylo * f, bad) | (_e2m1_code(yhi * f, bad) << 4)).to(tl.uint8)
            tl.store(q_ptr + (qbase // 2)[:, None] + pc[None, :], packed, mask=m)
            _store_mx_scale(s_ptr, t, g, e, bad, s_st, s_sg, gmask, SWIZZLED)
        else:
            y = _activation(x_ptr, xbase[:, None] + col[None, :], H, m, ACT, KIND, SOFT, INTERP)
            amax_bits = tl.max(_abs_bits(y), axis=1)
            if SCHEME == 2:
                scale = _fp8_scale(amax_bits, FLAG)
                v = _clamp448(_div_by_scale(y, scale, FLAG, INTERP))
                _store_fp8(q_ptr, qbase[:, None] + col[None, :], v, m, SOFT)
                tl.store(s_ptr + t * s_st + g * s_sg, scale, mask=gmask)
            else:
                e, bad = _mx_exponent(amax_bits, 8, 1.0 / 448.0, FLAG)
                f = ((127 - e) << 23).to(tl.float32, bitcast=True)  # 2**-e (e <= 126 here)
                v = y * f[:, None]
                nan = (amax_bits * 0 + 0x7FC00000).to(tl.float32, bitcast=True)
                v = tl.where(bad[:, None], nan[:, None], _clamp448(v))
                _store_fp8(q_ptr, qbase[:, None] + col[None, :], v, m, SOFT)
                _store_mx_scale(s_ptr, t, g, e, bad, s_st, s_sg, gmask, SWIZZLED)

    @triton.jit
    def _mx_exponent(amax_bits, EMAX: tl.constexpr, INV: tl.constexpr, RCEIL: tl.constexpr):
        # reference.mx_block_exponents, from the bits; bad: inf or NaN in the block
        bad = amax_bits >= 0x7F800000
        amax = amax_bits.to(tl.float32, bitcast=True)
        if RCEIL:
            # ceil(log2(amax * fp32(1/max_elem))); a product that underflows to 0 gets -127
            p = (amax * INV).to(tl.int32, bitcast=True)
            pe = (p >> 23) & 0xFF
            pm = p & 0x7FFFFF
            e = tl.where(pe > 0, pe - 127 + (pm != 0).to(tl.int32), tl.where(pm > 0x400000, -126, -127))
        else:
            # floor(log2(amax)) - emax; zero / subnormal amax -> below -127
            ae = (amax_bits >> 23) & 0xFF
            e = tl.where(ae == 0, -127, ae - 127 - EMAX)
        e = tl.where(amax_bits == 0, -127, e)
        return tl.minimum(tl.maximum(e, -127), 127), bad

    @triton.jit
    def _e2m1_code(v, bad):
        # E2M1 code of v (already divided by the scale) by counting the rounding thresholds
        # |v| passes (ties to even), sign in bit 3; 0 in a NaN / inf block
        a = tl.abs(v)
        c = ((a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
             + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
             + (a > 5.0).to(tl.int32))
        c = c | ((v.to(tl.int32, bitcast=True) >> 28) & 0x8)
        return tl.where(bad[:, None], 0, c)

    @triton.jit
    def _store_mx_scale(s_ptr, t, g, e, bad, s_st, s_sg, gmask, SWIZZLED: tl.constexpr):
        sb = tl.where(bad, 0xFF, e + 127).to(tl.uint8)
        if SWIZZLED:
            so = (t >> 7) * s_st + (g >> 2) * 512 + (t & 31) * 16 + ((t >> 5) & 3) * 4 + (g & 3)
        else:
            so = t * s_st + g * s_sg
        tl.store(s_ptr + so, sb, mask=gmask)

    # the interpreter re-executes kernel source against the module globals (closures are
    # lost), so every jit function is published there too
    globals().update({f.__name__: f for f in (
        _load_f32, _unpack_pairs, _bf16_rne_bits, _round_to_input, _activation, _act, _abs_bits, _fp8_scale,
        _e4m3_bits, _div_by_scale, _mx_exponent, _e2m1_code, _store_mx_scale, _store_fp8, _clamp448, _store_act,
        _row_kernel, _group_kernel)})
    return {"row": _row_kernel, "group": _group_kernel}


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
        log.warning("quantfuse Triton schemes unavailable: %s", _failed)
        return False


def unsupported_reason(op: str, x: torch.Tensor, group_size: int | None, _extra: bool = False) -> str | None:
    """None when ``op`` on ``x`` (and ``group_size``) runs here, else a short reason."""
    if op not in OPS and not (_extra and op in _TABLE):
        return f"unknown op {op!r}"
    why = kernel_inputs.scheme_reason(op, x, group_size, cpu_ok=_interpreting())
    if why:
        return why
    if not is_available():
        return f"Triton unavailable ({_failed or 'no CUDA'})"
    return None


def _fail(op: str, msg: str):
    raise RuntimeError(f"quantfuse triton backend ({op}): {msg}")


def _expect(op, name, t, x, dtype, shape, contiguous=True):
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != tuple(shape) \
            or t.device != x.device or (contiguous and not t.is_contiguous()):
        got = (tuple(t.shape), t.dtype, t.device) if isinstance(t, torch.Tensor) else type(t)
        _fail(op, f"{name} must be {dtype} {tuple(shape)} on {x.device}, got {got}")


def _soft() -> bool:
    return _interpreting() if _SOFT_CASTS is None else bool(_SOFT_CASTS)


def _kind(dtype: torch.dtype) -> int:
    return {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype]


def _launch(op: str, act: str, key: str, x, q, s, group_size=None, flag=False, swizzled=False):
    reason = unsupported_reason(op, x, group_size if key == "fp8_per_group" else None, _extra=True)
    if reason is not None:
        _fail(op, reason)
    kind = _kind(x.dtype)
    hidden, _ = kernel_inputs.activation_hidden(act, x.shape[-1])
    lead = tuple(x.shape[:-1])
    tokens = x.numel() // x.shape[-1] if x.shape[-1] else 0
    soft, interp = _soft(), _interpreting()
    scheme = _SCHEMES[key][2]
    # output checks
    if scheme == _S_NONE:
        _expect(op, "out", q, x, x.dtype, (*lead, hidden))
    elif scheme in (_S_TOKEN, _S_GROUP, _S_MXFP8):
        _expect(op, "q", q, x, torch.float8_e4m3fn, (*lead, hidden))
    else:
        _expect(op, "q", q, x, torch.uint8, (*lead, hidden // 2))
    if scheme == _S_TOKEN:
        _expect(op, "s", s, x, torch.float32, (*lead, 1))
    elif scheme == _S_GROUP:
        _expect(op, "s", s, x, torch.float32, (*lead, hidden // group_size), contiguous=False)
    elif scheme in (_S_MXFP8, _S_MXFP4):
        s_shape = kernel_inputs.swizzled_scale_shape(tokens, hidden // MX_BLOCK) if swizzled \
            else (*lead, hidden // MX_BLOCK)
        _expect(op, "s", s, x, torch.uint8, s_shape)
    if swizzled and scheme not in (_S_MXFP8, _S_MXFP4):
        _fail(op, "the swizzled scale layout is for MX schemes only")
    if tokens == 0 or hidden == 0:
        return
    if tokens * max(hidden, 1) * 2 >= 2**62:
        _fail(op, "tensor too large")
    # views the interpreter (or the soft-cast path) needs: raw bits instead of bf16 / fp8
    if scheme == _S_MXFP4:
        # element pairs (H % 32 == 0); an input starting at an odd element (a view into a
        # larger buffer, which the CUDA backend refuses as unaligned) is copied once
        xk = (x.clone() if x.storage_offset() % 2 else x).view(torch.int64 if kind == 0 else torch.int32)
    else:
        xk = x.view(torch.int16) if soft and kind == 2 else x
    if scheme == _S_NONE:
        qk = q.view(torch.int16) if soft and kind == 2 else q
    elif scheme != _S_MXFP4:
        qk = q.view(torch.uint8) if soft else q
    else:
        qk = q
    k = _kernels()
    common = dict(ACT=_ACTS[act], SCHEME=scheme, KIND=kind, SOFT=soft, INTERP=interp)
    launch = {} if interp else dict(enable_fp_fusion=False)
    if scheme in (_S_NONE, _S_TOKEN):
        if hidden <= _MAX_ROW_BLOCK:
            block = 1 << max(0, hidden - 1).bit_length()
            nchunk = 1
        else:
            block, nchunk = _CHUNK, -(-hidden // _CHUNK)
        rows = max(1, _TILE // block)  # fixed per hidden size: one compile for every T
        warps = 8 if rows * block >= 4096 else 4
        grid = (-(-tokens // rows),)
        k["row"][grid](xk, qk, s if s is not None else qk, tokens, hidden, ROWS=rows, BLOCK=block,
                       NCHUNK=nchunk, num_warps=warps, **common, **launch)
        return
    gs = group_size if scheme == _S_GROUP else MX_BLOCK
    groups = hidden // gs
    total = tokens * groups
    if total >= 2**31:
        _fail(op, f"too many groups ({total})")
    if scheme == _S_GROUP:
        try:
            st, sg = s.view(tokens, groups).stride()
        except RuntimeError:
            _fail(op, f"scale strides {s.stride()} cannot be viewed as [tokens, groups]")
    elif swizzled:
        st, sg = 128 * s.shape[1], 0  # row-block stride of the tiled layout
        if s.numel() != total:
            s.zero_()  # the padding (the kernel writes every real scale)
    else:
        st, sg = groups, 1
    block_g = _TILE // gs
    grid = (-(-total // block_g),)
    k["group"][grid](xk, qk, s, total, groups, hidden, st, sg, GS=gs, BLOCK_G=block_g, FLAG=bool(flag),
                     SWIZZLED=bool(swizzled), num_warps=4, **common, **launch)


globals().update(kernel_inputs.op_functions(_launch))
