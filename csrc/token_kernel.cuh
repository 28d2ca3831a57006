// act(x) -> FP8 per-token quantisation (one fp32 scale per row).
//
// A row is owned by blockDim.x threads (a multiple of 32); a block holds blockDim.y
// rows. Thread x handles the 16-byte vectors j * blockDim.x + x (j < NV) of its row:
// loads are coalesced across the row, and act(x), rounded to the input dtype, stays
// in registers as raw input bits (one uint4 per vector) between the amax and the
// encode, so x is read once. Rows longer than NV * blockDim.x vectors (TWO_PASS)
// are walked twice in chunks of that size: pass 1 takes the amax, pass 2 recomputes
// act(x) (the re-read mostly hits L2) and encodes. The row amax is reduced with warp
// shuffles, then across the row's warps through shared memory (one barrier).
#pragma once

#include "group_kernel.cuh"

namespace quantfuse {

template <typename DT, typename Act>
__device__ __forceinline__ void act_vector(uint4& out, float& amax, const typename DT::Storage* p,
                                           int64_t hidden) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  const uint4 gv = __ldg(reinterpret_cast<const uint4*>(p));
  uint4 uv = gv;
  if constexpr (Act::kGated) uv = __ldg(reinterpret_cast<const uint4*>(p + hidden));
  float y[VEC];
  amax = nan_max(amax, act_round_amax<DT, Act, VEC>(y, reinterpret_cast<const S*>(&gv),
                                                    reinterpret_cast<const S*>(&uv), true));
  S* o = reinterpret_cast<S*>(&out);
  if constexpr (DT::kPacked) {
#pragma unroll
    for (int i = 0; i < VEC; i += 2) reinterpret_cast<uint32_t*>(o)[i / 2] = DT::pack_rn(y[i], y[i + 1]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) o[i] = DT::from_float(y[i]);
  }
}

template <typename DT>
__device__ __forceinline__ void encode_vector(uint8_t* q, const uint4& v, const Fp8Scaled<false>::State& st) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  float y[VEC];
  const S* e = reinterpret_cast<const S*>(&v);
#pragma unroll
  for (int i = 0; i < VEC; ++i) y[i] = DT::to_float(e[i]);
  uint32_t w[VEC / 4];
  Fp8Scaled<false>::encode<VEC>(y, st, w);
  store_bytes<VEC>(q, w, 0);
}

// NaN-propagating max of v over the blockDim.x threads of this row.
__device__ __forceinline__ float row_max(float v) {
  __shared__ float partial[kThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int warps_per_row = blockDim.x / 32;
  const int first = threadIdx.y * warps_per_row;
  if (threadIdx.x % 32 == 0) partial[first + threadIdx.x / 32] = v;
  __syncthreads();
  float m = partial[first];
  for (int k = 1; k < warps_per_row; ++k) m = nan_max(m, partial[first + k]);
  return m;
}

template <typename DT, typename Act, int NV, bool TWO_PASS>
__global__ void __launch_bounds__(kThreads) act_token_quant_kernel(
    uint8_t* __restrict__ q, float* __restrict__ s, const typename DT::Storage* __restrict__ x,
    int64_t tokens, int64_t hidden) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  const int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool valid = row < tokens;  // no early return: every thread reaches the barrier
  const S* xr = x + row * (Act::kGated ? 2 * hidden : hidden);
  uint8_t* qr = q + row * hidden;
  const int64_t chunk = int64_t(NV) * blockDim.x * VEC;
  float amax = 0.0f;
  uint4 yv[NV];
  for (int64_t c0 = 0; c0 < (TWO_PASS ? hidden : 1); c0 += chunk) {
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int64_t col = c0 + (int64_t(j) * blockDim.x + threadIdx.x) * VEC;
      if (valid && col < hidden) act_vector<DT, Act>(yv[j], amax, xr + col, hidden);
    }
  }
  const auto st = Fp8Scaled<false>::prepare(row_max(amax));
  if (!valid) return;
  for (int64_t c0 = 0; c0 < (TWO_PASS ? hidden : 1); c0 += chunk) {
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int64_t col = c0 + (int64_t(j) * blockDim.x + threadIdx.x) * VEC;
      if (col < hidden) {
        if constexpr (TWO_PASS) {
          float unused = 0.0f;
          act_vector<DT, Act>(yv[j], unused, xr + col, hidden);
        }
        encode_vector<DT>(qr + col, yv[j], st);
      }
    }
  }
  if (threadIdx.x == 0) s[row] = Fp8Scaled<false>::scale(st);
}

}  // namespace quantfuse
