"""The CPU-checkable facts behind the CUDA SwigluOai sigmoid's fast and rare paths (csrc/act_quant.cuh,
sigmoid_fast / sigmoid_big_16bit), in exact integer and decimal arithmetic:

- from every r within one ulp of 1/d (what rcp.approx.ftz.f32 returns), one Newton step
  RN(r + r * RN(1 - d r)) (markstein_div(1, d, r)) is RN(1/d) for every fp32 significand of d
  except the all-ones one;
- that exception never changes an fp16 result: no fp16 z has 1 + exp(-z) near 2^25 - 2;
- in the rare range -88.72 < z <= -87 the four bf16 values of z have e^z far from every bf16
  rounding boundary, so the rare path's approximation (within 2^-17) rounds as torch does.
The GPU test (tests/gpu/test_swiglu_oai_gpu.py) checks the kernels on every 16-bit z."""

from __future__ import annotations

from decimal import Decimal, getcontext

import numpy as np
import torch

P47 = np.int64(1) << 47


def _rne_shift(x, k):
    """x / 2^k rounded to the nearest integer, ties to even (int64, any sign)."""
    a = x >> k
    f = x - (a << k)
    h = np.int64(1) << (k - 1)
    return a + ((f > h) | ((f == h) & (a & 1 == 1)))


def _round24(e):
    """The integer e rounded to 24 significant bits (fp32's), in the same units."""
    out = e.copy()
    big = np.abs(e) >= (1 << 24)
    eb = e[big]
    shift = np.floor(np.log2(np.abs(eb).astype(np.float64))).astype(np.int64) - 23
    for s in np.unique(shift):
        m = shift == s
        eb[m] = _rne_shift(eb[m], int(s)) << int(s)
    out[big] = eb
    return out


def _newton(D, R):
    """RN(r + r * RN(1 - d r)) in units of 2^-24 for d = D 2^-23 in (1, 2), r = R 2^-24, or -1 where
    the result is below 0.5 (a binade below every RN(1/d) here)."""
    E = _round24(D * R - P47)  # RN(d r - 1), units 2^-47: |d r - 1| < 2^-22, no exponent below 2^-47 matters
    T = E * R  # r * RN(d r - 1), units 2^-71, exact
    a = T >> 47
    b = T - (a << 47)
    n = np.where(b > 0, R - a - 1, R - a)  # r - T = n + f / 2^47 (units 2^-24)
    f = np.where(b > 0, P47 - b, 0)
    h = np.int64(1) << 46
    q = n + ((f > h) | ((f == h) & (n & 1 == 1)))
    return np.where(n >= (1 << 23), q, -1)


def test_one_newton_step_from_a_faithful_reciprocal_is_correctly_rounded():
    D = np.arange((1 << 23) + 1, 1 << 24, dtype=np.int64)  # every significand of d but 1
    q, rem = np.divmod(P47, D)  # 1/d = (q + rem / D) 2^-24
    rn = q + ((2 * rem > D) | ((2 * rem == D) & (q & 1 == 1)))
    exceptions = []
    for c in (-1, 0, 1):  # every r within one ulp of 1/d is one of these
        R = rn + c
        within = np.abs((R - q) * D - rem) <= D  # |r - 1/d| <= 1 ulp
        bad = within & (_newton(D, R) != rn)
        exceptions += [(int(d), c) for d in D[bad]]
        assert within.sum() > (1 << 21)
    assert exceptions == [((1 << 24) - 1, -1)], exceptions
    # d = 1: r in {1 - 2^-24, 1, 1 + 2^-23} all give 1 (by hand: RN(1 - 2^-48) and RN(1 - 2^-46))


def _all(dtype):
    return torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype).double()


def test_fp16_never_meets_the_newton_exception():
    """The exception (d = 2^k (2 - 2^-23), RN(1/d) = 2^-(k+1) (1 + 2^-23), the step: 2^-(k+1)) changes
    the rounded value only where 2^-(k+1) is half the smallest subnormal: fp16's 2^-25 (d = 2^25 - 2);
    bf16's 2^-134 is out of the fast range (1/d > 2^-126)."""
    z = _all(torch.float16)
    z = z[z.abs() < 87]
    d = 1 + torch.exp(-z)
    assert ((d - (2.0 ** 25 - 2)).abs() / 2.0 ** 25).min() > 2.0 ** -20  # far beyond expf's 2 ulp


def test_bf16_rare_range_values_round_like_torch():
    getcontext().prec = 50
    z = _all(torch.bfloat16)
    rare = sorted(float(v) for v in z if -88.7228394 < v <= -87)
    assert rare == [-88.5, -88.0, -87.5, -87.0]
    quantum = Decimal(2) ** -133  # bf16's spacing below 2^-125
    for v in rare:
        e = Decimal(v).exp()
        k = e / quantum
        boundary = (k - Decimal(0.5)).to_integral_value() + Decimal(0.5)  # nearest odd multiple of quantum / 2
        assert abs(k - boundary) / k > Decimal(2) ** -10, v
        # and above the fp16 half-subnormal 2^-25 by far: fp16 rounds to +0
        assert e < Decimal(2) ** -100
