// Host-side dispatch of the act_quant.cuh kernel family. The group-quant kernels
// (dtype x group x activation x UE8M0 x vectors per thread) are instantiated in
// act_quant_{f32,f16,bf16}.cu; the unfused silu_and_mul kernel here.
#include "act_quant.h"
#include "act_quant.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace quantfuse {
namespace {

// Input dtypes: (ATen scalar type, traits).
#define QF_DTYPE_TABLE(X) \
  X(at::kFloat, F32)      \
  X(at::kHalf, F16)       \
  X(at::kBFloat16, BF16)

constexpr int kDefaultVectors = 1;  // NV when the caller passes 0: best of 1/2/4 (benchmarks/NOTES.md)

}  // namespace

// Defined in act_quant_group.cuh, instantiated per dtype in act_quant_{f32,f16,bf16}.cu
// (three translation units so the 24 kernels of each dtype build in parallel).
void launch_group_f32(bool gated, int64_t gs, int64_t nv, const at::Tensor& q, const at::Tensor& s,
                      const at::Tensor& x, uint32_t total, uint32_t gpr, int64_t hidden, int64_t st,
                      int64_t sg, bool ue8m0, int64_t bps);
void launch_group_f16(bool gated, int64_t gs, int64_t nv, const at::Tensor& q, const at::Tensor& s,
                      const at::Tensor& x, uint32_t total, uint32_t gpr, int64_t hidden, int64_t st,
                      int64_t sg, bool ue8m0, int64_t bps);
void launch_group_bf16(bool gated, int64_t gs, int64_t nv, const at::Tensor& q, const at::Tensor& s,
                       const at::Tensor& x, uint32_t total, uint32_t gpr, int64_t hidden, int64_t st,
                       int64_t sg, bool ue8m0, int64_t bps);

void launch_act_group_quant(bool gated, const at::Tensor& q, const at::Tensor& s,
                            const at::Tensor& x, int64_t group_size, bool use_ue8m0,
                            int64_t s_stride_t, int64_t s_stride_g, int64_t unroll,
                            int64_t blocks_per_sm) {
  const int64_t in_width = x.size(-1);
  const int64_t hidden = gated ? in_width / 2 : in_width;
  const int64_t tokens = in_width == 0 ? 0 : x.numel() / in_width;
  if (tokens == 0 || hidden == 0) return;
  const int64_t gpr = hidden / group_size;
  const int64_t total = tokens * gpr;
  // 32-bit group indices; the persistent loop adds one grid stride past the end.
  TORCH_CHECK(total < (int64_t(1) << 31), "quantfuse: too many groups (", total, ")");
  if (unroll == 0) unroll = kDefaultVectors;
  const auto dt = x.scalar_type();
  if (dt == at::kFloat)
    return launch_group_f32(gated, group_size, unroll, q, s, x, uint32_t(total), uint32_t(gpr), hidden,
                            s_stride_t, s_stride_g, use_ue8m0, blocks_per_sm);
  if (dt == at::kHalf)
    return launch_group_f16(gated, group_size, unroll, q, s, x, uint32_t(total), uint32_t(gpr), hidden,
                            s_stride_t, s_stride_g, use_ue8m0, blocks_per_sm);
  if (dt == at::kBFloat16)
    return launch_group_bf16(gated, group_size, unroll, q, s, x, uint32_t(total), uint32_t(gpr), hidden,
                             s_stride_t, s_stride_g, use_ue8m0, blocks_per_sm);
  TORCH_CHECK(false, "quantfuse: unsupported dtype ", dt);
}

namespace {
template <typename DT>
void launch_silu_typed(const at::Tensor& out, const at::Tensor& x, int64_t tokens, int64_t d) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  auto stream = at::cuda::getCurrentCUDAStream();
  // 16-byte path needs every row start aligned: d a multiple of VEC and aligned bases.
  const bool vec_ok = d % VEC == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0;
  const int64_t v = vec_ok ? VEC : 1;
  const int64_t chunks = (d + kThreads * v - 1) / (kThreads * v);
  const int64_t blocks = tokens * chunks;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "quantfuse: silu_and_mul too large (", tokens, " rows)");
  auto* o = reinterpret_cast<S*>(out.data_ptr());
  const auto* i = reinterpret_cast<const S*>(x.data_ptr());
  if (vec_ok) {
    silu_and_mul_kernel<DT, VEC><<<unsigned(blocks), kThreads, 0, stream>>>(o, i, d, uint32_t(chunks));
  } else {
    silu_and_mul_kernel<DT, 1><<<unsigned(blocks), kThreads, 0, stream>>>(o, i, d, uint32_t(chunks));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
}  // namespace

void launch_silu_and_mul(const at::Tensor& out, const at::Tensor& x) {
  const int64_t d = x.size(-1) / 2;
  const int64_t tokens = x.size(-1) == 0 ? 0 : x.numel() / x.size(-1);
  if (tokens == 0 || d == 0) return;
  const auto dt = x.scalar_type();
#define QF_DTYPE_CASE(ATEN_T, TRAITS) \
  if (dt == ATEN_T) return launch_silu_typed<TRAITS>(out, x, tokens, d);
  QF_DTYPE_TABLE(QF_DTYPE_CASE)
#undef QF_DTYPE_CASE
  TORCH_CHECK(false, "quantfuse: unsupported dtype ", dt);
}

}  // namespace quantfuse
