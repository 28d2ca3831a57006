// Host launch of act_group_quant_kernel for one input dtype (included by
// act_quant_{f32,f16,bf16}.cu with QF_TRAITS / QF_LAUNCH_NAME defined).
#pragma once
#include "act_quant.h"
#include "act_quant.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>

namespace quantfuse {
namespace {

template <typename DT, int GS, typename Act, bool UE8M0, int NV, int MINB = 0>
void launch_group_quant(const at::Tensor& q, const at::Tensor& s, const at::Tensor& x,
                        uint32_t total_groups, uint32_t groups_per_row, int64_t hidden,
                        int64_t st, int64_t sg, int64_t blocks_per_sm) {
  using S = typename DT::Storage;
  constexpr int TPG = GS / (16 / int(sizeof(S)) * NV);
  constexpr int64_t per_block = int64_t(kThreads / TPG);
  auto kernel = act_group_quant_kernel<DT, GS, Act, UE8M0, NV, MINB>;
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
      reinterpret_cast<const S*>(x.data_ptr()), total_groups, groups_per_row, hidden, st, sg);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename DT, int GS, typename Act, bool UE8M0>
void dispatch_nv(int64_t nv, const at::Tensor& q, const at::Tensor& s, const at::Tensor& x,
                 uint32_t total, uint32_t gpr, int64_t hidden, int64_t st, int64_t sg, int64_t bps) {
  switch (nv) {
    case 1: return launch_group_quant<DT, GS, Act, UE8M0, 1>(q, s, x, total, gpr, hidden, st, sg, bps);
    case 2: return launch_group_quant<DT, GS, Act, UE8M0, 2>(q, s, x, total, gpr, hidden, st, sg, bps);
    case 4: return launch_group_quant<DT, GS, Act, UE8M0, 4>(q, s, x, total, gpr, hidden, st, sg, bps);
    default: TORCH_CHECK(false, "quantfuse: unsupported vectors per thread ", nv);
  }
}

template <typename DT, typename Act>
void dispatch_group(int64_t gs, int64_t nv, const at::Tensor& q, const at::Tensor& s,
                    const at::Tensor& x, uint32_t total, uint32_t gpr, int64_t hidden, int64_t st,
                    int64_t sg, bool ue8m0, int64_t bps) {
  if (gs == 64) {
    return ue8m0 ? dispatch_nv<DT, 64, Act, true>(nv, q, s, x, total, gpr, hidden, st, sg, bps)
                 : dispatch_nv<DT, 64, Act, false>(nv, q, s, x, total, gpr, hidden, st, sg, bps);
  }
  if (gs == 128) {
    return ue8m0 ? dispatch_nv<DT, 128, Act, true>(nv, q, s, x, total, gpr, hidden, st, sg, bps)
                 : dispatch_nv<DT, 128, Act, false>(nv, q, s, x, total, gpr, hidden, st, sg, bps);
  }
  TORCH_CHECK(false, "quantfuse: unsupported group_size ", gs);
}

}  // namespace

void QF_LAUNCH_NAME(bool gated, int64_t gs, int64_t nv, const at::Tensor& q, const at::Tensor& s,
                    const at::Tensor& x, uint32_t total, uint32_t gpr, int64_t hidden, int64_t st,
                    int64_t sg, bool ue8m0, int64_t bps) {
  return gated ? dispatch_group<QF_TRAITS, SiluMul>(gs, nv, q, s, x, total, gpr, hidden, st, sg, ue8m0, bps)
               : dispatch_group<QF_TRAITS, Identity>(gs, nv, q, s, x, total, gpr, hidden, st, sg, ue8m0, bps);
}

}  // namespace quantfuse
