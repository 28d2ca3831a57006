// Host-side launch and instantiation of the act_quant.cuh kernel family.
// Every instantiation comes from the tables below (dtype x group x activation x
// unroll); the quant scheme is a kernel argument (Fp8GroupScheme{use_ue8m0}).
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

// (group size, groups per thread).
#define QF_GROUP_UNROLL_TABLE(X) \
  X(64, 1) X(64, 2) X(64, 4) X(128, 1) X(128, 2) X(128, 4)

// Unroll used when the caller passes 0: UNROLL groups per thread while the grid
// still has several waves of blocks, else 1 so small problems spread over all SMs.
constexpr int kDefaultUnroll = 1;  // best of 1/2/4 on the H100 (benchmarks/NOTES.md)

template <typename DT, int GS, typename Act, int UNROLL>
void launch_group_quant(const at::Tensor& q, const at::Tensor& s, const at::Tensor& x,
                        uint32_t total_groups, uint32_t groups_per_row, int64_t hidden,
                        int64_t st, int64_t sg, bool ue8m0, int64_t blocks_per_sm) {
  using S = typename DT::Storage;
  constexpr int TPG = GS / (16 / sizeof(S));
  constexpr int64_t per_block = int64_t(kThreads / TPG) * UNROLL;
  auto kernel = act_group_quant_kernel<DT, GS, Act, Fp8GroupScheme, UNROLL>;
  int64_t blocks = (int64_t(total_groups) + per_block - 1) / per_block;
  if (blocks_per_sm >= 0) {
    // Persistent grid: as many blocks as fit on the SMs at once (0 = occupancy).
    static int resident = [&] {
      int n = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, 0));
      return n > 0 ? n : 1;
    }();
    const int64_t per_sm = blocks_per_sm > 0 ? blocks_per_sm : resident;
    const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    blocks = std::min(blocks, per_sm * sms);
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          reinterpret_cast<uint8_t*>(q.data_ptr()), s.data_ptr<float>(),
          reinterpret_cast<const S*>(x.data_ptr()), total_groups, groups_per_row, hidden, st, sg,
          Fp8GroupScheme{ue8m0});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename DT, typename Act>
void dispatch_group(int64_t gs, int64_t unroll, const at::Tensor& q, const at::Tensor& s,
                    const at::Tensor& x, uint32_t total, uint32_t gpr, int64_t hidden,
                    int64_t st, int64_t sg, bool ue8m0, int64_t bps) {
#define QF_CASE(GS_, U_)                                                                    \
  if (gs == GS_ && unroll == U_) {                                                          \
    return launch_group_quant<DT, GS_, Act, U_>(q, s, x, total, gpr, hidden, st, sg, ue8m0, \
                                                bps);                                       \
  }
  QF_GROUP_UNROLL_TABLE(QF_CASE)
#undef QF_CASE
  TORCH_CHECK(false, "quantfuse: unsupported group_size ", gs, " / unroll ", unroll);
}

}  // namespace

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
  if (unroll == 0) unroll = kDefaultUnroll;
  const auto dt = x.scalar_type();
#define QF_DTYPE_CASE(ATEN_T, TRAITS)                                                           \
  if (dt == ATEN_T) {                                                                           \
    return gated ? dispatch_group<TRAITS, SiluMul>(group_size, unroll, q, s, x, uint32_t(total), \
                                                   uint32_t(gpr), hidden, s_stride_t,            \
                                                   s_stride_g, use_ue8m0, blocks_per_sm)                        \
                 : dispatch_group<TRAITS, Identity>(group_size, unroll, q, s, x, uint32_t(total),\
                                                    uint32_t(gpr), hidden, s_stride_t,           \
                                                    s_stride_g, use_ue8m0, blocks_per_sm);                      \
  }
  QF_DTYPE_TABLE(QF_DTYPE_CASE)
#undef QF_DTYPE_CASE
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
