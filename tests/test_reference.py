"""Numerics of the torch reference (the ``torch`` backend) against an independent float64 model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import float64_reference as f64
from quantfuse import reference

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
SPECIAL = ["normal", "outliers", "nan", "inf", "all_equal", "below_eps", "zeros_group", "ties", "huge"]
qf = torch.ops.quantfuse


def make_values(kind: str, shape, dtype, group: int, seed: int) -> torch.Tensor:
    """Fresh random values with one kind of special structure planted in them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(*shape, generator=g, dtype=torch.float32) * (10 ** torch.empty(()).uniform_(-3, 3, generator=g))
    flat = y.view(-1, group)
    pick = int(torch.randint(0, flat.shape[0], (1,), generator=g))
    if kind == "outliers":
        flat.view(-1)[:: max(1, flat.numel() // 7)] *= 1000
    elif kind == "nan":
        flat[pick, int(torch.randint(0, group, (1,), generator=g))] = float("nan")
    elif kind == "inf":
        flat[pick, 3] = float("inf") if seed % 2 else -float("inf")
    elif kind == "all_equal":
        flat[pick] = -2.5
    elif kind == "below_eps":
        flat[pick] = torch.randn(group, generator=g) * 1e-12
    elif kind == "zeros_group":
        flat[pick] = 0.0
    elif kind == "ties":
        # amax = 448 * 2^-4 makes scale exactly 2^-4; the rest sit halfway between
        # adjacent E4M3 values (times the scale), where round-to-nearest-even decides.
        codes = torch.randint(1, 0x7D, (group,), generator=g)
        mids = (f64._VALUES[codes] + f64._VALUES[codes + 1]) / 2
        flat[pick] = (mids * 2.0 ** -4).float()
        flat[pick, 0] = 448 * 2.0 ** -4
    elif kind == "huge":
        flat[pick] *= 1e30 if dtype == torch.float32 else 1.0
    return y.to(dtype)


shapes = st.tuples(st.integers(1, 6), st.integers(1, 4), st.sampled_from([64, 128]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, dtype=st.sampled_from(DTYPES), kind=st.sampled_from(SPECIAL),
       ue8m0=st.booleans(), col_major=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_group_quant_matches_float64_model(shape, dtype, kind, ue8m0, col_major, seed):
    t, groups, group = shape
    y = make_values(kind, (t, groups * group), dtype, group, seed)
    q, s = qf.per_token_group_quant_fp8(y, group, col_major, ue8m0)
    codes, scales = f64.group_quant(y, group, ue8m0)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    assert torch.equal(s.double(), scales) or torch.allclose(s.double(), scales, rtol=0, atol=0, equal_nan=True)
    got = q.view(torch.uint8)
    # NaN (a NaN group, or inf/inf) is any NaN code: the sign of a NaN is the hardware's
    nan = (codes & 0x7F) == 0x7F
    assert bool((got[nan] & 0x7F == 0x7F).all())
    assert torch.equal(got[~nan], codes[~nan])


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 5), d=st.sampled_from([1, 3, 64, 128]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_silu_and_mul_within_one_rounding_of_float64(t, d, dtype, seed):
    x = (torch.randn(t, 2 * d, generator=torch.Generator().manual_seed(seed)) * 4).to(dtype)
    y = qf.silu_and_mul(x)
    exact = f64.silu_and_mul(x)
    assert y.dtype == dtype and y.shape == (t, d)
    # one rounding of a 16-bit result, or a few fp32 roundings (exp, add, div, mul)
    ulps = 4 if dtype == torch.float32 else 1
    ulp = ulps * torch.finfo(dtype).eps * exact.abs() + torch.finfo(dtype).tiny
    assert bool(((y.double() - exact).abs() <= ulp).all())


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES), kind=st.sampled_from(SPECIAL), ue8m0=st.booleans(),
       col_major=st.booleans(), three_d=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_fused_equals_unfused_bit_for_bit(shape, dtype, kind, ue8m0, col_major, three_d, seed):
    t, groups, group = shape
    x = make_values(kind, (t, 2 * groups * group), dtype, group, seed)
    if three_d:
        x = x.unsqueeze(0).expand(2, -1, -1).contiguous()
    q1, s1 = qf.silu_and_mul_per_block_quant(x, group, col_major, ue8m0)
    q2, s2 = qf.per_token_group_quant_fp8(qf.silu_and_mul(x), group, col_major, ue8m0)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))
    assert torch.equal(s1.nan_to_num(-1), s2.nan_to_num(-1)) and s1.stride() == s2.stride()


def test_fused_rounds_the_activation_to_the_input_dtype():
    """Without the intermediate rounding, ~3% of codes would differ from the unfused pair."""
    x = torch.randn(256, 1024, generator=torch.Generator().manual_seed(1), dtype=torch.float32).bfloat16() * 3
    q, s = qf.silu_and_mul_per_block_quant(x, 128)
    codes, scales = f64.group_quant(f64.silu_and_mul(x).float(), 128, False)  # kept in fp32
    unrounded_differ = (q.view(torch.uint8) != codes).float().mean().item()
    assert unrounded_differ > 0.005
    codes_r, _ = f64.group_quant(qf.silu_and_mul(x), 128, False)
    assert torch.equal(q.view(torch.uint8), codes_r)


@pytest.mark.parametrize("lead", [(5,), (2, 3), (1,)])
def test_column_major_scales_layout(lead):
    x = torch.randn(*lead, 512, dtype=torch.bfloat16)
    q_r, s_r = qf.per_token_group_quant_fp8(x, 128)
    q_c, s_c = qf.per_token_group_quant_fp8(x, 128, column_major_scales=True)
    t = math.prod(lead)
    assert s_c.shape == (*lead, 4) and s_r.is_contiguous()
    # a [..., G] view of contiguous [G, ...] storage
    assert s_c.movedim(-1, 0).is_contiguous() and s_c.stride()[-1] == t
    assert torch.equal(s_c, s_r) and torch.equal(q_c.view(torch.uint8), q_r.view(torch.uint8))


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False))
def test_ue8m0_is_the_smallest_power_of_two_not_below(v):
    s = torch.tensor([v], dtype=torch.float32)
    p = reference.ue8m0_ceil(s).double().item()
    assert p >= s.double().item() and p / 2 < s.double().item()
    assert math.frexp(p)[0] == 0.5


def test_ue8m0_differs_from_libm_log2_just_above_a_power_of_two():
    """exp2(ceil(log2(s))) loses one binade here; the exact rule does not."""
    s = torch.tensor([2.0 ** -7], dtype=torch.float32).nextafter(torch.tensor([1.0]))
    assert reference.ue8m0_ceil(s).item() == 2.0 ** -6


def test_e4m3_model_agrees_with_torch_cast_on_all_bf16_values():
    """The float64 model itself is checked against torch's cast on every bf16 in range."""
    bits = torch.arange(0, 2**16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    v = bits.float()
    v = v[v.isfinite() & (v.abs() <= 448)]
    assert torch.equal(f64.encode_e4m3fn(v.double()), v.to(torch.float8_e4m3fn).view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_and_mul_is_eager_f_silu_for_every_gate_value(dtype, monkeypatch):
    """The reference's SiLU is torch's own F.silu, not the formula spelled in torch ops: every
    16-bit gate value (times a fixed up) gives eager's ``F.silu(g) * u`` bits, and ``torch.exp``
    is never called (on the CPU the first ``torch.exp`` of a process can give other last bits on
    part of a tensor, which made the fused op differ from eager on its first call)."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    g = bits.view(dtype)
    g = g[torch.isfinite(g)].reshape(-1, 1)
    u = torch.full_like(g, 1.5)
    want = torch.nn.functional.silu(g) * u
    def no_exp(*args, **kwargs):
        raise AssertionError("the reference spelled silu with torch.exp")
    monkeypatch.setattr(torch, "exp", no_exp)
    got = reference.silu_and_mul(torch.cat([g, u], dim=-1))
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
