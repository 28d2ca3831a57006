"""MXFP4 recognised by meaning (quantfuse/patterns/e2m1.py): three independent spellings of the
E2M1 encoding and of the packing, each scale rounding, SiLU x Mul and squared ReLU, bf16 and
fp16, fused bit for bit; spellings that compute other codes are near misses naming the
difference. None of these spellings is one the pattern matcher was traced from (the
rewrites are the recogniser's).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from quantfuse.patterns import e2m1
from helpers import count_targets, post_grad_graph
from torchao_spelled import pack_torchao, torchao_codes

E2M1_MAX = 6.0


def _blocks(y, rceil):
    """Blocks of 32 in fp32 and the clamped E8M0 exponent: RCEIL ``ceil(log2(amax / 6))`` or
    FLOOR ``floor(log2(amax)) - 2`` (E2M1's emax), as torchao's ``to_mx`` modes compute them."""
    yg = y.float().reshape(*y.shape[:-1], -1, 32)
    amax = yg.abs().amax(dim=-1, keepdim=True)
    e = torch.ceil(torch.log2(amax / E2M1_MAX)) if rceil else torch.floor(torch.log2(amax)) - 2
    return yg, e.clamp(-127, 127)


def threshold_codes(v, ties_even=True):
    """Count the thresholds below |v| (ties to even: `>` where the lower neighbour is even);
    the sign as a multiply."""
    a = v.abs()
    c = torch.zeros_like(a, dtype=torch.uint8)
    for t, lower_even in ((0.25, True), (0.75, False), (1.25, True), (1.75, False), (2.5, True), (3.5, False),
                          (5.0, True)):
        c = c + ((a > t) if lower_even and ties_even else (a >= t)).to(torch.uint8)
    return c + torch.signbit(v).to(torch.uint8) * 8


def round_codes(v, saturate=True):
    """``torch.round`` (half to even) on the grid of each binade, then the code from the value."""
    mag = v.abs()
    if saturate:
        mag = mag.clamp(max=E2M1_MAX)
    r = torch.where(mag < 2, torch.round(mag * 2) / 2, torch.where(mag < 4, torch.round(mag), torch.round(mag / 2) * 2))
    code = torch.where(r < 2, r * 2, torch.where(r < 4, r + 2, r / 2 + 4))
    return code.to(torch.uint8) | (torch.signbit(v).to(torch.uint8) << 3)


def pack_lanes(c):
    """``c[..., ::2] | c[..., 1::2] << 4`` (the reference's and torchao's nibble order)."""
    return c[..., ::2] | (c[..., 1::2] << 4)


def pack_pairs(c):
    """The pairs as a trailing dim of 2, ``lo + hi * 16``."""
    p = c.reshape(*c.shape[:-1], -1, 2)
    return p[..., 0] + p[..., 1] * 16


def pack_high_first(c):
    return (c[..., ::2] << 4) | c[..., 1::2]


SPELLINGS = {
    # encoding, packing, whether the scaled values are clamped to ±6 first (torchao's to_mx does)
    "thresholds": (threshold_codes, pack_pairs, False),
    "round": (round_codes, pack_lanes, False),
    "torchao": (torchao_codes, pack_torchao, True),
}


def mxfp4(y, spelling, rceil, encode=None, pack=None):
    enc, packer, clamp = SPELLINGS[spelling]
    enc, packer = encode or enc, pack or packer
    yg, e = _blocks(y, rceil)
    v = yg / torch.exp2(e)
    if clamp:
        v = v.clamp(-E2M1_MAX, E2M1_MAX)
    q = packer(enc(v.reshape(y.shape)))
    return q, (e.squeeze(-1) + 127).to(torch.uint8)


def silu_mul(x):
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def relu2(x):
    return F.relu(x).square()


def _input(*shape, dtype=torch.bfloat16, gated=True):
    """Values over twelve decades with the specials: an all-zero block, subnormals, values that
    overflow the activation's dtype, +inf (never a NaN: the gate gets no -inf, the up no 0 at it)."""
    torch.manual_seed(0)
    x = torch.randn(*shape) * torch.logspace(-6, 6, shape[-1])
    x[..., :32] = 0
    tiny = torch.finfo(dtype).tiny / 4
    x[..., 40:44] = torch.tensor([tiny, -tiny, 3 * tiny, -0.0])
    big = torch.finfo(dtype).max / 2
    x[..., 70] = big
    x[..., 100] = float("inf")
    if gated:
        d = shape[-1] // 2
        x[..., d + 70] = 3.0
        x[..., d + 100] = 0.5
        x[..., d + 40:d + 44] = 1.0
    return x.to(dtype)


def _report(gm):
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig())
    fusion(gm.graph)
    gm.recompile()
    return fusion.report


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("rceil", [True, False])
@pytest.mark.parametrize("act,dtype", [("silu_and_mul", torch.bfloat16), ("relu2", torch.float16),
                                       ("silu_and_mul", torch.float16), ("relu2", torch.bfloat16)])
def test_mxfp4_fused_bit_exact(spelling, rceil, act, dtype):
    gated = act == "silu_and_mul"
    x = _input(3, 512 if gated else 256, dtype=dtype, gated=gated)
    y_of = silu_mul if gated else relu2
    fn = lambda x: mxfp4(y_of(x), spelling, rceil)  # noqa: E731
    gm = post_grad_graph(fn, x)
    before = (count_targets(gm, "amax"), count_targets(gm, "exp2"), count_targets(gm, "quantfuse"))
    assert before[:2] == (1, 1) and before[2] == 0
    report = _report(gm)
    assert report.near_misses == [], str(report)
    (r,) = report.rewrites
    assert r.pattern == f"recognised:{act}[halves]+mxfp4" and r.fused_op == f"quantfuse.{act}_mxfp4_quant"
    assert r.params == {"scale_rounding": "rceil" if rceil else "floor", "is_sf_swizzled_layout": False,
                        "recipe": "mx_byte0=exp2"}  # y / torch.exp2(e): the device's 2^-127
    assert (r.quant_key, r.input_dtype) == ("kMxfp4Dynamic", str(dtype).replace("torch.", ""))
    # the whole quantisation is gone: no reduction, no exponent, no packing left
    assert (count_targets(gm, "amax"), count_targets(gm, "exp2"), count_targets(gm, "lshift", "bitwise_or"),
            count_targets(gm, f"quantfuse.{act}_mxfp4_quant")) == (0, 0, 0, 1)
    (eq, es), (fq, fs) = fn(x), gm(x)
    assert eq.dtype == fq.dtype == torch.uint8 and eq.shape == fq.shape and es.shape == fs.shape
    assert torch.equal(eq, fq) and torch.equal(es, fs)
    # the specials are in the blocks compared: an all-zero block, an inf block (byte 254)
    assert bool((es == 0).any()) and bool((es == 254).any())


def test_mxfp4_3d_input():
    x = _input(2, 3, 512)
    fn = lambda x: mxfp4(silu_mul(x), "round", True)  # noqa: E731
    gm = post_grad_graph(fn, x)
    assert len(_report(gm).rewrites) == 1
    (eq, es), (fq, fs) = fn(x), gm(x)
    assert torch.equal(eq, fq) and torch.equal(es, fs)


def _near_miss(fn, x):
    gm = post_grad_graph(fn, x)
    code = gm.code
    report = _report(gm)
    assert report.rewrites == [], str(report)
    assert gm.code == code  # nothing is changed where nothing is fused
    (m,) = report.near_misses
    assert m.pattern == "recognised"
    return m.reason


X = _input(3, 512)


def test_ties_away_from_zero_is_a_near_miss():
    reason = _near_miss(lambda x: mxfp4(silu_mul(x), "thresholds", True,
                                        encode=lambda v: threshold_codes(v, ties_even=False)), X)
    assert reason == ("the E2M1 encoding rounds ties away from zero where E2M1 rounds them to even (at |v| = "
                      "0.25, 1.25, 2.5, 5: 0.25 gives code 1, E2M1 code 0)")


def test_no_saturation_is_a_near_miss():
    reason = _near_miss(lambda x: mxfp4(silu_mul(x), "round", False, encode=lambda v: round_codes(v, False)), X)
    assert reason.startswith("the E2M1 encoding does not saturate at ±6.0 (")


def test_sign_of_zero_is_a_near_miss():
    """``(v < 0)`` as the sign: -0.0 and tiny negatives that round to 0 differ from E2M1's sign bit."""
    def enc(v):
        return round_codes(v.abs()) | ((v < 0).to(torch.uint8) << 3)
    reason = _near_miss(lambda x: mxfp4(silu_mul(x), "round", True, encode=enc), X)
    assert reason.startswith("the E2M1 encoding sets the sign bit unlike E2M1's sign of the value (-0 gives code 0, "
                             "E2M1 code 8")


def test_other_packing_and_scale_are_near_misses():
    assert _near_miss(lambda x: mxfp4(silu_mul(x), "round", True, pack=pack_high_first), X) == (
        "the packing puts element 2i in the high nibble: MXFP4 (OCP) puts it in the low nibble "
        "(codes[..., ::2] | codes[..., 1::2] << 4)")

    def other_emax(y):
        yg = y.float().reshape(*y.shape[:-1], -1, 32)
        e = (torch.floor(torch.log2(yg.abs().amax(dim=-1, keepdim=True))) - 3).clamp(-127, 127)
        return pack_lanes(round_codes((yg / torch.exp2(e)).reshape(y.shape))), (e.squeeze(-1) + 127).to(torch.uint8)
    assert _near_miss(lambda x: other_emax(silu_mul(x)), X) == (
        "the MX exponent is floor(log2(amax)) - 3.0, not - 2 (e2m1's emax)")

    def reads_y(y):
        yg, e = _blocks(y, True)
        v = (yg / torch.exp2(e)).reshape(y.shape)
        codes = round_codes(v.abs()) | (torch.signbit(y).to(torch.uint8) << 3)
        return pack_lanes(codes), (e.squeeze(-1) + 127).to(torch.uint8)
    assert _near_miss(lambda x: reads_y(silu_mul(x)), X).startswith("the E2M1 encoding `")


def test_probe_values_cover_the_scaled_16_bit_values():
    """Every bf16 / fp16 value divided by 2^e for e in [-127, 127] is among the probes (which is
    what makes the evaluation a proof for 16-bit activations)."""
    probes = e2m1.probe_values()
    assert not bool(probes.isnan().any()) and bool(probes.isinf().any())
    assert torch.signbit(probes[probes == 0]).tolist() in ([False, True], [True, False])
    for dtype in (torch.bfloat16, torch.float16):
        bits = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
        vals = bits.float()
        vals = vals[~vals.isnan()]
        for e in (-127, -60, -3, 0, 5, 60, 127):
            scaled = vals / torch.exp2(torch.tensor(float(e)))
            assert bool(torch.isin(scaled, probes).all()), (dtype, e)


def torchao_floor_scale(y):
    """torchao's ``to_mx`` FLOOR scale (torchao/prototype/mx_formats/mx_tensor.py), written again:
    the exponent read off the amax's float32 bits (``view(torch.int32)``, ``>> 23 & 0xFF``), minus
    E2M1's emax, clamped to [-127, 128], the biased byte shifted back into a float32's exponent,
    floored at the smallest normal; then torchao's packed codes."""
    yg = y.reshape(*y.shape[:-1], -1, 32)
    amax = torch.amax(torch.abs(yg), -1).unsqueeze(-1).to(torch.float32)
    e = ((torch.bitwise_right_shift(amax.view(torch.int32), 23) & 0xFF) - 127) - 2
    biased = (torch.clamp(e, min=-127, max=128) + 127).to(torch.uint8)
    scale = torch.bitwise_left_shift(biased.to(torch.int32), 23).view(torch.float32).clamp(min=2.0 ** -126)
    v = (yg.to(torch.float32) / scale).clamp(-E2M1_MAX, E2M1_MAX).reshape(y.shape)
    return pack_torchao(torchao_codes(v)), biased.squeeze(-1)


def test_torchao_bit_scale_without_its_nan_select_is_a_near_miss():
    """torchao's bit-derived FLOOR scale without its ``where(isnan(amax), 0xFF, ...)``: a NaN amax's
    exponent field (255) becomes byte 253 and the elements are divided by 2^126, which no MX recipe
    does (each makes a NaN block NaN or y / inf): the evaluated scale names the amax where it differs."""
    reason = _near_miss(lambda x: torchao_floor_scale(silu_mul(x)), X)
    assert reason == ("the MX block scale is no MX recipe's: at amax = nan the elements are divided by 8.50706e+37, "
                      "where the nearest recipe (mx_rounding=floor, mx_inf=bits, mx_byte0=min_normal, mx_nan=nan) "
                      "multiplies them by nan (1 of 32642 amax values differ)")
