// Host launchers for the kernels in act_quant.cuh (implemented in act_quant.cu).
// Inputs are validated by the callers in bindings.cpp.
#pragma once
#include <ATen/Tensor.h>

namespace quantfuse {

// out[T, d] = silu(x[:, :d]) * x[:, d:], x contiguous [T, 2d].
void launch_silu_and_mul(const at::Tensor& out, const at::Tensor& x);

// q[T, H] / s (element (t, g) at s + t*s_stride_t + g*s_stride_g) from
// act(x): gated -> x is [T, 2H] and act = silu(gate) * up rounded to x's dtype;
// otherwise x is [T, H] and act = identity. unroll: 0 = auto, else 1, 2 or 4
// (16-byte vectors of gate / up per thread per group, i.e. 8, 16 or 32 elements for
// 16-bit inputs); blocks_per_sm: 0 = persistent grid sized by
// occupancy, > 0 = that many blocks per SM, -1 = one block per chunk (no loop).
// Both knobs are exposed for benchmarking.
void launch_act_group_quant(bool gated, const at::Tensor& q, const at::Tensor& s,
                            const at::Tensor& x, int64_t group_size, bool use_ue8m0,
                            int64_t s_stride_t, int64_t s_stride_g, int64_t unroll,
                            int64_t blocks_per_sm);

}  // namespace quantfuse
