// Elementwise kernel: act(x) -> input dtype (the unfused activation ops), or, with
// Q = Fp8Static<A>, act(x) -> static per-tensor FP8 (its scale is an input: nothing to
// reduce). Block b handles chunk (b % chunks_per_row) of row (b / chunks_per_row), a chunk
// being blockDim.x vectors (the launcher sizes blocks to tile the row): one division per
// thread, 64-bit offsets. VEC is 16 / sizeof(element) when the row allows
// it, else 1 (scalar path for odd widths, activation only).
#pragma once

#include "quant_schemes.cuh"

#include <type_traits>

namespace quantfuse {

template <typename DT, typename Act, int VEC, bool IL, typename Q = void>
__global__ void __launch_bounds__(kThreads) act_kernel(
    void* __restrict__ out, const typename DT::Storage* __restrict__ gate, const typename DT::Storage* __restrict__ up,
    int64_t in_stride, int64_t d, uint32_t chunks_per_row, const float* __restrict__ scale, const ActArgs aa) {
  using S = typename DT::Storage;
  constexpr bool kQuant = !std::is_void_v<Q>;
  static_assert(!kQuant || VEC * sizeof(S) == 16, "the static FP8 path takes 16-byte vectors");
  pdl_wait_and_trigger();
  const uint32_t row = blockIdx.x / chunks_per_row;
  const uint32_t chunk = blockIdx.x - row * chunks_per_row;
  const int64_t col = (int64_t(chunk) * blockDim.x + threadIdx.x) * VEC;
  if (col >= d) return;
  const int64_t row_off = int64_t(row) * in_stride, out_off = int64_t(row) * d + col;
  if constexpr (VEC * sizeof(S) == 16) {
    uint4 gv, uv;
    load_operands<DT, Act::kGated, IL, false>(gv, uv, gate, up, row_off, col);
    if constexpr (IL) split_interleaved<DT>(gv, uv);
    const S* gs = reinterpret_cast<const S*>(&gv);
    const S* us = reinterpret_cast<const S*>(&uv);
    float y[VEC];
    uint4 ov;
    if constexpr (DT::kPacked) {
      uint32_t yp[VEC / 2];
      Act::template pairs<DT, VEC>(yp, reinterpret_cast<const uint32_t*>(gs), reinterpret_cast<const uint32_t*>(us),
                                   true, aa);
      if constexpr (kQuant) {
#pragma unroll
        for (int i = 0; i < VEC; i += 2) {
          y[i] = DT::lo(yp[i / 2]);
          y[i + 1] = DT::hi(yp[i / 2]);
        }
      } else {
        ov = *reinterpret_cast<const uint4*>(yp);
      }
    } else {
      float gf[VEC], uf[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        gf[i] = DT::to_float(gs[i]);
        uf[i] = Act::kGated ? DT::to_float(us[i]) : 0.0f;
      }
      Act::template apply<DT, VEC>(y, gf, uf, true, aa);
      if constexpr (!kQuant) {
        S o[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) o[i] = DT::from_float(y[i]);
        ov = *reinterpret_cast<const uint4*>(o);
      }
    }
    if constexpr (kQuant) {
      const auto st = Q::prepare(__ldg(scale));
      uint32_t w[VEC / 4];
      Q::template encode<VEC>(y, st, w);
      store_bytes<VEC>(static_cast<uint8_t*>(out) + out_off, w, 0);
    } else {
      *reinterpret_cast<uint4*>(static_cast<S*>(out) + out_off) = ov;
    }
  } else {
    static_assert(VEC == 1, "scalar path");
    float g[1] = {DT::to_float(IL ? gate[row_off + 2 * col] : gate[row_off + col])};
    float u[1] = {0.0f};
    if constexpr (Act::kGated) u[0] = DT::to_float(IL ? gate[row_off + 2 * col + 1] : up[row_off + col]);
    float y[1];
    Act::template apply<DT, 1>(y, g, u, true, aa);
    static_cast<S*>(out)[out_off] = DT::from_float(y[0]);
  }
}

}  // namespace quantfuse
