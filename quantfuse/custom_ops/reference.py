"""Plain-torch reference maths for every quantfuse op: the numerics contract, as code.

These functions run on any device and are the ``torch`` backend of the ops in
:mod:`quantfuse.custom_ops.ops`; ``import quantfuse.reference`` exposes them so users can
check a kernel against them. The contract (``docs/numerics.md``): every op equals eager
PyTorch running the code it replaces, roundings included. The facts (formats, maxima,
block sizes) come from :mod:`quantfuse.catalog`; a quantisation is a
:class:`~quantfuse.catalog.Recipe` and :func:`quantize` computes any of them.
"""

from __future__ import annotations

import torch

from quantfuse import catalog
from quantfuse.catalog import (ApplyForm, FloorAt, Grouping, MxByte0, MxInf, MxNan, MxRounding, Recipe, ScaleLayout,
                               StepDtype, Ue8m0)

FP8_DTYPE = catalog.E4M3.dtype
FP8_MAX = catalog.E4M3.max
EPS = catalog.FP8_PER_GROUP.base.eps
MX_BLOCK = catalog.MX_BLOCK
E8M0_BIAS = catalog.E8M0_BIAS
E8M0_NAN = catalog.E8M0_NAN


def gate_up(x: torch.Tensor, up: torch.Tensor | None = None, interleaved: bool = False):
    """(gate, up) of a gated activation's input in each :class:`~quantfuse.catalog.Layout`:
    two tensors, interleaved columns ``x[..., ::2]`` / ``x[..., 1::2]``, or the halves."""
    if up is not None:
        return x, up
    if interleaved:
        return x[..., 0::2], x[..., 1::2]
    d = x.shape[-1] // 2
    return x[..., :d], x[..., d:]


def silu(t: torch.Tensor) -> torch.Tensor:
    """``F.silu`` of an fp32 tensor: torch's own kernel, which computes a 16-bit input's silu in
    fp32 too, so rounding the result gives ``F.silu`` of the 16-bit input (every bf16 and fp16
    value, on the CPU and on CUDA, where it is ``t / (1 + exp(-t))`` with IEEE division). Not that
    formula spelled in torch ops: on the CPU the first ``torch.exp`` of a process can give other last
    bits on part of a tensor (seen on a 2-core machine: half of it, in some processes), so the
    formula would differ from eager's ``F.silu`` there. Tests that emulate the GPU on the CPU (the
    Triton interpreter) replace it with the formula."""
    return torch.nn.functional.silu(t)


def silu_and_mul(x: torch.Tensor, up: torch.Tensor | None = None, interleaved: bool = False) -> torch.Tensor:
    """``F.silu(gate) * up`` exactly as eager computes it (``catalog.ActRounding.SILU_THEN_MUL``):
    silu in fp32 rounded to ``x.dtype``, then the product rounded again (16-bit inputs)."""
    g, u = gate_up(x, up, interleaved)
    s = silu(g.float()).to(x.dtype)
    return (s.float() * u.float()).to(x.dtype)


def sigmoid(t: torch.Tensor) -> torch.Tensor:
    """``torch.sigmoid`` of an fp32 tensor as eager computes it on ``t``'s device (on CUDA
    ``1 / (1 + exp(-t))`` with IEEE division, what the Triton kernels compute; the CPU's
    vectorised kernel differs from that formula in the last bit). Tests that emulate the GPU
    on the CPU (the Triton interpreter) replace it with the formula."""
    return torch.sigmoid(t)


_SWIGLUOAI = catalog.SWIGLUOAI_AND_MUL.defaults


def swigluoai_and_mul(x: torch.Tensor, up: torch.Tensor | None = None, interleaved: bool = False,
                      alpha: float = _SWIGLUOAI["alpha"], limit: float = _SWIGLUOAI["limit"]) -> torch.Tensor:
    """GPT-OSS's clamped SwiGLU exactly as eager runs transformers' ``GptOssExperts._apply_gate``
    (``catalog.ActRounding.EACH_OP``): every step in fp32, each result rounded to ``x.dtype``
    as eager stores it (16-bit inputs; fp32 inputs: no extra rounding). GPT-OSS passes
    ``interleaved=True`` (gate ``x[..., ::2]``, up ``x[..., 1::2]``)."""
    g, u = gate_up(x, up, interleaved)

    def stored(t):  # the value eager keeps after one op: rounded to the input dtype
        return t.to(x.dtype).float()

    # alpha and limit are Python floats: eager multiplies and clamps with them as fp32 scalars
    gate = stored(g.float().clamp(max=limit))
    upc = stored(u.float().clamp(min=-limit, max=limit))
    sig = stored(sigmoid(stored(gate * alpha)))
    glu = stored(gate * sig)
    return (stored(upc + 1.0) * glu).to(x.dtype)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU ``relu(x) ** 2`` (non-gated), fp32 maths, output in ``x.dtype``."""
    return torch.relu(x.float()).square().to(x.dtype)


def activate(name: str, x: torch.Tensor, up: torch.Tensor | None = None, interleaved: bool = False,
             **params) -> torch.Tensor:
    """The reference maths of the catalog activation ``name`` (this module's function of that
    name; ``identity`` returns ``x``), with gated ones reading gate and up in any layout."""
    if name == catalog.IDENTITY.name:
        return x
    fn = globals()[name]
    return fn(x, up, interleaved, **params) if catalog.ACTIVATIONS[name].gated else fn(x, **params)


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


def div_scalar(t: torch.Tensor, qmax: float) -> torch.Tensor:
    """``t / qmax`` as eager computes it on ``t``'s device: on CUDA a multiply by fp32(1 / qmax)
    (what the kernels compute), on the CPU a true division. Tests that emulate the GPU on the
    CPU (the Triton interpreter) replace it with the multiply."""
    return t / qmax


def _ue8m0(scale: torch.Tensor, form: Ue8m0) -> torch.Tensor:
    if form is Ue8m0.EXACT:
        return ue8m0_ceil(scale)
    if form is Ue8m0.EXP2_CEIL_LOG2:
        return torch.exp2(torch.ceil(torch.log2(scale)))
    return scale


def _floored_amax(yg: torch.Tensor, r: Recipe) -> torch.Tensor:
    """max |y| per group ``[..., G, 1]`` in the recipe's step dtype, floored where the recipe floors
    the amax (NaN kept)."""
    work = yg.float() if r.step_dtype is StepDtype.FP32 else yg
    amax = work.abs().amax(dim=-1, keepdim=True)
    return amax.clamp_min(r.eps) if r.floor_at is FloorAt.AMAX else amax


def fp8_scales(yg: torch.Tensor, r: Recipe) -> torch.Tensor:
    """fp32 scales ``[..., G, 1]`` of grouped values ``[..., G, g]`` (input dtype) for an FP8 recipe.

    ``StepDtype.INPUT``: the amax, its floor (``FloorAt.AMAX``) and ``amax / qmax`` in the input
    dtype, then cast to fp32, as torchao writes it; a scale floor and the UE8M0 rounding follow in
    fp32 (``s.float().clamp(min=eps)``: the recogniser reads a floor of the cast scale so).
    NaN anywhere in a group makes its scale NaN (torch's amax propagates NaN)."""
    amax = _floored_amax(yg, r)
    # `amax / qmax` as eager writes it: on CUDA torch multiplies by fp32(1 / qmax) (what the
    # kernels compute), on the CPU it divides; either way the reference is eager, bit for bit
    scale = div_scalar(amax.float(), r.element.max).to(amax.dtype).float()
    if not r.ue8m0_after_floor:
        scale = _ue8m0(scale, r.ue8m0)
    if r.floor_at is FloorAt.SCALE:
        scale = scale.clamp_min(r.eps)
    if r.ue8m0_after_floor:
        scale = _ue8m0(scale, r.ue8m0)
    return scale


def _ratio(yg: torch.Tensor, r: Recipe) -> torch.Tensor:
    """``qmax / a`` (``a`` the floored amax, fp32: the recipe's steps are) as torch computes
    ``qmax / t``: ``t.reciprocal() * qmax`` (``ApplyForm.MUL_RATIO``'s multiplier)."""
    return _floored_amax(yg, r).reciprocal() * r.element.max


def _apply_fp8(yg: torch.Tensor, scale: torch.Tensor, r: Recipe) -> torch.Tensor:
    v = yg.float()
    if r.apply is ApplyForm.MUL_RATIO:
        v = v * _ratio(yg, r)
    else:
        v = v / scale if r.apply is ApplyForm.DIV else v * scale.reciprocal()
    if r.clamp:
        v = v.clamp(-r.element.max, r.element.max)
    return v.to(r.element.dtype)


def _alloc_scales(lead: tuple[int, ...], groups: int, device, column_major: bool) -> torch.Tensor:
    if column_major:
        # [..., G] view of contiguous [G, ...] storage: what a TMA-fed GEMM reads.
        return torch.empty((groups, *lead), dtype=torch.float32, device=device).movedim(0, -1)
    return torch.empty((*lead, groups), dtype=torch.float32, device=device)


def quantize(y: torch.Tensor, r: Recipe, scale: torch.Tensor | None = None):
    """Quantise ``y [..., H]`` with any recipe of the catalog.

    Returns ``(q, s)`` in the layouts of the ops, or ``q`` alone for a static recipe
    (``scale``: its one-element fp32 scale)."""
    if r.mx:
        return mx_quantize(y, r)
    *lead, hidden = y.shape
    if r.static:
        return _apply_fp8(y, scale.reshape(()).float(), r)
    if r.grouping is Grouping.PER_TENSOR:
        # one group of every element: the amax over the whole tensor; an empty tensor's is taken
        # as 0 (the scale of an all-zero tensor; eager's amax of no elements raises instead)
        yt = y.reshape(1, -1)
        s = fp8_scales(yt if yt.numel() else y.new_zeros(1, 1), r)
        return _apply_fp8(yt, s, r).reshape(y.shape), s.reshape(1)
    g = hidden if r.grouping is Grouping.PER_TOKEN else r.group_size
    yg = y.reshape(*lead, hidden // g, g)
    s = fp8_scales(yg, r)
    q = _apply_fp8(yg, s, r).reshape(y.shape)
    out = _alloc_scales(tuple(lead), hidden // g, y.device, r.scale_layout is ScaleLayout.COLUMN_MAJOR)
    out.copy_(s.squeeze(-1))
    return q, out


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int, column_major_scales: bool = False,
                              use_ue8m0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic FP8 E4M3 quantisation in groups of ``group_size`` along the last dim.

    Returns ``(q, s)``: ``q`` has ``x``'s shape in float8_e4m3fn, ``s`` is fp32
    ``[..., H // group_size]`` (column-major storage when ``column_major_scales``).
    """
    return quantize(x, catalog.FP8_PER_GROUP.recipe(group_size, column_major_scales, use_ue8m0))


def per_token_quant_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic FP8 E4M3 quantisation with one scale per token: ``(q, s[..., 1])``."""
    return quantize(x, catalog.FP8_PER_TOKEN.base)


def static_scaled_fp8_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Static FP8 E4M3 quantisation with a one-element fp32 ``scale``: ``e4m3(clamp(x / scale))``."""
    return quantize(x, catalog.FP8_STATIC.base, scale)


def silu_and_mul_per_block_quant(x: torch.Tensor, group_size: int, column_major_scales: bool = False,
                                 use_ue8m0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``per_token_group_quant_fp8(silu_and_mul(x), ...)``: the unfused pair, bit for bit."""
    return per_token_group_quant_fp8(silu_and_mul(x), group_size, column_major_scales, use_ue8m0)


def _ceil_log2(v: torch.Tensor) -> torch.Tensor:
    mant, exp = torch.frexp(v)
    return exp - (mant == 0.5).to(exp.dtype)


def mx_exponents(amax: torch.Tensor, element: catalog.Element, rounding: MxRounding,
                 inf: MxInf = MxInf.CLAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared exponents of MX blocks from their float32 amax: ``(exponent int32, NaN mask)``.

    With ``amax = m * 2^k``, ``m`` in ``[0.5, 1)`` (exact, from the bits):

    * floor (OCP): ``floor(log2 amax) - emax``;
    * rceil (NVIDIA): the smallest power of two not below ``amax * fp32(1 / max_elem)`` (an fp32
      multiply, as TransformerEngine; a product that underflows to 0 gets -127);
    * ceil: ``ceil(log2 amax) - emax``;
    * even: ``floor(log2 amax') - emax``, ``amax'`` rounded half up to the element's mantissa
      bits (it reaches the next binade when ``m >= 1 - 2^-(mbits + 2)``).

    An all-zero block gets -127; an inf block (inf, no NaN) 127 (``MxInf.CLAMP``) or
    ``128 - emax`` (``MxInf.BITS``); everything clamped to E8M0's ``[-127, 127]``. A block
    holding NaN is a NaN block (scale byte 0xFF).
    """
    amax = amax.float()
    bad = torch.isnan(amax)
    safe = torch.where(~torch.isfinite(amax) | (amax == 0), torch.ones_like(amax), amax)
    mant, k = torch.frexp(safe)
    emax = element.emax
    if rounding is MxRounding.FLOOR:
        exp = k - 1 - emax
    elif rounding is MxRounding.CEIL:
        exp = k - (mant == 0.5).to(k.dtype) - emax
    elif rounding is MxRounding.EVEN:
        exp = k - 1 + (mant >= 1 - 2.0 ** -(element.mant + 2)).to(k.dtype) - emax
    else:
        r = safe * torch.full_like(safe, 1.0 / element.max)
        exp = torch.where(r == 0, torch.full_like(k, -E8M0_BIAS), _ceil_log2(r))
    exp = torch.where(amax == 0, torch.full_like(exp, -E8M0_BIAS), exp)
    inf_exp = E8M0_BIAS + 1 - emax if inf is MxInf.BITS else E8M0_BIAS
    exp = torch.where(torch.isinf(amax), torch.full_like(exp, inf_exp), exp)
    return exp.clamp(-E8M0_BIAS, E8M0_BIAS).to(torch.int32), bad


def mx_multipliers(exp: torch.Tensor, bad: torch.Tensor, r: Recipe) -> torch.Tensor:
    """What the elements of each block are multiplied by (fp32): ``2^-e`` (exact, ldexp stays
    finite for ``|e| <= 127``), a byte-0 block's ``MxByte0`` value, a NaN block's NaN
    (``MxNan.NAN``) or 0 (``MxNan.DIV_INF``: ``y * 0`` is ``y / inf`` bit for bit, NaN payloads
    included, on x86 and on CUDA). The device values (``Recipe.device_factor``: a byte-0 block's
    of ``catalog.MX_DEVICE_BYTE0``, an inf block's of ``catalog.MX_DEVICE_INF``, whose exponent
    127 only an inf block reaches): :func:`device_factor` on ``exp``'s device (on the CPU
    EXACT's / CLAMP's)."""
    m = torch.ldexp(torch.ones_like(exp, dtype=torch.float32), -exp)
    if r.mx_byte0 in (MxByte0.MIN_NORMAL, MxByte0.ONE):
        low = 2.0 ** (E8M0_BIAS - 1) if r.mx_byte0 is MxByte0.MIN_NORMAL else 1.0
        m = torch.where(exp == -E8M0_BIAS, torch.full_like(m, low), m)
    form = r.device_factor
    if form is not None:
        at = E8M0_BIAS if form in catalog.MX_DEVICE_INF else -E8M0_BIAS
        m = torch.where(exp == at, device_factor(form, exp.device), m)
    return torch.where(bad, torch.full_like(m, float("nan") if r.mx_nan is MxNan.NAN else 0.0), m)


def device_factor(form: "MxByte0 | MxInf", device) -> torch.Tensor:
    """The multiplier of the special block that ``form`` (a ``Recipe.device_factor``) names, from
    ``d``, the 2^-127 that torch's ``exp2`` / ``pow`` gives on ``device``, as an fp32 scalar
    tensor: a byte-0 block's ``1 / d`` (code spelled ``y / d`` gets the same E4M3 / E2M1 codes for
    every 16-bit block: tests/test_catalog.py::test_device_byte0_division_codes_as_the_product),
    an inf block's ``d`` itself (``MxInf.EXP2``: torchao's RCEIL multiplies by it)."""
    e = torch.full((), -float(E8M0_BIAS), device=device)
    d = torch.pow(2, e) if form is MxByte0.POW else torch.exp2(e)
    return d if form in catalog.MX_DEVICE_INF else 1 / d


def mx_block_scales(amax: torch.Tensor, r: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale bytes uint8, element multipliers fp32)`` of MX blocks with float32 ``amax``
    under the MX recipe ``r``: what the recogniser compares a site's scale with."""
    exp, bad = mx_exponents(amax, r.element, r.mx_rounding, r.mx_inf)
    return _scale_bytes(exp, bad), mx_multipliers(exp, bad, r)


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
    rows, cols = catalog.SWIZZLE_ROWS, catalog.SWIZZLE_COLS
    tp, gp = -(-t // rows) * rows, -(-g // cols) * cols
    padded = torch.nn.functional.pad(s2, (0, gp - g, 0, tp - t))  # zero bytes; one kernel
    # [row block, r // 32, r % 32, col block, c] -> [row block, col block, r % 32, r // 32, c]
    return padded.view(tp // rows, rows // 32, 32, gp // cols, cols).permute(0, 3, 2, 1, 4).reshape(tp, gp)


def _mx_scales(exp: torch.Tensor, bad: torch.Tensor, swizzled: bool) -> torch.Tensor:
    s = _scale_bytes(exp, bad)
    return swizzle_128x4(s) if swizzled else s


def mx_quantize(x: torch.Tensor, r: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MX quantisation of ``x [..., H]`` with any MX recipe: ``(q, scale bytes)``.

    MXFP8: E4M3 elements ``e4m3(clamp(y * m, -448, 448))`` (``m``: :func:`mx_multipliers`; an
    inf block's inf elements saturate; a NaN block is all NaN, or ``y / inf``). MXFP4: E2M1
    codes packed two a byte (element 2i in the low nibble), saturating at ±6; a value that is NaN
    (in a NaN block) codes 0 (E2M1 has no NaN). One E8M0 byte per 32 elements, in the 128x4
    tiled layout for ``ScaleLayout.SWIZZLED`` (:func:`swizzle_128x4`).
    """
    amax = x.float().unflatten(-1, (-1, MX_BLOCK)).abs().amax(-1)
    exp, bad = mx_exponents(amax, r.element, r.mx_rounding, r.mx_inf)
    v = x.float().unflatten(-1, (-1, MX_BLOCK)) * mx_multipliers(exp, bad, r).unsqueeze(-1)
    if r.element is catalog.E4M3:
        if r.clamp:
            v = v.clamp(-FP8_MAX, FP8_MAX)
        if r.mx_nan is MxNan.NAN:
            v = torch.where(bad.unsqueeze(-1), torch.full_like(v, float("nan")), v)
        q = v.to(FP8_DTYPE).flatten(-2)
    else:
        codes = torch.where(torch.isnan(v), torch.zeros_like(v, dtype=torch.uint8), e2m1_codes(v)).flatten(-2)
        q = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return q, _mx_scales(exp, bad, r.scale_layout is ScaleLayout.SWIZZLED)


def mxfp8_quant(x: torch.Tensor, scale_rounding: str = "rceil",
                is_sf_swizzled_layout: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MXFP8: E4M3 elements, one E8M0 scale byte per 32 elements: ``(q, s uint8 [..., H/32])``
    (``is_sf_swizzled_layout``: ``s`` in the 128x4 tiled layout, see :func:`swizzle_128x4`).

    Elements saturate at ±448 (an inf block: ±inf -> ±448, the rest scaled by 2^-127); a NaN block
    is all NaN with scale byte 0xFF.
    """
    return mx_quantize(x, catalog.MXFP8.recipe(scale_rounding, is_sf_swizzled_layout))


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
    return mx_quantize(x, catalog.MXFP4.recipe(scale_rounding, is_sf_swizzled_layout))


def experts_quantize(y: torch.Tensor, expert_offsets: torch.Tensor, blockscale_offsets: torch.Tensor, r: Recipe,
                     scale_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The experts ops (vLLM's ``mxfp4_experts_quant``): ``y [T, H]`` holds the tokens sorted by
    expert, expert e the rows ``expert_offsets[e]:expert_offsets[e + 1]``. Each expert's rows are
    quantised with the MX recipe ``r`` and their scales, swizzled (:func:`swizzle_128x4`: padded
    to 128 rows and 4 columns with zero bytes), placed from row ``blockscale_offsets[e]`` of a
    zero ``[scale_rows, G_pad]`` buffer, where vLLM's kernel puts them
    (csrc/quantization/fp4/mxfp4_experts_quant.cu: ``SFout + blockscale_offsets[e] * numKTiles``
    words, the expert's own row index inside). Returns ``(q [T, q_width], scales)``."""
    eo = expert_offsets.tolist()
    bo = blockscale_offsets.tolist()
    q = torch.empty((y.shape[0], r.q_width(y.shape[-1])), dtype=r.element.dtype, device=y.device)
    gp = -(-r.groups(y.shape[-1]) // catalog.SWIZZLE_COLS) * catalog.SWIZZLE_COLS
    s = torch.zeros((scale_rows, gp), dtype=torch.uint8, device=y.device)
    for e in range(len(eo) - 1):
        qe, se = mx_quantize(y[eo[e]:eo[e + 1]], r)
        q[eo[e]:eo[e + 1]] = qe
        s[bo[e]:bo[e] + se.shape[0]] = se
    return q, s


def _experts_op(x, expert_offsets, blockscale_offsets, num_experts, topk, scale_rounding, scheme):
    from quantfuse.custom_ops import plan  # the plan module imports this one

    entry = catalog.OPS[scheme.experts_name]
    p = plan.make_plan(entry, x, (num_experts, topk, scale_rounding), scale=(expert_offsets, blockscale_offsets))
    rows = p.scale_shape()[0]
    plan.check_expert_offsets(entry.name, expert_offsets, blockscale_offsets, p.tokens, rows)
    return experts_quantize(x, expert_offsets, blockscale_offsets, p.recipe, rows)


def mxfp8_experts_quant(x: torch.Tensor, expert_offsets: torch.Tensor, blockscale_offsets: torch.Tensor,
                        num_experts: int, topk: int, scale_rounding: str = "rceil") -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP8 of tokens sorted by expert with per-expert swizzled scales (:func:`experts_quantize`),
    the arguments checked as the op checks them."""
    return _experts_op(x, expert_offsets, blockscale_offsets, num_experts, topk, scale_rounding, catalog.MXFP8)


def mxfp4_experts_quant(x: torch.Tensor, expert_offsets: torch.Tensor, blockscale_offsets: torch.Tensor,
                        num_experts: int, topk: int, scale_rounding: str = "rceil") -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4 of tokens sorted by expert with per-expert swizzled scales (:func:`experts_quantize`),
    the arguments checked as the op checks them (vLLM's ``mxfp4_experts_quant``)."""
    return _experts_op(x, expert_offsets, blockscale_offsets, num_experts, topk, scale_rounding, catalog.MXFP4)
