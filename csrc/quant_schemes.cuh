// Quantisation schemes of the fused kernels, as policies with one interface:
//
//   kBits              bits per encoded element (8: FP8 E4M3, 4: FP4 E2M1)
//   kVectors           default 16-byte vectors per thread per group (measured best on
//                      the H100, benchmarks/sweep_vectors.py)
//   kEvictFirstL2s     inputs up to this many L2 sizes are loaded evict-first
//   Scale              type of one stored scale (fp32, or an E8M0 byte)
//   State prepare<DT>(a, rr)  per-group state from the group's amax (NaN-propagated |y| max)
//                      and the call's recipe rr (act_quant.h ScaleRecipe; MX: its mx fields)
//   encode<N, DT>(y, yp, st, w, rr)  N activation values -> N * kBits / 8 little-endian
//                      bytes in w; y in fp32, and for 16-bit input dtypes DT also as
//                      packed pairs yp (element 2i in the low half), exactly equal
//   scale(st)          the value stored for the group
//
// Numerics are reference.py's bit for bit (docs/numerics.md, and the MX rules in
// reference.mx_exponents / mx_multipliers / mx_quantize).
#pragma once

#include "act_quant.cuh"

#include <type_traits>

namespace quantfuse {

// Which scale step an Fp8Scaled kernel computes (launch_unit.cuh fp8_step): the default one of the
// op parameters' recipes (max(amax, 1e-10) / 448 in fp32, then y / s with the clamp: group_scale),
// with fp32 or exact UE8M0 scales, compiled as constants; or any dynamic recipe, every field of it
// read at run time (ScaleRecipe: recipe_scale), in one more kernel: the runtime recipe in the
// default kernels changed their register counts (docs/decisions/022-default-fp8-kernels-keep-their-code.md).
enum class Fp8Step { kDefault, kDefaultUe8m0, kRecipe };

// FP8 E4M3 with an fp32 scale per group (per token when the group is the row). Per element, in a
// group whose scale is in the fast range: y / s by markstein_div, or y * r where that is the
// result (a power-of-two scale, or the recipe y * (1 / s): one FMUL; in the per-token kernels
// kRecipe's markstein_div without its correction, State::rc). Other groups (a scale of 0,
// inf or NaN; kRecipe: outside [2^-64, 2^126]) take a true division per element. The
// clamp is SATFINITE (e4m3x2): a recipe without it runs here only where torch's cast saturates by
// itself (catalog.E4M3_CAST_SATURATES), so the bits are the same.
// Fp8Scaled's kRow argument at the per-token kernels' calls
constexpr bool kRowKernel = true;

template <Fp8Step K>
struct Fp8Scaled {
  static constexpr bool kRecipe = K == Fp8Step::kRecipe;
  static constexpr bool UE8M0 = K == Fp8Step::kDefaultUe8m0;
  static constexpr int kBits = 8, kVectors = 1, kEvictFirstL2s = 1;
  using Scale = float;
  // r = RN(1/s) (a power-of-two scale's exact from its bits). kRecipe: fast (the scale is in the
  // fast range), mul (y * r is the result there: a power-of-two scale, or the recipe y * (1 / s)),
  // and rc, the factor of the Markstein correction for the per-token kernels: r where the recipe
  // divides, 0 where it multiplies, which leaves q0 = RN(y * r) with y's zero sign
  // (-(+0) * 0 + -0 is -0).
  //
  // The kernels want different encode loops (kRow: the per-token kernels' call): a group kernel
  // issues an instruction every cycle it can, so a recipe whose scales are products takes its own
  // one-FMUL loop there; the per-token kernel unrolls whole rows, and a loop per form made its
  // code too large for the instruction cache (its warps stalled on instruction fetch), so one
  // loop, markstein_div with rc, serves both forms there.
  struct State { float s, r, rc; bool fast, mul; };
  template <typename DT, bool kRow = false>
  static __device__ __forceinline__ State prepare(float amax, const ScaleRecipe& rr) {
    if constexpr (!kRecipe) {
      const float s = group_scale<UE8M0>(amax);
      const float r = isfinite(s) ? group_recip<UE8M0>(s) : 0.0f;
      return {s, r, r, false, false};
    } else {
      const float s = recipe_scale<DT, kRow>(amax, rr);
      const bool fast = s >= kFastScaleMin && s <= kFastScaleMax;
      const bool mul_inv = rr.apply == kApplyMulInv;
      // kApplyMulRatio: y * RN(RN(1 / a) * 448), a the floored amax (torch's 448 / a; the recipe's
      // floor is at the amax or absent: catalog.Recipe); the scale s is a * fp32(1/448) as ever
      const bool ratio = rr.apply == kApplyMulRatio;
      const float qr = ratio ? __fmul_rn(__frcp_rn(nan_max(amax, rr.amax_floor)), kFp8Max) : 0.0f;
      if constexpr (kRow) {
        // a power-of-two scale's RN(1/s) is exact, and markstein_div's correction then adds 0
        const float r = ratio ? qr : __frcp_rn(s);
        return {s, r, mul_inv || ratio ? 0.0f : r, fast, false};
      } else {
        if (ratio) return {s, qr, qr, fast, true};
        // a UE8M0 recipe's scale is a power of two unless a floor after the rounding set it
        // (ue8m0_after_floor=False: max(2^k, eps)); that one divides as any fp32 scale
        const bool pow2 = rr.ue8m0 != kUe8m0None && (__float_as_uint(s) & 0x7fffffu) == 0;
        const float r = pow2 && fast ? group_recip<true>(s) : __frcp_rn(s);
        return {s, r, r, fast, pow2 || mul_inv};
      }
    }
  }
  static __device__ __forceinline__ Scale scale(const State& st) { return st.s; }
  template <int N, typename DT, bool kRow = false>
  static __device__ __forceinline__ void encode(const float* y, const uint32_t*, const State& st, uint32_t* w,
                                                const ScaleRecipe& rr) {
    static_assert(N % 4 == 0, "fp8 words hold 4 elements");
    if constexpr (!kRecipe) {
      if (isfinite(st.s)) {
        encode_as<N>(y, w, [&](float v) { return div_by_scale<UE8M0>(v, st.s, st.r); });
      } else {  // NaN / inf scale: true divisions (NaN or 0 results)
        encode_as<N>(y, w, [&](float v) { return __fdiv_rn(v, st.s); });
      }
    } else if (kRow && st.fast) {
      encode_as<N>(y, w, [&](float v) { return markstein_div(v, st.s, st.r, st.rc); });
    } else if (!kRow && st.fast && st.mul) {
      encode_as<N>(y, w, [&](float v) { return div_by_scale<true>(v, st.s, st.r); });
    } else if (!kRow && st.fast) {
      encode_as<N>(y, w, [&](float v) { return div_by_scale<false>(v, st.s, st.r); });
    } else {
      // a scale outside the fast range (rare; markstein_div's residual can be NaN there): true
      // divisions or products, one unrolled loop for both forms, the fewer copies the fewer
      // registers the fast ones keep live
      const bool div = rr.apply == kApplyDiv;
      encode_as<N>(y, w, [&](float v) { return div ? __fdiv_rn(v, st.s) : __fmul_rn(v, st.r); });
    }
  }
  // w: the e4m3 codes of f(y[i]), four a word
  template <int N, typename F>
  static __device__ __forceinline__ void encode_as(const float* y, uint32_t* w, F f) {
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      w[i / 4] = e4m3x2(f(y[i]), f(y[i + 1])) | (e4m3x2(f(y[i + 2]), f(y[i + 3])) << 16);
    }
  }
};

// ---------------------------------------------------------------------------
// OCP microscaling (block 32, E8M0 scale byte = exponent + 127).
// ---------------------------------------------------------------------------
// Shared exponent e of a block from a finite amax's bits (reference.mx_exponents):
//  rceil: ceil(log2(amax * fp32(1/max_elem))), a product that underflows to 0 -> -127;
//  floor: floor(log2(amax)) - emax_elem; ceil: ceil(log2(amax)) - emax_elem; even: floor(log2(amax'))
//  - emax_elem, amax' rounded half up to the element's mant mantissa bits (a carry into the
//  exponent field; up to 2^128); zero / subnormal amax -> -127 (after the clamp);
// clamped to [-127, 127]. NaN and inf blocks are the caller's (Mx::prepare).
__device__ __forceinline__ int mx_exponent(float amax, MxRoundingCode rounding, float inv_max, int emax, int mant) {
  int e;
  if (rounding == kMxRoundingRceil) {
    const uint32_t p = __float_as_uint(__fmul_rn(amax, inv_max));
    const int pe = int(p >> 23), pm = int(p & 0x7fffffu);
    // subnormal product m * 2^-149: above 2^-127 -> -126, else -127 (after the clamp)
    e = pe > 0 ? pe - 127 + (pm != 0) : (pm > 0x400000 ? -126 : -127);
  } else {
    const uint32_t a = __float_as_uint(amax);
    const int ae = int((rounding == kMxRoundingEven ? a + (1u << (22 - mant)) : a) >> 23);
    e = ae == 0 ? -127 : ae - 127 - emax + int(rounding == kMxRoundingCeil && (a & 0x7fffffu) != 0);
  }
  return min(max(e, -kE8m0Bias), kE8m0Bias);
}

// E2M1 code (sign in bit 3) of a scaled value v, nearest-even, saturating at 6:
// below 2 the grid step is 0.5, below 4 it is 1, else 2, so the code is
// rint(|v| * m) + base with (m, base) = (2, 0), (1, 2), (0.5, 4); the product is exact,
// and adding 1.5 * 2^23 rounds it to an integer (nearest-even) in the low mantissa bits.
__device__ __forceinline__ uint32_t e2m1_code(float v) {
  const float a = fminf(fabsf(v), 6.0f);
  const float m = a < 2.0f ? 2.0f : (a < 4.0f ? 1.0f : 0.5f);
  const uint32_t base = a < 2.0f ? 0u : (a < 4.0f ? 2u : 4u);
  const uint32_t code = __float_as_uint(__fmaf_rn(a, m, 12582912.0f)) - 0x4B400000u + base;
  return code | ((__float_as_uint(v) >> 28) & 8u);
}

// E2M1 codes of a pair of scaled values a = v * 2^-e held in 16-bit float lanes
// (L: the lane format, BF16 or F16), exact in it. For |a| <= 6 the grid step s
// is 0.5 below 2, 1 below 4, else 2; C = 1.5 * 2^M * s (M mantissa bits) has ulp s
// and |a| + C stays in C's binade, so the 16-bit add rounds |a| to the grid
// (nearest-even) and |t| - C (as integers) counts the steps n; the code is
// n + 2 * (E - bias) for the exponent E of max(|a|, 1). m = 2^(E - bias) comes from the
// exponent bits alone (an integer max per lane), C = 1.5 * 2^(M-1) * m, and t = a + C
// carries a's sign (one fma with m signed), so bits(t) - bits(C) is the code plus the
// sign in bit 15, and m >> (M-1) = 2E. kSaturate clamps |a| to 6 first (floor scales
// leave |a| up to 8; rceil scales never exceed 6 for 16-bit inputs). Integer lane
// maths never borrows or carries across the lanes. Returns each lane's code in bits
// 0-2 and sign in bit 15 (pack_e2m1x8 assembles the nibbles).
template <typename L, bool kSaturate>
__device__ __forceinline__ uint32_t e2m1x2(uint32_t a_bits) {
  using T = typename L::Pair;
  constexpr int M = L::kMant;
  constexpr uint32_t kLanes = 0x10001u;
  constexpr uint32_t kExpMask = ((1u << (15 - M)) - 1) << M;
  constexpr uint32_t kOne = uint32_t(L::kBias) << M;
  constexpr uint32_t kOffset = ((M - 1) << M) + (1u << (M - 1)) + 2 * L::kBias;
  if constexpr (kSaturate) a_bits = L::bits(__hmax2(__hmin2(L::pair(a_bits), L::splat(6.0f)), L::splat(-6.0f)));
  const uint32_t m = __vmaxu2(a_bits & kExpMask * kLanes, kOne * kLanes);
  const uint32_t m_signed = m | (a_bits & 0x80008000u);
  const T t = __hfma2(L::pair(m_signed), L::splat(1.5f * float(1 << (M - 1))), L::pair(a_bits));
  return L::bits(t) - m - kOffset * kLanes + (m >> (M - 1));
}

// The same for fp32 values v0, v1 (already scaled) exact in fp16 (a bf16 or fp16
// activation times 2^-e: at most 11 significant bits, and |v| < 8; anything below
// fp16's normal range is far below 0.25 and codes 0 with its sign either way).
template <bool kSaturate>
__device__ __forceinline__ uint32_t e2m1x2_f16(float v0, float v1) {
  return e2m1x2<F16, kSaturate>(F16::pack_rn(v0, v1));
}

// The same for a bf16 pair v (unscaled) and its scale 2^-e as a bf16 pair f2, in bf16x2
// arithmetic: v * 2^-e is exact (a multiply by a power of two, no subnormal result:
// see Mx::State::tiny).
template <bool kSaturate>
__device__ __forceinline__ uint32_t e2m1x2_bf16(uint32_t v, uint32_t f2) {
  return e2m1x2<BF16, kSaturate>(BF16::mul2(v, f2));
}

// Eight E2M1 codes (as four e2m1x2 results, element 2i in pair i) -> one word,
// element 0 in the low nibble.
__device__ __forceinline__ uint32_t pack_e2m1x8(uint32_t p0, uint32_t p1, uint32_t p2, uint32_t p3) {
  // the low byte of p + (p >> 12) + (p >> 24) is the pair's byte: code 0, sign 0 (bit
  // 15), code 1 (bits 16-18), sign 1 (bit 31); the terms share no bit, so the adds
  // are ors (two LEA.HI)
  auto byte = [](uint32_t p) { return p + (p >> 12) + (p >> 24); };
  return __byte_perm(__byte_perm(byte(p0), byte(p1), 0x0040), __byte_perm(byte(p2), byte(p3), 0x0040), 0x5410);
}

// kSaturate: the rounding lets scaled values pass the element's largest (catalog.MX_SATURATING:
// floor, even), so MXFP4's lane paths clamp first; the other MX fields at run time (MxArgs).
template <int kElemBits, bool kSaturate>
struct Mx {
  static_assert(kElemBits == 8 || kElemBits == 4, "MXFP8 (E4M3) or MXFP4 (E2M1)");
  static constexpr int kBits = kElemBits;
  static constexpr int kVectors = kElemBits == 8 ? 1 : 2;  // MXFP4: 2 (+7-15 points)
  // MXFP4 gains from the hint above the L2 size too (H100, 59-134 MB inputs: 91-94% -> 100-103%
  // of copy bandwidth); only the largest inputs (235 MB and up) lose, as for every scheme.
  static constexpr int kEvictFirstL2s = kElemBits == 8 ? 1 : 3;
  static constexpr int kEmax = kElemBits == 8 ? kFp8Emax : kFp4Emax;  // exponent of the largest binade
  static constexpr int kMant = kElemBits == 8 ? kFp8Mant : kFp4Mant;
  using Scale = uint8_t;
  // f: what the elements are multiplied by (reference.mx_multipliers); bad: NaN in the block
  // (encode_nan_block; div_inf: MxNan.DIV_INF); tiny: amax < 2^-121, where a subnormal element
  // could still code above 0 (MXFP4's bf16x2 path, whose arithmetic may flush subnormals, is
  // skipped for such blocks and for inf blocks)
  struct State { float f; uint32_t byte; bool bad, div_inf, inf, tiny; };
  // rr.mx: the MX recipe fields (act_quant.h MxArgs)
  template <typename DT>
  static __device__ __forceinline__ State prepare(float amax, const ScaleRecipe& rr) {
    const MxArgs& a = rr.mx;
    const float inv_max = kElemBits == 8 ? 1.0f / kFp8Max : 1.0f / kFp4Max;
    const bool bad = __float_as_uint(amax) > 0x7f800000u;  // NaN in the block
    // an inf block (inf, no NaN) gets e = 127 as eager's clamp of an infinite exponent
    // (MxInf.CLAMP, EXP2) or 128 - emax from inf's exponent field (MxInf.BITS): its inf elements
    // saturate, the rest are y * 2^-e
    const bool inf = __float_as_uint(amax) == 0x7f800000u;
    const int e = inf ? (a.inf == kMxInfBits ? kE8m0Bias + 1 - kEmax : kE8m0Bias)
                      : mx_exponent(amax, a.rounding, inv_max, kEmax, kMant);
    // 2^-e; a finite block has e <= 126, so 127 - e >= 1 stays a normal exponent; an inf
    // block's 2^-127 is subnormal (0x00400000), which __fmul_rn keeps (no ftz here), or with
    // MxInf.EXP2 the device's exp2(-127.) as torch computes it (ScaleRecipe::mx_device_factor)
    float f = e == kE8m0Bias ? (a.inf == kMxInfExp2 ? rr.mx_device_factor : __uint_as_float(0x00400000u))
                             : __uint_as_float(uint32_t(127 - e) << 23);
    if (e == -kE8m0Bias && a.byte0 != kMxByte0Exact) {
      // MxByte0.MIN_NORMAL: 1 / fp32's smallest normal, 2^126; MxByte0.ONE: 1; MxByte0.EXP2 / POW:
      // RN(1 / d), d the device's 2^-127 as torch computes it (ScaleRecipe::mx_device_factor). Such a
      // block is tiny (State::tiny: MXFP4's exact path), so each element is y * f rounded once
      f = a.byte0 == kMxByte0One ? 1.0f
          : a.byte0 == kMxByte0MinNormal ? __uint_as_float(uint32_t(127 + kE8m0Bias - 1) << 23)
                                         : rr.mx_device_factor;
    }
    return {f, bad ? uint32_t(kE8m0Nan) : uint32_t(e + kE8m0Bias), bad, a.nan == kMxNanDivInf, inf,
            __float_as_uint(amax) < (6u << 23) || inf};
  }
  static __device__ __forceinline__ Scale scale(const State& st) { return Scale(st.byte); }
  template <int N, typename DT>
  static __device__ __forceinline__ void encode(const float* y, const uint32_t* yp, const State& st,
                                                uint32_t* w, const ScaleRecipe&) {
    if (st.bad) {
      encode_nan_block<N>(y, st, w);
      return;
    }
    if constexpr (kElemBits == 8) {
      static_assert(N % 4 == 0, "fp8 words hold 4 elements");
#pragma unroll
      for (int i = 0; i < N; i += 4) {
        // y * 2^-e is exact; SATFINITE is the reference's clamp to +-448 then cast
        w[i / 4] = e4m3x2(__fmul_rn(y[i], st.f), __fmul_rn(y[i + 1], st.f)) |
                   (e4m3x2(__fmul_rn(y[i + 2], st.f), __fmul_rn(y[i + 3], st.f)) << 16);
      }
    } else if (std::is_same_v<DT, BF16> && N % 8 == 0 && !st.tiny) {
      // all in bf16x2: y * 2^-e is exact (a bf16 multiply by a power of two), and no
      // operand that matters is subnormal (see State::tiny)
      const uint32_t f2 = (__float_as_uint(st.f) >> 16) * 0x10001u;
#pragma unroll
      for (int i = 0; i < N; i += 8) {
        uint32_t p[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) p[k] = e2m1x2_bf16<kSaturate>(yp[i / 2 + k], f2);
        w[i / 8] = pack_e2m1x8(p[0], p[1], p[2], p[3]);
      }
    } else if constexpr (DT::kPacked && N % 8 == 0) {
      // inf blocks saturate, and a byte-0 block's factor need not be a power of two (MxByte0.EXP2:
      // y * f is then not exact in fp16, as e2m1x2_f16 needs): the exact path
      if (st.inf || st.byte == 0u) {
        encode_fp4_exact<N>(y, st, w);
        return;
      }
#pragma unroll
      for (int i = 0; i < N; i += 8) {
        uint32_t p[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          p[k] = e2m1x2_f16<kSaturate>(__fmul_rn(y[i + 2 * k], st.f), __fmul_rn(y[i + 2 * k + 1], st.f));
        }
        w[i / 8] = pack_e2m1x8(p[0], p[1], p[2], p[3]);
      }
    } else {
      encode_fp4_exact<N>(y, st, w);
    }
  }
  // MXFP4 codes one fp32 element at a time, saturating: right for any finite block and input dtype
  template <int N>
  static __device__ __forceinline__ void encode_fp4_exact(const float* y, const State& st, uint32_t* w) {
    static_assert(N % 4 == 0, "fp4 half-words hold 4 elements");
#pragma unroll
    for (int i = 0; i < N; i += 8) {
      uint32_t v = 0;
#pragma unroll
      for (int k = 0; k < 8 && i + k < N; ++k) v |= e2m1_code(__fmul_rn(y[i + k], st.f)) << (4 * k);
      w[i / 8] = v;
    }
  }
  // A NaN block (scale byte 0xFF): MxNan.NAN all NaN (MXFP8) / codes 0 (MXFP4); MxNan.DIV_INF
  // y * 0 (y / inf: +-0, NaN for inf and NaN elements), NaN coding 0 in MXFP4 (E2M1 has no NaN)
  template <int N>
  static __device__ __forceinline__ void encode_nan_block(const float* y, const State& st, uint32_t* w) {
    static_assert(N % 4 == 0, "fp8 words / fp4 half-words hold 4 elements");
    if constexpr (kElemBits == 8) {
#pragma unroll
      for (int i = 0; i < N; i += 4) {
        w[i / 4] = !st.div_inf ? 0x7f7f7f7fu
                               : e4m3x2(__fmul_rn(y[i], 0.0f), __fmul_rn(y[i + 1], 0.0f)) |
                                     (e4m3x2(__fmul_rn(y[i + 2], 0.0f), __fmul_rn(y[i + 3], 0.0f)) << 16);
      }
    } else {
#pragma unroll
      for (int i = 0; i < N; i += 8) {
        uint32_t v = 0;
#pragma unroll
        for (int k = 0; k < 8 && i + k < N; ++k) {
          const float z = __fmul_rn(y[i + k], 0.0f);
          v |= (st.div_inf && z == z ? (__float_as_uint(z) >> 28) & 8u : 0u) << (4 * k);
        }
        w[i / 8] = v;
      }
    }
  }
};

// Static per-tensor FP8 (catalog.FP8_STATIC): q = e4m3(clamp(y / scale or y * RN(1/scale), -448,
// 448): the recipe's apply form A) with the one given fp32 scale, read by the kernel; no amax, no
// scale output (without the clamp: as Fp8Scaled).
// kApplyDiv: y / s is correctly rounded. For 2^-60 <= |s| <= 2^60 (fast, a grid-uniform branch)
// y is first clamped to +-lim = +-RN(464 |s|), NaN kept (any |y| > lim has |y / s| > 463.9, which
// saturates to 448 exactly as lim / s does), so q0 = RN(y * RN(1/s)) cannot overflow and
// markstein_div gives RN(y / s) (1/s is normal; quotients that underflow are far below e4m3's
// smallest step and keep y's sign). Other scales (0, subnormal, huge, inf, NaN) take true
// divisions, as the fp32-scale path does for non-finite ones.
// kApplyMulInv: y * RN(1/s) for every scale (what torch computes), one FMUL.
template <ApplyCode A>
struct Fp8Static {
  static constexpr int kBits = 8;
  struct State { float s, r, lim; bool fast; };
  static __device__ __forceinline__ State prepare(float s) {
    if constexpr (A == kApplyMulInv) {
      return {s, __frcp_rn(s), 0.0f, true};
    } else {
      // Positive scales only: markstein_div keeps the sign of a zero numerator through r, which a
      // negative divisor flips the wrong way (+0 / -s must be -0); other scales divide exactly.
      const float a = fabsf(s);
      const bool fast = s >= 0x1p-60f && s <= 0x1p60f;
      return {s, fast ? __frcp_rn(s) : 0.0f, __fmul_rn(a, kFp8Overflow), fast};
    }
  }
  static __device__ __forceinline__ float clamp(float y, float lim) {
    float r;
    asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(nan_max(y, -lim)), "f"(lim));
    return r;
  }
  template <int N>
  static __device__ __forceinline__ void encode(const float* y, const State& st, uint32_t* w) {
    static_assert(N % 4 == 0, "fp8 words hold 4 elements");
    float v[N];
    if constexpr (A == kApplyMulInv) {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = __fmul_rn(y[i], st.r);
    } else if (st.fast) {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = markstein_div(clamp(y[i], st.lim), st.s, st.r);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = __fdiv_rn(y[i], st.s);
    }
#pragma unroll
    for (int i = 0; i < N; i += 4) w[i / 4] = e4m3x2(v[i], v[i + 1]) | (e4m3x2(v[i + 2], v[i + 3]) << 16);
  }
};

// Store NB bytes of the little-endian byte stream w starting at byte `first` (a
// multiple of NB) to p, in one store instruction.
template <int NB>
__device__ __forceinline__ void store_bytes(uint8_t* p, const uint32_t* w, int first) {
  if constexpr (NB == 16) {
    *reinterpret_cast<uint4*>(p) = make_uint4(w[first / 4], w[first / 4 + 1], w[first / 4 + 2], w[first / 4 + 3]);
  } else if constexpr (NB == 8) {
    *reinterpret_cast<uint2*>(p) = make_uint2(w[first / 4], w[first / 4 + 1]);
  } else if constexpr (NB == 4) {
    *reinterpret_cast<uint32_t*>(p) = w[first / 4];
  } else {
    static_assert(NB == 2, "2, 4, 8 or 16 bytes");
    *reinterpret_cast<uint16_t*>(p) = uint16_t(w[first / 4] >> (8 * (first % 4)));
  }
}

}  // namespace quantfuse
