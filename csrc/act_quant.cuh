// Activation -> FP8 per-token-group quantisation kernels (one templated family).
//
// Numerics follow DESIGN.md "Numerics" and quantfuse/custom_ops/reference.py bit
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

namespace quantfuse {

constexpr float kFp8Max = 448.0f;
constexpr float kEps = 1e-10f;
constexpr int kThreads = 256;  // threads per block for every kernel here

// ---------------------------------------------------------------------------
// Input dtypes. Elements are handled as raw bits (Storage) in registers so a
// 16-byte vector load can be reinterpreted without unions of class types.
// ---------------------------------------------------------------------------
struct F32 {
  using Storage = uint32_t;
  static __device__ __forceinline__ float to_float(Storage b) { return __uint_as_float(b); }
  static __device__ __forceinline__ Storage from_float(float v) { return __float_as_uint(v); }
  static __device__ __forceinline__ float round(float v) { return v; }
};
struct F16 {
  using Storage = uint16_t;
  static __device__ __forceinline__ float to_float(Storage b) { return __half2float(__ushort_as_half(b)); }
  static __device__ __forceinline__ Storage from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ float round(float v) { return __half2float(__float2half_rn(v)); }
};
struct BF16 {
  using Storage = uint16_t;
  // bf16 -> fp32 is exact: the bits are the top half of the fp32 word.
  static __device__ __forceinline__ float to_float(Storage b) { return __uint_as_float(uint32_t(b) << 16); }
  static __device__ __forceinline__ Storage from_float(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  static __device__ __forceinline__ float round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
};

// NaN-propagating max (torch.amax / clamp_min semantics); fmaxf would drop NaN.
__device__ __forceinline__ float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }

// ---------------------------------------------------------------------------
// Activations. kGated: the input row is [gate | up] of width 2*H.
// ---------------------------------------------------------------------------
struct Identity {
  static constexpr bool kGated = false;
  __device__ __forceinline__ float operator()(float x, float) const { return x; }
};
struct SiluMul {
  static constexpr bool kGated = true;
  // silu(g) * u as torch computes it: g / (1 + exp(-g)), then * u, each rounded.
  __device__ __forceinline__ float operator()(float g, float u) const {
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
  }
};

// ---------------------------------------------------------------------------
// Quantisation schemes.
// ---------------------------------------------------------------------------
// Smallest power of two >= s, exactly from the bits (reference.ue8m0_ceil).
__device__ __forceinline__ float ue8m0_ceil(float s) {
  if (!(s > 0.0f) || !isfinite(s)) return s;  // NaN, inf, <= 0 pass through
  uint32_t b = __float_as_uint(s);
  uint32_t e = (b >> 23) & 0xffu, m = b & 0x7fffffu;
  if (e == 0) {  // subnormal: fall back to frexp/ldexp, which are exact too
    int ex;
    float mant = frexpf(s, &ex);
    return ldexpf(1.0f, ex - (mant == 0.5f ? 1 : 0));
  }
  if (m == 0) return s;
  return __uint_as_float((e + 1) << 23);  // e == 254 gives +inf, like ldexp
}

struct Fp8GroupScheme {
  bool use_ue8m0;
  // amax / 448 as torch evaluates it on CUDA (eager `t / 448.0` with a CPU scalar
  // divisor, and Inductor's div-by-constant lowering): amax * fp32(1/448). The
  // quotient can differ by one ulp from a true division, so this is what makes
  // the scales bit-equal to the replaced graph (seen on the H100, 2026-11-22).
  __device__ __forceinline__ float scale(float amax) const {
    float s = __fmul_rn(nan_max(amax, kEps), 1.0f / kFp8Max);
    return use_ue8m0 ? ue8m0_ceil(s) : s;
  }
  // Per-group state for y / s: the correctly rounded reciprocal of s.
  struct Div {
    float s, r;
    bool exact;  // s finite: Markstein's correction below is exact
  };
  __device__ __forceinline__ Div prepare(float s) const {
    return Div{s, __frcp_rn(s), isfinite(s) && s != 0.0f};
  }
  // RN(y / s) without a full division per element: with r = RN(1/s) and q0 within
  // an ulp, q0 + RN(y - q0*s)*r (both fma) is the correctly rounded quotient
  // (Markstein; Handbook of FP Arithmetic, thm 8.10), no overflow/underflow here
  // since |y / s| <= ~448. Non-finite s (NaN/inf amax) takes the true division.
  __device__ __forceinline__ float div(float y, const Div& d) const {
    if (!d.exact) return __fdiv_rn(y, d.s);
    const float q0 = __fmul_rn(y, d.r);
    const float e = __fmaf_rn(-q0, d.s, y);
    // q0 == 0 (y == +-0 or underflow): keep q0, whose sign is y's (fma would give +0).
    return q0 == 0.0f ? q0 : __fmaf_rn(e, d.r, q0);
  }
  // True-IEEE-rounded quotients, then RNE to e4m3 with saturation: SATFINITE equals
  // the reference's clamp(-448, 448) (anything past 448 rounds to 448 or beyond,
  // which saturates to 448) and keeps NaN as NaN, which fminf/fmaxf clamping would
  // not. One cvt.rn.satfinite.e4m3x2.f32 for two values; a lands in the low byte.
  __device__ __forceinline__ uint32_t quant2(float a, float b, const Div& d) const {
    return __nv_cvt_float2_to_fp8x2(make_float2(div(a, d), div(b, d)), __NV_SATFINITE, __NV_E4M3);
  }
};

// Store VEC fp8 bytes held as VEC/4 little-endian words (no local-memory byte array).
template <int VEC> __device__ __forceinline__ void store_fp8(uint8_t* p, const uint32_t (&w)[VEC / 4]);
template <> __device__ __forceinline__ void store_fp8<4>(uint8_t* p, const uint32_t (&w)[1]) {
  *reinterpret_cast<uint32_t*>(p) = w[0];
}
template <> __device__ __forceinline__ void store_fp8<8>(uint8_t* p, const uint32_t (&w)[2]) {
  *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
}

// ---------------------------------------------------------------------------
// act(x) -> per-group quant. A sub-warp of TPG = GS / VEC threads owns one group
// (each thread one 16-byte vector of gate and one of up), reduces amax with
// shuffles inside the sub-warp, and writes VEC fp8 bytes + (lane 0) the scale.
// Groups are numbered row-major over [T, G] so neighbouring sub-warps read
// neighbouring memory. The grid is persistent (sized to fill the SMs) and each
// iteration handles UNROLL groups per thread while the loads of the next
// iteration are already in flight (register double buffering). The loop bound is
// block-uniform so every lane reaches the shuffles.
// ---------------------------------------------------------------------------
template <typename DT, int GS, int UNROLL, bool GATED>
__device__ __forceinline__ void load_groups(typename DT::Storage (&gv)[UNROLL][16 / sizeof(typename DT::Storage)],
                                            typename DT::Storage (&uv)[UNROLL][16 / sizeof(typename DT::Storage)],
                                            const typename DT::Storage* __restrict__ x, uint32_t first,
                                            uint32_t gps, uint32_t total, uint32_t gpr, int64_t hidden,
                                            int lane) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  const int64_t in_row = GATED ? 2 * hidden : hidden;
#pragma unroll
  for (int k = 0; k < UNROLL; ++k) {
    const uint32_t gi = first + k * gps;
    if (gi < total) {
      const uint32_t t = gi / gpr, g = gi - t * gpr;
      const S* p = x + int64_t(t) * in_row + int64_t(g) * GS + lane * VEC;
      *reinterpret_cast<uint4*>(gv[k]) = __ldg(reinterpret_cast<const uint4*>(p));
      if constexpr (GATED) {
        *reinterpret_cast<uint4*>(uv[k]) = __ldg(reinterpret_cast<const uint4*>(p + hidden));
      }
    } else {
#pragma unroll
      for (int i = 0; i < VEC; ++i) gv[k][i] = uv[k][i] = 0;
    }
  }
}

template <typename DT, int GS, typename Act, typename Scheme, int UNROLL>
__global__ void __launch_bounds__(kThreads) act_group_quant_kernel(
    uint8_t* __restrict__ q, float* __restrict__ s, const typename DT::Storage* __restrict__ x,
    uint32_t total_groups, uint32_t groups_per_row, int64_t hidden, int64_t s_stride_t,
    int64_t s_stride_g, Scheme scheme) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  constexpr int TPG = GS / VEC;
  static_assert(TPG >= 1 && TPG <= 32 && 32 % TPG == 0, "a group must fit in one warp");
  static_assert(VEC == 4 || VEC == 8, "fp8 stores are 4 or 8 bytes");
  constexpr int GPS = kThreads / TPG;  // groups per block per unroll step
  const int sub = threadIdx.x / TPG;
  const int lane = threadIdx.x % TPG;
  const Act act;
  const uint32_t step = gridDim.x * (GPS * UNROLL);  // total < 2^31: no overflow below

  S gv[UNROLL][VEC], uv[UNROLL][VEC];
  uint32_t base = blockIdx.x * (GPS * UNROLL);
  load_groups<DT, GS, UNROLL, Act::kGated>(gv, uv, x, base + sub, GPS, total_groups,
                                           groups_per_row, hidden, lane);
  for (; base < total_groups; base += step) {
    S gn[UNROLL][VEC], un[UNROLL][VEC];
    load_groups<DT, GS, UNROLL, Act::kGated>(gn, un, x, base + step + sub, GPS, total_groups,
                                             groups_per_row, hidden, lane);
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      const uint32_t gi = base + sub + k * GPS;
      float y[VEC];
      float amax = 0.0f;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        float v = act(DT::to_float(gv[k][i]), Act::kGated ? DT::to_float(uv[k][i]) : 0.0f);
        // "Intermediate rounding": the unfused graph stores act(x) in the input dtype.
        if constexpr (Act::kGated) v = DT::round(v);
        y[i] = v;
        amax = nan_max(amax, fabsf(v));
      }
      // All 32 lanes take part (invalid groups reduce zeros); xor offsets < TPG
      // stay inside the sub-warp.
#pragma unroll
      for (int off = TPG / 2; off > 0; off >>= 1) {
        amax = nan_max(amax, __shfl_xor_sync(0xffffffffu, amax, off));
      }
      const float sc = scheme.scale(amax);
      const auto d = scheme.prepare(sc);
      if (gi < total_groups) {
        const uint32_t t = gi / groups_per_row, g = gi - t * groups_per_row;
        uint32_t w[VEC / 4];
#pragma unroll
        for (int i = 0; i < VEC / 4; ++i) {
          w[i] = scheme.quant2(y[4 * i], y[4 * i + 1], d) |
                 (scheme.quant2(y[4 * i + 2], y[4 * i + 3], d) << 16);
        }
        store_fp8<VEC>(q + int64_t(t) * hidden + int64_t(g) * GS + lane * VEC, w);
        if (lane == 0) s[int64_t(t) * s_stride_t + int64_t(g) * s_stride_g] = sc;
      }
    }
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        gv[k][i] = gn[k][i];
        uv[k][i] = un[k][i];
      }
    }
  }
}

// ---------------------------------------------------------------------------
// silu(gate) * up -> input dtype. Block b handles chunk (b % chunks_per_row) of
// row (b / chunks_per_row): one division per thread, 64-bit offsets. VEC is
// 16 / sizeof(element) when d allows it, else 1 (scalar path for odd widths).
// ---------------------------------------------------------------------------
template <typename DT, int VEC>
__global__ void __launch_bounds__(kThreads) silu_and_mul_kernel(
    typename DT::Storage* __restrict__ out, const typename DT::Storage* __restrict__ x, int64_t d,
    uint32_t chunks_per_row) {
  using S = typename DT::Storage;
  const uint32_t row = blockIdx.x / chunks_per_row;
  const uint32_t chunk = blockIdx.x - row * chunks_per_row;
  const int64_t col = (int64_t(chunk) * kThreads + threadIdx.x) * VEC;
  if (col >= d) return;
  const S* g = x + int64_t(row) * 2 * d + col;
  S gv[VEC], uv[VEC], ov[VEC];
  if constexpr (VEC * sizeof(S) == 16) {
    *reinterpret_cast<uint4*>(gv) = __ldg(reinterpret_cast<const uint4*>(g));
    *reinterpret_cast<uint4*>(uv) = __ldg(reinterpret_cast<const uint4*>(g + d));
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) { gv[i] = g[i]; uv[i] = g[d + i]; }
  }
  const SiluMul act;
#pragma unroll
  for (int i = 0; i < VEC; ++i) ov[i] = DT::from_float(act(DT::to_float(gv[i]), DT::to_float(uv[i])));
  S* o = out + int64_t(row) * d + col;
  if constexpr (VEC * sizeof(S) == 16) {
    *reinterpret_cast<uint4*>(o) = *reinterpret_cast<const uint4*>(ov);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) o[i] = ov[i];
  }
}

}  // namespace quantfuse
