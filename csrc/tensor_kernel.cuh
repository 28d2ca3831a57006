// Dynamic per-tensor FP8 (catalog FP8_PER_TENSOR): one scale from the amax of act(x) over the
// whole tensor. No element can be encoded before every row is read, so a call is three launches
// (launch_unit.cuh launch_tensor): act_amax_kernel (a persistent grid, each block's max |act(x)|
// over its rows into partials[block]), tensor_scale_kernel (one block: the max of the partials,
// then the recipe's scale step, into s), and the static kernel's encode (act_kernel.cuh with
// Fp8Static, reading s as its scale), which computes act(x) again: the input is read twice, the
// codes written once, and nothing else (a partial per block, the scale).
//
// The max runs on fp32 values with NaN kept (nan_max), as torch's amax: |NaN| anywhere makes the
// scale NaN, whose every code is NaN, as eager's y / NaN.
#pragma once

#include "group_kernel.cuh"  // act_round_amax

namespace quantfuse {

// Block-wide NaN-keeping max of v (every thread gets it); blockDim.x a multiple of 32, <= kThreads.
__device__ __forceinline__ float block_nan_max(float v) {
  __shared__ float warp_max[kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
  if (threadIdx.x % 32 == 0) warp_max[warp] = v;
  __syncthreads();
  v = warp_max[0];
  for (int w = 1; w < warps; ++w) v = nan_max(v, warp_max[w]);
  return v;
}

// Block b: rows b, b + gridDim.x, ... of [tokens, d] (16-byte vectors, d a multiple of VEC),
// max |act(x)| into partials[b]; a block without rows writes 0 (|y| >= +0).
template <typename DT, typename Act, bool IL>
__global__ void __launch_bounds__(kThreads) act_amax_kernel(
    float* __restrict__ partials, const typename DT::Storage* __restrict__ gate,
    const typename DT::Storage* __restrict__ up, int64_t in_stride, int64_t d, int64_t tokens, const ActArgs aa) {
  constexpr int VEC = 16 / sizeof(typename DT::Storage);
  pdl_wait_and_trigger();
  float m = 0.0f;
  for (int64_t row = blockIdx.x; row < tokens; row += gridDim.x) {
    const int64_t row_off = row * in_stride;
#pragma unroll 2
    for (int64_t col = int64_t(threadIdx.x) * VEC; col < d; col += int64_t(blockDim.x) * VEC) {
      uint4 gv, uv;
      load_operands<DT, Act::kGated, IL, false>(gv, uv, gate, up, row_off, col);
      if constexpr (IL) split_interleaved<DT>(gv, uv);
      float y[VEC];
      uint32_t yp[VEC / 2];
      m = nan_max(m, act_round_amax<DT, Act, VEC>(y, yp, reinterpret_cast<const typename DT::Storage*>(&gv),
                                                   reinterpret_cast<const typename DT::Storage*>(&uv), true, aa));
    }
  }
  m = block_nan_max(m);
  if (threadIdx.x == 0) partials[blockIdx.x] = m;
}

// One block: s[0] = the recipe's scale (recipe_scale) of the max of partials[0, n).
template <typename DT>
__global__ void __launch_bounds__(kThreads) tensor_scale_kernel(float* __restrict__ s,
                                                                 const float* __restrict__ partials, int n,
                                                                 const ScaleRecipe rr) {
  pdl_wait_and_trigger();
  float m = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) m = nan_max(m, partials[i]);
  m = block_nan_max(m);
  if (threadIdx.x == 0) s[0] = recipe_scale<DT>(m, rr);
}

}  // namespace quantfuse
