"""torchao 0.18.0's MX quantisation written again in plain torch, for the machines without torchao
(the GPU test machine) and for the tests that spell it: ``to_mx`` in every ``ScaleCalculationMode``
(torchao/prototype/mx_formats/mx_tensor.py: ``to_mx`` and ``_to_mx_rceil``'s fallback, the path
below sm_100), its E2M1 bit trick (torchao/prototype/custom_fp_utils.py ``_f32_to_floatx_unpacked``)
and ``pack_uint4`` (torchao/prototype/mx_formats/kernels.py). ``tests/test_torchao_mx.py`` checks
that these give torchao's own bytes.

Also here: the recipe each mode is fused with, inputs holding every kind of MX block, and where a
quantised MXFP4 element is NaN (the one place the fused op does not follow torchao's bytes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

E2M1_MAX = 6.0
#: element -> (largest value, exponent of its largest binade, mantissa bits), torchao's constants
ELEMENTS = {"e4m3": (448.0, 8, 3), "e2m1": (6.0, 2, 1)}
#: the recipe fields (beyond scale_rounding) the recogniser reads off each mode, as recipe= specs
BITS_SPEC = "mx_inf=bits,mx_byte0=min_normal,mx_nan=div_inf"
SPECS = {"FLOOR": BITS_SPEC, "CEIL": BITS_SPEC, "EVEN": BITS_SPEC, "RCEIL": "mx_byte0=one"}


def torchao_codes(v):
    """torchao's ``_f32_to_floatx_unpacked(x, ebits=2, mbits=1)`` (torchao/prototype/custom_fp_utils.py,
    what ``f32_to_f4_unpacked`` in torchao/prototype/mx_formats/kernels.py calls), written again:
    the sign split off the int32 bits; saturate at >= 6; below 1 (E2M1's smallest normal) add the
    float 2^22 (denorm_exp 149 << 23) so the fp32 addition rounds to even and read the code from
    the bits; else re-bias the exponent, add the magic rounding bias (2^21 - 1) plus the kept
    mantissa bit, and shift out 22 bits; the sign shifted to bit 3."""
    bits = v.view(torch.int32)
    sign = bits & -0x80000000
    mag = (bits ^ sign).view(torch.float32)
    saturate = mag >= E2M1_MAX
    denormal = torch.logical_and(torch.logical_not(saturate), mag < 1.0)
    normal = torch.logical_not(torch.logical_or(saturate, denormal))
    denorm_mask = 149 << 23
    d = ((mag + torch.tensor(denorm_mask, dtype=torch.int32, device=v.device).view(torch.float32)).view(torch.int32)
         - denorm_mask).to(torch.uint8)
    n = mag.view(torch.int32)
    odd = (n >> 22) & 1
    n = ((n + (((1 - 127) << 23) + (1 << 21) - 1) + odd) >> 22).to(torch.uint8)
    out = torch.full_like(mag, 7, dtype=torch.uint8)
    out = torch.where(denormal, d, out)
    out = torch.where(normal, n, out)
    return out | ((sign >> 28).to(torch.uint8) & 8)


def pack_torchao(c):
    """torchao's ``pack_uint4`` (torchao/prototype/mx_formats/kernels.py): flattened, then viewed back."""
    shape = c.shape
    flat = c.contiguous().view(-1)
    return (flat[::2] | flat[1::2] << 4).view(*shape[:-1], shape[-1] // 2)


def to_mx_torch(x: torch.Tensor, element: str, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``to_mx(x, elem, 32, ScaleCalculationMode[mode])``'s ``(scale uint8 bytes [..., H/32], data)``
    (torchao/prototype/mx_formats/mx_tensor.py), step by step as torchao writes it: FLOOR / CEIL /
    EVEN from the amax's float32 bits, the byte shifted back into a float scale floored at 2^-126,
    ``x / scale`` (E4M3 clamped to ±448 in eager only: under compile torchao lets the saturating
    cast do it); RCEIL ``amax / max`` with ``where``s on isnan / isinf, ``ceil(log2)``, the
    multiplier ``where``s on the byte (255: NaN, 254: 2^-127, 0: 1.0, else exp2(127 - byte))."""
    max_pos, emax, mbits = ELEMENTS[element]
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
    amax = torch.amax(torch.abs(blocks), -1).unsqueeze(-1).to(torch.float32)
    data = blocks.to(torch.float32)
    if mode == "RCEIL":
        descale = amax / max_pos
        byte = torch.where(torch.isnan(descale), 255, torch.where(
            torch.isinf(descale), 254, (torch.clamp(torch.ceil(torch.log2(descale)), min=-127, max=127) + 127)
            .to(torch.uint8)))
        rcp = torch.where(byte == 255, descale, torch.where(byte == 254, 2.0 ** -127, torch.where(
            byte == 0, 1.0, torch.exp2(127 - byte.to(torch.float32)))))
        data = torch.clamp(data * rcp, min=-max_pos, max=max_pos)
    else:
        a = amax
        if mode == "EVEN":
            nan = torch.isnan(a)
            a = ((a.view(torch.int32) + (1 << (23 - mbits - 1))) & (((1 << 9) - 1) << 23)).view(torch.float32)
            a = torch.where(nan, float("nan"), a)
        bits = a.view(torch.int32)
        e = (torch.bitwise_right_shift(bits, 23) & 0xFF) - 127
        if mode == "CEIL":
            e = e + ((bits & 0x7FFFFF) > 0)
        e = torch.clamp(e - emax, min=-127, max=128)
        byte = torch.where(torch.isnan(a), 255, (e + 127).to(torch.uint8))
        scale = torch.bitwise_left_shift(byte.to(torch.int32), 23).view(torch.float32).clamp(min=2.0 ** -126)
        data = data / scale
        if element == "e4m3" and not torch.compiler.is_compiling():
            data = torch.clamp(data, min=-max_pos, max=max_pos)
    if element == "e4m3":
        q = data.to(torch.float8_e4m3fn).reshape(x.shape)
    else:
        q = pack_torchao(torchao_codes(data.reshape(x.shape)))
    return byte.squeeze(-1), q


def mx_inputs(tokens: int, hidden: int, seed: int, device="cpu", dtype=torch.bfloat16) -> torch.Tensor:
    """[gate | up] whose SiLU x Mul holds every kind of MX block: ordinary values over many
    binades, an all-zero block, tiny and subnormal blocks (scale byte 0), huge ones, blocks with
    ±inf (and no NaN), NaN blocks (one with inf too), amaxes at EVEN's rounding edge
    (1 - 2^-(mbits + 2) of a binade) and exact powers of two (CEIL's edge). ``tokens >= 10``."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(tokens, hidden, generator=gen) * 3
    u = torch.randn(tokens, hidden, generator=gen) * torch.pow(10.0, torch.empty(tokens, 1).uniform_(-4, 4,
                                                                                                   generator=gen))
    g[:10] = 16.0  # silu(16) is 16 in bf16 and fp16: these rows' values are up's times 16, exactly
    u[0, :32] = 0.0
    u[1, 32:64] = torch.randn(32, generator=gen) * 1e-39
    u[2, 64:96] = torch.randn(32, generator=gen) * 1e-36
    u[3, 5] = float("inf")
    u[3, 40] = -float("inf")
    u[4, 70] = float("nan")
    u[4, 100:102] = torch.tensor([float("nan"), float("inf")])
    u[5] *= 2.0 ** 100
    u[6, :32] = 2.0 ** -133  # bf16's smallest subnormal
    edge = torch.tensor([2.0 ** k * (1 - 2.0 ** -(m + 2)) for m in (1, 3) for k in range(-16, 16)])
    u[7, :edge.numel()] = edge[:hidden] / 16
    u[8, :32] = torch.tensor([2.0 ** k for k in range(-16, 16)]) / 16
    return torch.cat([g, u], -1).to(dtype).to(device)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def nan_elements(y: torch.Tensor, mode: str) -> torch.Tensor:
    """Where ``y``'s elements scaled by their block are NaN: in NaN blocks every element (RCEIL
    multiplies by NaN) or the inf and NaN ones (the other modes divide by inf)."""
    yb = y.float().unflatten(-1, (-1, 32))
    nan_block = torch.isnan(yb).any(-1, keepdim=True)
    return (nan_block & (~torch.isfinite(yb) | (mode == "RCEIL"))).flatten(-2)


def assert_mxfp4_equal_but_nan(got: torch.Tensor, want: torch.Tensor, y: torch.Tensor, mode: str, what="") -> None:
    """MXFP4 bytes equal in every nibble but those of NaN elements (:func:`nan_elements`), which the
    fused op codes 0 (E2M1 has no NaN; torchao's bit trick codes a NaN by its payload bits)."""
    nan = nan_elements(y, mode)
    keep = (torch.where(nan[..., 0::2], 0, 0x0F) | torch.where(nan[..., 1::2], 0, 0xF0)).to(torch.uint8)
    assert torch.equal(got & keep, want & keep), what
    assert torch.equal(got & ~keep, torch.zeros_like(got)), what
