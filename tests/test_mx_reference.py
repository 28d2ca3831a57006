"""MXFP8 / MXFP4 / per-token FP8 / relu2 reference maths against the OCP definitions in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import float64_reference as f64
from test_reference import DTYPES, make_values

qf = torch.ops.quantfuse
MX = {"mxfp8": ("e4m3", 448.0), "mxfp4": ("e2m1", 6.0)}


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


@settings(max_examples=80, deadline=None)
@given(scheme=st.sampled_from(sorted(MX)), rounding=st.sampled_from(["floor", "rceil", "ceil", "even"]),
       t=st.integers(1, 4), blocks=st.integers(1, 6), dtype=st.sampled_from(DTYPES),
       kind=st.sampled_from(["normal", "outliers", "nan", "inf", "all_equal", "below_eps", "zeros_group", "huge"]),
       seed=st.integers(0, 2**31 - 1))
def test_mx_quant_matches_the_ocp_definition(scheme, rounding, t, blocks, dtype, kind, seed):
    element, max_elem = MX[scheme]
    x = make_values(kind, (t, 32 * blocks), dtype, 32, seed)
    q, s = getattr(qf, f"{scheme}_quant")(x, rounding)
    assert s.dtype == torch.uint8 and s.shape == (t, blocks)
    xb = x.double().unflatten(-1, (-1, 32))
    codes = q.view(torch.uint8) if scheme == "mxfp8" else unpack_e2m1(q)
    assert codes.shape == (t, 32 * blocks)
    codes = codes.unflatten(-1, (-1, 32))
    for i in range(t):
        for b in range(blocks):
            e = f64.mx_exponent(xb[i, b].tolist(), element, rounding)
            if e is None:
                assert s[i, b] == 0xFF
                continue
            assert s[i, b] == e + 127
            scaled = xb[i, b] / 2.0 ** e
            if rounding in ("rceil", "ceil") and e < 127:
                assert scaled.abs().max() <= max_elem  # rceil and ceil never saturate
            want = f64.encode_e4m3fn(scaled.clamp(-448, 448)) if scheme == "mxfp8" else f64.encode_e2m1(scaled)
            assert torch.equal(codes[i, b], want), (i, b)


def test_mxfp4_packs_element_2i_in_the_low_nibble():
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 1.0, -6.0  # codes 2 and 15 with scale 2**0 (rceil: 6/6 = 1)
    q, s = qf.mxfp4_quant(x, "rceil")
    assert s[0, 0] == 127 and q[0, 0] == (2 | (15 << 4))


def test_mx_saturation_and_subnormals():
    # floor rounding can leave amax/2**e up to 2x the element max: it saturates
    x = torch.full((1, 32), 1.0)
    x[0, 0] = 511.0  # floor(log2 511) - 8 = 0 -> 511 > 448 saturates
    q, s = qf.mxfp8_quant(x, "floor")
    assert s[0, 0] == 127 and q[0, 0].float() == 448.0
    q, s = qf.mxfp8_quant(x, "rceil")  # ceil(log2(511/448)) = 1
    assert s[0, 0] == 128 and q[0, 0].float() == 256.0
    # tiny values become E4M3 subnormals (2**-9 steps) of the scaled block
    x = torch.tensor([[448.0] + [3 * 2.0 ** -9] + [0.0] * 30])
    q, s = qf.mxfp8_quant(x, "rceil")
    assert s[0, 0] == 127 and q[0, 1].float() == 3 * 2.0 ** -9


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_token_quant_is_one_group_per_row(dtype):
    x = (torch.randn(3, 2, 384) * 5).to(dtype)
    q, s = qf.per_token_quant_fp8(x)
    assert s.shape == (3, 2, 1)
    codes, scales = f64.group_quant(x, 384, False)
    assert torch.equal(q.view(torch.uint8), codes) and torch.equal(s.double(), scales)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_rounds_once_from_fp32(dtype):
    x = (torch.randn(7, 96) * 20).to(dtype)
    y = qf.relu2(x)
    exact = torch.relu(x.double()) ** 2
    assert torch.equal(y, exact.to(dtype)) or dtype == torch.float32
    assert torch.allclose(y.double(), exact, rtol=torch.finfo(dtype).eps, atol=0)


PAIRS = [(a, s) for a in ("silu_and_mul", "relu2")
         for s in ("per_block_quant", "per_token_quant_fp8", "mxfp8_quant", "mxfp4_quant")]


@pytest.mark.parametrize("act,suffix", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_fused_pair_equals_its_unfused_pair(act, suffix, dtype):
    unfused = {"per_block_quant": "per_token_group_quant_fp8"}.get(suffix, suffix)
    args = {"per_block_quant": (64, True, True), "mxfp8_quant": ("floor",), "mxfp4_quant": ("rceil",)}.get(suffix, ())
    x = (torch.randn(5, 512, generator=torch.Generator().manual_seed(3)) * 4).to(dtype)
    q1, s1 = getattr(qf, f"{act}_{suffix}")(x, *args)
    q2, s2 = getattr(qf, unfused)(getattr(qf, act)(x), *args)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))
    assert torch.equal(s1, s2) and s1.stride() == s2.stride()


def test_mx_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="scale_rounding must be one of"):
        qf.mxfp8_quant(torch.randn(2, 64), "nearest")
    with pytest.raises(ValueError, match="not divisible by the MX block size 32"):
        qf.relu2_mxfp4_quant(torch.randn(2, 48))


@pytest.mark.parametrize("scheme", ["mxfp8_quant", "mxfp4_quant"])
def test_rceil_scale_of_a_block_whose_amax_product_underflows_is_the_smallest(scheme):
    x = torch.zeros(1, 32)
    x[0, 0] = 1.4e-45  # amax * fp32(1/max_elem) rounds to 0
    q, s = getattr(qf, scheme)(x, "rceil")
    assert s[0, 0] == 0  # 2**-127


def _to_blocked_torchao(m: torch.Tensor) -> torch.Tensor:
    """torchao's ``to_blocked`` (mx_formats/utils.py), rewritten here as the second opinion."""
    rows, cols = m.shape
    nr, nc = -(-rows // 128), -(-cols // 4)
    padded = torch.zeros(nr * 128, nc * 4, dtype=m.dtype)
    padded[:rows, :cols] = m
    blocks = padded.view(nr, 128, nc, 4).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1, 32, 16).flatten()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 300), groups=st.integers(1, 13), seed=st.integers(0, 2**16))
def test_swizzle_128x4_is_the_block_scaled_gemm_layout(rows, groups, seed):
    """Scale byte (r, c) lands at tile (r // 128, c // 4), offset (r % 32) * 16 + (r // 32 % 4) * 4
    + c % 4, tiles row-major, zero padding; equal to torchao's to_blocked."""
    from quantfuse.custom_ops.reference import swizzle_128x4

    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 255, (rows, groups), dtype=torch.uint8, generator=g)
    out = swizzle_128x4(s)
    tp, gp = -(-rows // 128) * 128, -(-groups // 4) * 4
    assert out.shape == (tp, gp) and out.is_contiguous()
    flat = out.flatten()
    assert torch.equal(flat, _to_blocked_torchao(s))
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(groups), indexing="ij")
    offset = ((r // 128) * (gp // 4) + c // 4) * 512 + (r % 32) * 16 + (r // 32 % 4) * 4 + c % 4
    assert torch.equal(flat[offset], s)
    written = torch.zeros(tp * gp, dtype=torch.bool)
    written[offset.flatten()] = True
    assert int(flat[~written].count_nonzero()) == 0


@pytest.mark.parametrize("op", ["mxfp8_quant", "mxfp4_quant", "relu2_mxfp4_quant", "silu_and_mul_mxfp8_quant"])
def test_swizzled_scales_are_the_row_major_scales_rearranged(op):
    """is_sf_swizzled_layout changes only the scale layout: same q, scales = swizzle_128x4 of
    the row-major ones (leading dims flattened into rows)."""
    from quantfuse.custom_ops.reference import swizzle_128x4

    x = torch.randn(3, 70, 2 * 192 if op.startswith("silu") else 192, dtype=torch.bfloat16) * 4
    q, s = getattr(qf, op)(x, "rceil")
    qs, ss = getattr(qf, op)(x, "rceil", True)
    assert torch.equal(q.view(torch.uint8), qs.view(torch.uint8))
    assert ss.shape == (256, 8) and s.shape == (3, 70, 6)
    assert torch.equal(ss, swizzle_128x4(s))
