// Shared device code of the kernel family: input dtypes, activations, FP8 scale maths,
// and the unfused activation kernel. The quantisation schemes are in
// quant_schemes.cuh, the fused kernels in group_kernel.cuh and token_kernel.cuh.
//
// Numerics follow docs/numerics.md and quantfuse/custom_ops/reference.py bit
// for bit: every step is an explicitly rounded fp32 operation (__fadd_rn,
// __fdiv_rn, __fmul_rn) so that nvcc's default FMA contraction cannot merge steps
// that torch runs as separate kernels; expf is the accurate libdevice one (no
// --use_fast_math); amax propagates NaN as torch's amax does.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "act_quant.h"  // ActArgs
#include "quantfuse_catalog.h"

namespace quantfuse {

constexpr int kThreads = 256;  // threads per block of the group and activation kernels (per-token: kTokenThreads)

// ---------------------------------------------------------------------------
// Input dtypes. Elements are handled as raw bits (Storage) in registers so a
// 16-byte vector load can be reinterpreted without unions of class types.
// 16-bit types also work on packed pairs (uint32_t, element 2i in the low half):
// pack_rn rounds two fp32 values to the dtype with RNE in one F2FP instruction,
// max2 / min2 a NaN-propagating max / min of two pairs (one HMNMX2.NAN for two elements),
// amax2 the same of |pair|, mul2 / add2 one rounding of the exact products / sums (mul.rn,
// add.rn), splat
// a constant pair; kMant / kBias describe the format (E2M1 lane rounding).
// ---------------------------------------------------------------------------
struct F32 {
  using Storage = uint32_t;
  static constexpr bool kPacked = false;
  static __device__ __forceinline__ float to_float(Storage b) { return __uint_as_float(b); }
  static __device__ __forceinline__ Storage from_float(float v) { return __float_as_uint(v); }
  static __device__ __forceinline__ float round(float v) { return v; }
};
// The pair operations of both 16-bit types (T2: __half2 or __nv_bfloat162).
template <typename T2, int MANT, int BIAS>
struct Packed16 {
  using Storage = uint16_t;
  using Pair = T2;
  static constexpr bool kPacked = true;
  static constexpr int kMant = MANT, kBias = BIAS;
  static __device__ __forceinline__ T2 pair(uint32_t p) { return *reinterpret_cast<const T2*>(&p); }
  static __device__ __forceinline__ uint32_t bits(T2 h) { return *reinterpret_cast<const uint32_t*>(&h); }
  static __device__ __forceinline__ uint32_t abs2(uint32_t p) { return bits(__habs2(pair(p))); }
  static __device__ __forceinline__ uint32_t max2(uint32_t acc, uint32_t p) { return bits(__hmax2_nan(pair(acc), pair(p))); }
  static __device__ __forceinline__ uint32_t min2(uint32_t acc, uint32_t p) { return bits(__hmin2_nan(pair(acc), pair(p))); }
  static __device__ __forceinline__ uint32_t amax2(uint32_t acc, uint32_t p) { return max2(acc, abs2(p)); }
  static __device__ __forceinline__ uint32_t mul2(uint32_t a, uint32_t b) { return bits(__hmul2(pair(a), pair(b))); }
  static __device__ __forceinline__ uint32_t add2(uint32_t a, uint32_t b) { return bits(__hadd2_rn(pair(a), pair(b))); }
};
struct F16 : Packed16<__half2, 10, 15> {
  static __device__ __forceinline__ float to_float(Storage b) { return __half2float(__ushort_as_half(b)); }
  static __device__ __forceinline__ Storage from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ float round(float v) { return __half2float(__float2half_rn(v)); }
  static __device__ __forceinline__ uint32_t pack_rn(float a, float b) { return bits(__floats2half2_rn(a, b)); }
  static __device__ __forceinline__ Pair splat(float v) { return __float2half2_rn(v); }
  static __device__ __forceinline__ float lo(uint32_t p) { return __half2float(__ushort_as_half(uint16_t(p))); }
  static __device__ __forceinline__ float hi(uint32_t p) { return __half2float(__ushort_as_half(uint16_t(p >> 16))); }
};
struct BF16 : Packed16<__nv_bfloat162, 7, 127> {
  // bf16 -> fp32 is exact: the bits are the top half of the fp32 word.
  static __device__ __forceinline__ float to_float(Storage b) { return __uint_as_float(uint32_t(b) << 16); }
  static __device__ __forceinline__ Storage from_float(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  static __device__ __forceinline__ float round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
  static __device__ __forceinline__ uint32_t pack_rn(float a, float b) { return bits(__floats2bfloat162_rn(a, b)); }
  static __device__ __forceinline__ Pair splat(float v) { return __float2bfloat162_rn(v); }
  static __device__ __forceinline__ float lo(uint32_t p) { return __uint_as_float(p << 16); }
  static __device__ __forceinline__ float hi(uint32_t p) { return __uint_as_float(p & 0xffff0000u); }
};

// Programmatic dependent launch (sm_90+). Every kernel of the family starts with this,
// before its first global-memory access: griddepcontrol.wait blocks until the grids this
// one depends on have completed and their writes are visible (a no-op when the launch
// carried no programmatic dependency, and on older archs, where neither instruction
// exists), then launch_dependents lets the next PDL-launched kernel be scheduled onto
// free SM slots now. That kernel runs its own wait before touching memory, so the early
// trigger only hides its launch and block start-up behind this grid's work; it cannot
// read what this grid has not yet written. Every CTA of a grid must have started before
// dependents launch, so they never take slots this grid still needs.
__device__ __forceinline__ void pdl_wait_and_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// NaN-propagating max (torch.amax / clamp_min semantics); fmaxf would drop NaN.
// One FMNMX.NAN (PTX max.NaN.f32, sm_80+).
__device__ __forceinline__ float nan_max(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

// n / d from an approximate reciprocal r of d: q0 = RN(n * r) plus one Markstein
// correction, q0 - r * RN(d * q0 - n). The residual is taken negated so that n = -0
// gives -0 (the textbook RN(n - d * q0) gives +0 and needs a copysign per element).
// Correctly rounded when r is close enough to 1/d and nothing over- or underflows;
// the callers say why that holds for their operands. rc: the correction's factor (r, or 0 for
// q0 alone: Fp8Scaled's y * (1 / s) recipes).
__device__ __forceinline__ float markstein_div(float n, float d, float r, float rc) {
  const float q0 = __fmul_rn(n, r);
  return __fmaf_rn(-__fmaf_rn(d, q0, -n), rc, q0);
}
__device__ __forceinline__ float markstein_div(float n, float d, float r) { return markstein_div(n, d, r, r); }

// ---------------------------------------------------------------------------
// silu(g) = g / (1 + expf(-g)) exactly as torch's CUDA silu: accurate expf (no
// fast math), the add rounded on its own, a correctly rounded division. silu_exact
// is that formula; silu_fast computes the same values with fewer instructions for
// |g| < 87 (kSiluFastLimit):
//
// - one_plus_expf: libdevice's expf(x) ends with e = 2^j * p, a product that is exact
//   for a normal e, so RN(1 + e) is one fma(2^j, p, 1) (the FADD goes).
// - the division: markstein_div with r = rcp.approx(d), one Markstein correction.
//   nvcc's __fdiv_rn also refines r by a Newton step and checks for special cases
//   (FCHK + slow path); for the d = 1 + e this formula produces, neither changes a
//   result when |g| < 87. Outside that (+inf: inf - inf in the residual; g <=
//   -87.33: 1/d below FLT_MIN is flushed) and for NaN, callers use silu_exact.
//
// Checked against silu_exact for every fp32 g with |g| < 87 on the H100
// (benchmarks/silu_exhaustive.cu: 0 mismatches) and, through the kernels, against
// torch's F.silu for all 2^32 fp32 and every bf16 and fp16 gate value
// (tests/gpu/test_kernels.py: test_silu_fp32_every_value, test_silu_exhaustive_16bit).
// ---------------------------------------------------------------------------
constexpr float kSiluFastLimit = 87.0f;
__device__ __forceinline__ float silu_exact(float g) { return __fdiv_rn(g, __fadd_rn(1.0f, expf(-g))); }
__device__ __forceinline__ float one_plus_expf(float x) {
  float p;
  const float t = __saturatef(__fmaf_rn(x, __uint_as_float(0x3bbb989du), 0.5f));  // log2(e) / 252
  const float j = __fmaf_rd(t, 252.0f, 12582913.0f);  // 2^23 + 2^22 + 1 + floor(252 t)
  float f = __fmaf_rn(x, __uint_as_float(0x3fb8aa3bu), -__fadd_rn(j, -12583039.0f));  // log2(e) hi
  f = __fmaf_rn(x, __uint_as_float(0x32a57060u), f);                                  // log2(e) lo
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(f));
  return __fmaf_rn(__int_as_float(__float_as_int(j) << 23), p, 1.0f);
}
__device__ __forceinline__ float silu_fast(float g) {
  const float d = one_plus_expf(-g);
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return markstein_div(g, d, r);
}

// silu(g) for |g| >= 87 or NaN, when g is exact in a 16-bit float type (bf16 / fp16 input),
// equal to silu_exact there but without __fdiv_rn's slow-path call, whose live registers
// made the f16 per-token kernel spill:
//  g >= 87 and +inf: expf(-g) < 2^-24, so d = 1 and the quotient is g;
//  g <= -88.73 and -inf: expf(-g) overflows, d = inf, g / inf is -0 (NaN for -inf);
//  -88.73 < g <= -87: d is finite but above 2^125, where rcp.approx.ftz would flush 1/d,
//    so the division runs on d * 2^-64 (markstein_div) and the quotient, ~1e-36 and
//    normal, is scaled back exactly;
//  NaN stays NaN.
// Checked for every bf16 and fp16 gate value through the per-token kernel
// (tests/gpu/test_kernels.py test_silu_exhaustive_16bit).
__device__ __forceinline__ float silu_big_16bit(float g) {
  const float d = __fadd_rn(1.0f, expf(-g));
  const float ds = __fmul_rn(d, 0x1p-64f);
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(ds));
  const float q = __fmul_rn(markstein_div(g, ds, r), 0x1p-64f);
  if (d == 1.0f) return g;
  if (isinf(d)) return isinf(g) ? __int_as_float(0x7fffffff) : -0.0f;
  return q;
}

// silu(g[i]) for N elements: fast path for all, one branch per thread to the
// exact path when any |g| >= 87 or is NaN (rare; the branch is per thread). With
// kCallFree16 (16-bit inputs only) the exact path is silu_big_16bit for the elements
// outside the fast range, and the fast result stands for the others.
// valid == false (a past-the-end group holding stale registers) never takes the
// exact path: its results are discarded, and stale NaN / huge bits would otherwise
// send it through per-element __fdiv_rn slow paths (seen: T=1 took 4.5 µs, not 2).
// The exact path's slow-path calls keep ~25-40 more registers live per thread in the
// fused kernels; a call-free variant (fewer registers, 3 blocks per SM instead of 2)
// ran slower (docs/decisions/009-silu-fast-path.md).
template <int N, bool kCallFree16 = false>
__device__ __forceinline__ void silu_n(float (&v)[N], const float (&g)[N], bool valid = true) {
  bool ok = true;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    ok &= fabsf(g[i]) < kSiluFastLimit;
    v[i] = silu_fast(g[i]);
  }
  if (!ok && valid) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if constexpr (kCallFree16) {
        if (!(fabsf(g[i]) < kSiluFastLimit)) v[i] = silu_big_16bit(g[i]);
      } else {
        v[i] = silu_exact(g[i]);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// sigmoid(z) = 1 / (1 + expf(-z)) exactly as torch's CUDA sigmoid: accurate expf, the add
// and the division each correctly rounded in fp32 (sigmoid_exact). SwigluOai rounds z and
// the sigmoid to the input dtype, so for 16-bit inputs sigmoid_of / sigmoid_pairs only have to
// give, for each of the 2^16 values z of that dtype, an fp32 value the dtype rounds as torch's:
// - |z| < 87 (kSigmoidFastLimit; silu_fast's range, for the same d): d = one_plus_expf(-z), the
//   bits of RN(1 + expf(-z)), and RN(1 / d) as markstein_div(1, d, r), r = rcp.approx.ftz(d):
//   one Newton step, RN(r + r * RN(1 - d r)). d is in [1, 2^126) and 1/d normal; rcp.approx is
//   within 1 ulp of 1/d (PTX ISA), and from every such r the step gives RN(1/d) for every fp32
//   significand of d (checked for all 2^23 of them: tests/test_sigmoid_newton.py) except the
//   all-ones one, where it gives 2^-k for RN(1/d) = 2^-k (1 + 2^-23): the same bf16 / fp16 value
//   unless 2^-k is half the smallest subnormal, and for fp16 (2^-25, d = 2^25 - 2) no fp16 z has
//   1 + exp(-z) near that d (same test).
// - |z| >= 87, inf and NaN (sigmoid_big_16bit, call-free, no expf): z >= 87 gives d = 1 and 1;
//   z < -88.72 (kExpfOverflow) overflows expf, d = inf and +0; between, d = RN(expf(-z)) and
//   RN(1 / d) is e^z within 2^-20, 2^(z log2(e) + 64) * 2^-64 within 2^-17 (the rounded exponent);
//   fp16 rounds every such value to +0, and each of the four bf16 values there (-87, -87.5, -88,
//   -88.5) has e^z more than 2^-10 (relative) from a bf16 rounding boundary (same test). NaN
//   stays NaN.
// fp32 inputs (z any fp32 value) take sigmoid_exact.
// Checked for every bf16 and fp16 z through the kernels against torch's CUDA sigmoid
// (tests/gpu/test_swiglu_oai_gpu.py test_sigmoid_every_16bit_value).
// ---------------------------------------------------------------------------
constexpr float kSigmoidFastLimit = kSiluFastLimit;
constexpr float kExpfOverflow = 88.7228394f;  // ln(FLT_MAX): expf(x) is inf above it
__device__ __forceinline__ float sigmoid_exact(float z) { return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-z))); }
__device__ __forceinline__ float sigmoid_fast(float z) {
  const float d = one_plus_expf(-z);
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return markstein_div(1.0f, d, r);
}
__device__ __forceinline__ float sigmoid_big_16bit(float z) {
  float p;
  const float x = __fmaf_rn(z, __uint_as_float(0x3fb8aa3bu), 64.0f);  // z log2(e) + 64
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(x));
  const float e = __fmul_rn(p, 0x1p-64f);  // e^z, subnormal or not, NaN for NaN
  return z > 0.0f ? 1.0f : (z < -kExpfOverflow ? 0.0f : e);
}

// sigmoid(z) for a z exact in DT, as an fp32 value that rounds to DT as torch's does.
template <typename DT>
__device__ __forceinline__ float sigmoid_of(float z) {
  if constexpr (DT::kPacked) return fabsf(z) < kSigmoidFastLimit ? sigmoid_fast(z) : sigmoid_big_16bit(z);
  else return sigmoid_exact(z);
}

// The same on NP packed pairs of a 16-bit DT, rounded to DT; z_of(i) gives pair i of z. The
// fast path for all, one branch per thread for the elements outside the fast range (rare;
// valid == false, a past-the-end group, never takes it: see silu_n). That branch evaluates
// z_of again rather than keeping z live across it (fewer registers: the caller's z is cheap to
// recompute), and keeps the fast results in range (DT values: repacked exactly).
template <typename DT, int NP, typename ZOf>
__device__ __forceinline__ void sigmoid_pairs(uint32_t (&s2)[NP], const ZOf& z_of, bool valid) {
  bool ok = true;
#pragma unroll
  for (int i = 0; i < NP; ++i) {
    const uint32_t z2 = z_of(i);
    const float lo = DT::lo(z2), hi = DT::hi(z2);
    ok &= fabsf(lo) < kSigmoidFastLimit && fabsf(hi) < kSigmoidFastLimit;
    s2[i] = DT::pack_rn(sigmoid_fast(lo), sigmoid_fast(hi));
  }
  if (!ok && valid) {
    auto one = [](float z, float fast) { return fabsf(z) < kSigmoidFastLimit ? fast : sigmoid_big_16bit(z); };
#pragma unroll
    for (int i = 0; i < NP; ++i) {
      const uint32_t z2 = z_of(i);
      s2[i] = DT::pack_rn(one(DT::lo(z2), DT::lo(s2[i])), one(DT::hi(z2), DT::hi(s2[i])));
    }
  }
}

// ---------------------------------------------------------------------------
// Activations, each with the roundings of the eager spelling it replaces
// (catalog.Activation.rounding). kGated: act(gate, up) (Inputs says where each is).
// kCode: the catalog's enumerator. kNonNegative: act(x) is >= +0 or NaN, so its amax
// needs no |.|.
//   apply<DT, N>(y, a, b, valid, aa): y = act(a, b) in fp32 from fp32 operands (b unused
//     when not gated), exactly the value that rounds (DT::from_float) to eager's result.
//   pairs<DT, N>(yp, a2, b2, valid, aa), 16-bit DT: the same on packed pairs (element 2i in
//     the low half), already rounded to DT.
// valid: see silu_n. aa: the activation's parameters (act_quant.h ActArgs: GPT-OSS's alpha
// and limit), ignored by the activations without any.
// ---------------------------------------------------------------------------
struct Identity {
  static constexpr bool kGated = false, kNonNegative = false;
  static constexpr ActCode kCode = kActIdentity;
  template <typename DT, int N, bool kCallFree16 = false>
  static __device__ __forceinline__ void apply(float (&y)[N], const float (&a)[N], const float (&)[N], bool,
                                               const ActArgs&) {
#pragma unroll
    for (int i = 0; i < N; ++i) y[i] = a[i];
  }
  template <typename DT, int N, bool kCallFree16 = false>
  static __device__ __forceinline__ void pairs(uint32_t (&yp)[N / 2], const uint32_t* a2, const uint32_t*, bool,
                                               const ActArgs&) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) yp[i] = a2[i];
  }
};
// catalog.ActRounding.SILU_THEN_MUL, eager's F.silu(g) * u: silu(g) rounded to the input
// dtype, then the product rounded. The exact product of two 16-bit values fits in fp32
// (at most 22 significant bits), so fp32 multiply then rounding, as eager does, is one
// rounding of the exact product: the pair multiply (mul.rn on bf16x2 / f16x2). fp32
// inputs: silu and the product each rounded to fp32 (the same two roundings).
struct SiluMul {
  static constexpr bool kGated = true, kNonNegative = false;
  static constexpr ActCode kCode = kActSiluMul;
  template <typename DT, int N, bool kCallFree16 = false>
  static __device__ __forceinline__ void apply(float (&y)[N], const float (&g)[N], const float (&u)[N],
                                               bool valid, const ActArgs&) {
    silu_n<N, kCallFree16>(y, g, valid);
#pragma unroll
    for (int i = 0; i < N; ++i) y[i] = __fmul_rn(DT::round(y[i]), u[i]);
  }
  template <typename DT, int N, bool kCallFree16 = false>
  static __device__ __forceinline__ void pairs(uint32_t (&yp)[N / 2], const uint32_t* g2, const uint32_t* u2,
                                               bool valid, const ActArgs&) {
    // unpacked from whole pairs: one instruction per element (from a 16-bit element
    // it takes three)
    float gf[N], v[N];
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      gf[i] = DT::lo(g2[i / 2]);
      gf[i + 1] = DT::hi(g2[i / 2]);
    }
    silu_n<N, kCallFree16>(v, gf, valid);
#pragma unroll
    for (int i = 0; i < N; i += 2) yp[i / 2] = DT::mul2(DT::pack_rn(v[i], v[i + 1]), u2[i / 2]);
  }
};
// relu(x)**2 as torch computes relu(x).square(): NaN stays NaN (max.NaN), -0 and +0
// both square to +0. torch squares in fp32 and rounds to the dtype; a 16-bit r has at
// most 11 significant bits, so that equals one rounding of the exact square, which is
// what mul.rn on the pair does (every bf16 / fp16 value: tests/test_e2m1_lane_rounding.py).
struct Relu2 {
  static constexpr bool kGated = false, kNonNegative = true;
  static constexpr ActCode kCode = kActRelu2;
  template <typename DT, int N, bool kCallFree16 = false>
  static __device__ __forceinline__ void apply(float (&y)[N], const float (&a)[N], const float (&)[N], bool,
                                               const ActArgs&) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float r = nan_max(a[i], 0.0f);
      y[i] = __fmul_rn(r, r);
    }
  }
  template <typename DT, int N, bool kCallFree16 = false>
  static __device__ __forceinline__ void pairs(uint32_t (&yp)[N / 2], const uint32_t* a2, const uint32_t*, bool,
                                               const ActArgs&) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      const uint32_t r = DT::max2(a2[i], 0u);
      yp[i] = DT::mul2(r, r);
    }
  }
};
// catalog.ActRounding.EACH_OP: GPT-OSS's clamped SwiGLU as eager runs transformers'
// GptOssExperts._apply_gate (modeling_gpt_oss.py), every op's result rounded to the input
// dtype (DT::round; fp32 inputs: plain fp32 ops), as reference.swigluoai_and_mul:
//   g = gate.clamp(max=limit), u = up.clamp(-limit, limit): torch's CUDA clamp kernels
//     (aten/src/ATen/native/cuda/TensorCompare.cu) compare in fp32 with the limit as fp32,
//     keep NaN (the comparisons are false) and store the limit rounded to the dtype;
//   gate * alpha: a Python float scalar on a 16-bit tensor is applied in fp32 (opmath), then
//     rounded: fp32, then the dtype;
//   sigmoid(z): torch's CUDA sigmoid (UnarySpecialOpsKernel.cu) computes 1 / (1 + exp(-z)) in
//     fp32 for every float dtype (c10's 16-bit types convert to float for exp and for the
//     mixed add and division) and rounds once to the dtype: sigmoid_of, sigmoid_pairs;
//   gate * sigmoid, up + 1 and (up + 1) * glu: each an fp32 op rounded to the dtype (the
//   caller rounds the last one). On pairs these are the dtype's own mul.rn / add.rn: the exact
//   product of two 16-bit values fits in fp32 (SiluMul), and u + 1 rounded to fp32 then to the
//   dtype is the sum rounded once (fp32 keeps it exactly unless |u| >= 2^24, where it rounds to
//   u, or |u| < 2^-13, where it lands within 2^-13 of 1: never on a dtype rounding boundary).
// valid: see silu_n (sigmoid_pairs' rare path).
struct SwigluOai {
  static constexpr bool kGated = true, kNonNegative = false;
  static constexpr ActCode kCode = kActSwigluOai;
  // the clamps in fp32, before the rounding to DT (DT::round, or pack_rn on pairs)
  static __device__ __forceinline__ float clamp_gate(float gate, float limit) { return gate > limit ? limit : gate; }
  static __device__ __forceinline__ float clamp_up(float up, float limit) {
    const float lo = up < -limit ? -limit : up;
    return lo > limit ? limit : lo;
  }
  template <typename DT, int N, bool kCallFree16 = false>
  static __device__ __forceinline__ void apply(float (&y)[N], const float (&gate)[N], const float (&up)[N], bool,
                                               const ActArgs& aa) {
    const float alpha = aa.p[kSwigluOaiAlpha], limit = aa.p[kSwigluOaiLimit];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float g = DT::round(clamp_gate(gate[i], limit));
      const float glu = DT::round(__fmul_rn(g, DT::round(sigmoid_of<DT>(DT::round(__fmul_rn(g, alpha))))));
      y[i] = __fmul_rn(DT::round(__fadd_rn(DT::round(clamp_up(up[i], limit)), 1.0f)), glu);
    }
  }
  template <typename DT, int N, bool kCallFree16 = false>
  static __device__ __forceinline__ void pairs(uint32_t (&yp)[N / 2], const uint32_t* g2, const uint32_t* u2,
                                               bool valid, const ActArgs& aa) {
    const float alpha = aa.p[kSwigluOaiAlpha], limit = aa.p[kSwigluOaiLimit];
    uint32_t gc2[N / 2], uc2[N / 2], s2[N / 2];
    // The clamps on pairs: with l = RN_DT(limit), RN_DT(clamp(x, max=limit)) = min(x, l) for
    // every DT value x (rounding is monotone, so x > limit gives l <= x, x <= limit gives
    // l >= x), and NaN stays NaN (min.NaN, as the fp32 compare keeps it); the same for the
    // lower bound with -l = RN_DT(-limit). Only where l is 0 (min(-0, +0) may pick either
    // zero) or NaN (the compares keep x, min.NaN would not) do the clamps run in fp32.
    const uint32_t lim2 = DT::pack_rn(limit, limit);
    const float l = DT::lo(lim2);
    if (l == l && l != 0.0f) {
      const uint32_t neg2 = lim2 ^ 0x80008000u;
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        gc2[i] = DT::min2(g2[i], lim2);
        uc2[i] = DT::min2(DT::max2(u2[i], neg2), lim2);
      }
    } else {
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        gc2[i] = DT::pack_rn(clamp_gate(DT::lo(g2[i]), limit), clamp_gate(DT::hi(g2[i]), limit));
        uc2[i] = DT::pack_rn(clamp_up(DT::lo(u2[i]), limit), clamp_up(DT::hi(u2[i]), limit));
      }
    }
    // z = gate * alpha, rounded, from the clamped gate (a DT value: exact in the pair)
    sigmoid_pairs<DT, N / 2>(
        s2, [&](int i) { return DT::pack_rn(__fmul_rn(DT::lo(gc2[i]), alpha), __fmul_rn(DT::hi(gc2[i]), alpha)); },
        valid);
    const uint32_t one2 = DT::bits(DT::splat(1.0f));
#pragma unroll
    for (int i = 0; i < N / 2; ++i) yp[i] = DT::mul2(DT::add2(uc2[i], one2), DT::mul2(gc2[i], s2[i]));
  }
};

// ---------------------------------------------------------------------------
// Input loads.
// ---------------------------------------------------------------------------
// A 16-byte load that L1 does not keep and L2 evicts first (the input is read once).
// Measured on the H100 (docs/decisions/001-evict-first-loads-gated-by-l2.md): with inputs that fit
// in L2 the small cells gain up to 17 points of copy bandwidth (SiLU x MXFP4 at 4096 x
// 2048: 84% -> 91-93%, also with inputs rotated through 250 MB), while the large ones
// lose 2-10 points; so the launchers use it only up to a size (launch_unit.cuh
// evict_first_input).
// The L2 cache policy of those loads (and of the staged per-token kernel's copies).
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ uint4 ld_evict_first(const void* p) {
  uint4 v;
  const uint64_t policy = evict_first_policy();
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p), "l"(policy));
  return v;
}
// A 16-byte copy from global into shared memory that bypasses the registers (cp.async; L1
// not kept, L2 evict-first with EVICT_FIRST, as ld_evict_first).
template <bool EVICT_FIRST>
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  if constexpr (EVICT_FIRST) {
    const uint64_t policy = evict_first_policy();
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "l"(policy)
                 : "memory");
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem) : "memory");
  }
}

template <bool EVICT_FIRST>
__device__ __forceinline__ uint4 load16(const void* p) {
  if constexpr (EVICT_FIRST) {
    return ld_evict_first(p);
  } else {
    return __ldg(reinterpret_cast<const uint4*>(p));
  }
}

// The operands of the 16 / sizeof(S) outputs at column col of the row starting at input
// element row_off (Inputs). IL (interleaved): the two 16-byte vectors covering the
// outputs' 2 * VEC inputs, raw in (gv, uv), split_interleaved separates them where they
// are used (after the loads are in flight, not here).
// Where those two vectors are (the second unused when not GATED and not IL).
template <typename DT, bool IL>
__device__ __forceinline__ void operand_addresses(const typename DT::Storage*& a, const typename DT::Storage*& b,
                                                  const typename DT::Storage* gate, const typename DT::Storage* up,
                                                  int64_t row_off, int64_t col) {
  constexpr int VEC = 16 / sizeof(typename DT::Storage);
  if constexpr (IL) {
    a = gate + row_off + 2 * col;
    b = a + VEC;
  } else {
    a = gate + row_off + col;
    b = up + row_off + col;
  }
}
template <typename DT, bool GATED, bool IL, bool EVICT_FIRST>
__device__ __forceinline__ void load_operands(uint4& gv, uint4& uv, const typename DT::Storage* __restrict__ gate,
                                              const typename DT::Storage* __restrict__ up, int64_t row_off,
                                              int64_t col) {
  const typename DT::Storage *a, *b;
  operand_addresses<DT, IL>(a, b, gate, up, row_off, col);
  gv = load16<EVICT_FIRST>(a);
  if constexpr (GATED || IL) uv = load16<EVICT_FIRST>(b);
}

// (gate, up) vectors from the interleaved (g0 u0 g1 u1 ...) pair of vectors (a, b):
// one PRMT per gate or up pair for 16-bit elements, moves for fp32.
template <typename DT>
__device__ __forceinline__ void split_interleaved(uint4& a, uint4& b) {
  if constexpr (DT::kPacked) {
    auto lo = [](uint32_t x, uint32_t y) { return __byte_perm(x, y, 0x5410); };
    auto hi = [](uint32_t x, uint32_t y) { return __byte_perm(x, y, 0x7632); };
    const uint4 g = make_uint4(lo(a.x, a.y), lo(a.z, a.w), lo(b.x, b.y), lo(b.z, b.w));
    const uint4 u = make_uint4(hi(a.x, a.y), hi(a.z, a.w), hi(b.x, b.y), hi(b.z, b.w));
    a = g;
    b = u;
  } else {
    const uint4 g = make_uint4(a.x, a.z, b.x, b.z);
    const uint4 u = make_uint4(a.y, a.w, b.y, b.w);
    a = g;
    b = u;
  }
}

// ---------------------------------------------------------------------------
// Quantisation: scale and y / scale.
// ---------------------------------------------------------------------------
// Smallest power of two >= s, exactly from the bits (reference.ue8m0_ceil), for
// s = max(amax, 1e-10) * (1/448) >= 2.2e-13, i.e. never subnormal; NaN and inf
// pass through; a full binade-254 value rounds up to inf, like ldexp.
__device__ __forceinline__ float ue8m0_ceil(float s) {
  const uint32_t b = __float_as_uint(s);
  if ((b & 0x7f800000u) == 0x7f800000u || (b & 0x7fffffu) == 0) return s;
  return __uint_as_float(((b >> 23) + 1) << 23);
}

// The same for any s >= +0 (a recipe without a floor): a subnormal s goes to the power of two
// above its highest bit (2^-126 from the top of the range); 0 passes through.
__device__ __forceinline__ float ue8m0_ceil_any(float s) {
  const uint32_t b = __float_as_uint(s), m = b & 0x7fffffu;
  if (b >= 0x00800000u || m == 0) return ue8m0_ceil(s);
  return (m & (m - 1)) == 0 ? s : __uint_as_float(1u << (32 - __clz(m)));
}

// The default scale step of the dynamic FP8 kernels (Fp8Step::kDefault, kDefaultUe8m0: the op
// parameters' recipes): amax * fp32(1/448), as torch evaluates `amax / 448` on CUDA (eager with
// a CPU scalar divisor, and Inductor's div-by-constant lowering): can differ by one ulp from a
// true division, so this is what makes scales bit-equal to the native graph. UE8M0: the smallest
// power of two >= s (a normal one: s is in [2^-43, 2^120]).
template <bool UE8M0>
__device__ __forceinline__ float group_scale(float amax) {
  const float s = __fmul_rn(nan_max(amax, kDefaultEps), 1.0f / kFp8Max);
  if constexpr (UE8M0) return ue8m0_ceil(s);
  else return s;
}

// The UE8M0 rounding of a recipe's scale (kUe8m0Exact or kUe8m0Exp2).
__device__ __forceinline__ float recipe_pow2(float s, Ue8m0Code mode) {
  return mode == kUe8m0Exact ? ue8m0_ceil_any(s) : exp2f(ceilf(log2f(s)));
}
// The same out of line, for the per-token kernels: log2f and exp2f inlined into every unrolled row
// made their loop too large for the instruction cache, and it runs once per row there (a group
// kernel calls it once per 8 or 16 elements: inline).
static __device__ __noinline__ float recipe_pow2_call(float s, Ue8m0Code mode) { return recipe_pow2(s, mode); }

// The scale step of any dynamic recipe (act_quant.h ScaleRecipe; Fp8Step::kRecipe): as above,
// the floors NaN-keeping maxima as torch's clamp_min; for kStepInput the scale is rounded to the
// input dtype DT, as eager stores a 16-bit amax / 448 (an fp32 input: no rounding). kUe8m0Exp2 is
// torch's exp2(ceil(log2(s))) (below s where log2 rounds down to an integer), with the CUDA math
// library functions that torch's own CUDA log2 / ceil / exp2 kernels call, so the bits are eager's.
// kCall: the UE8M0 rounding out of line (recipe_pow2_call).
template <typename DT, bool kCall = false>
__device__ __forceinline__ float recipe_scale(float amax, const ScaleRecipe& rr) {
  float s = __fmul_rn(nan_max(amax, rr.amax_floor), 1.0f / kFp8Max);
  if (rr.step == kStepInput) s = DT::round(s);
  s = nan_max(s, rr.scale_floor);
  if (rr.ue8m0 != kUe8m0None) s = kCall ? recipe_pow2_call(s, rr.ue8m0) : recipe_pow2(s, rr.ue8m0);
  return nan_max(s, rr.pow2_floor);
}

// RN(y / s) for finite s:
//  UE8M0: s is a power of two in [2^-126, 2^126], r = 1/s exact from the bits, and
//    y * r is the correctly rounded quotient (one FMUL); so is it for the recipe y * (1 / s)
//    with r = RN(1/s).
//  fp32: r = RN(1/s) once per group; q0 = y*r and q0 + RN(y - q0*s)*r (fma) is the
//    correctly rounded quotient (Markstein; Handbook of FP Arithmetic, thm 8.10) as
//    long as nothing underflows; a result below 2^-126 is 0 in e4m3 either way and
//    keeps y's sign (markstein_div: y = -0 gives -0).
template <bool UE8M0>
__device__ __forceinline__ float group_recip(float s) {
  if constexpr (UE8M0) return __uint_as_float((254u - (__float_as_uint(s) >> 23)) << 23);
  else return __frcp_rn(s);
}
template <bool UE8M0>
__device__ __forceinline__ float div_by_scale(float y, float s, float r) {
  if constexpr (UE8M0) {
    return __fmul_rn(y, r);
  } else {
    return markstein_div(y, s, r);
  }
}
// The scales of any recipe for which those forms are exact: s and 1/s normal, and |y / s| far
// from fp32's limits, so that markstein_div's residual is exact wherever the e4m3 code depends on
// it (|y / s| >= 2^-11). Every scale of the default step (s >= 1e-10 / 448 > 2^-43, and at most
// 2^120) is one; others (recipes without a floor, specials) divide per element.
constexpr float kFastScaleMin = 0x1p-64f, kFastScaleMax = 0x1p126f;

// RNE to e4m3 with saturation: SATFINITE equals the reference's clamp(-448, 448)
// then cast (anything past 448, inf included, goes to 448) and keeps NaN as NaN.
// One cvt.rn.satfinite.e4m3x2.f32 for two values; a lands in the low byte.
__device__ __forceinline__ uint32_t e4m3x2(float a, float b) {
  return __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
}

}  // namespace quantfuse
