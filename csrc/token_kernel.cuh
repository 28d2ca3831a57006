// act(x) -> FP8 per-token quantisation (one fp32 scale per row).
//
// A row is owned by blockDim.x threads (a multiple of 32); a block holds blockDim.y
// rows. Thread x handles the 16-byte vectors j * blockDim.x + x (j < NV) of its row,
// so each load instruction of a warp reads one contiguous span. The row amax is
// reduced with warp shuffles, then across the row's warps through shared memory (one
// named barrier per row).
//
// act_token_quant_kernel (rows up to NV * blockDim.x vectors): the grid is persistent
// and each row slot walks rows row, row + step, ...; the next row's vectors are loaded
// before this row's arithmetic and barrier (register double buffering, as in the
// group kernel), so loads stay in flight across the barrier. act(x) stays in registers
// between the amax and the encode: x is read once.
//
// act_token_quant_staged_kernel (the same rows; launch_unit.cuh launch_token_staged): the coming
// rows (one or two ahead) go to shared memory by cp.async instead of a second set of registers.
//
// act_token_quant_wide_kernel (longer rows): one pass for the amax, a second that
// recomputes act(x) (the re-read mostly hits L2) and encodes.
#pragma once

#include "group_kernel.cuh"

namespace quantfuse {

constexpr int kTokenThreads = 512;  // threads per block of the per-token kernels

// NaN-propagating max of v over the blockDim.x threads of this row. `buf` alternates
// between calls (0, 1, 0, ...): a warp can only rewrite a buffer after passing the
// next call's barrier, which every thread of the row reaches after reading this call's
// values.
__device__ __forceinline__ float row_max(float v, int buf) {
  __shared__ float partial[2][kTokenThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int warps_per_row = blockDim.x / 32;
  if (warps_per_row == 1) return v;  // a warp per row: no barrier (block-uniform branch)
  const int first = threadIdx.y * warps_per_row;
  if (threadIdx.x % 32 == 0) partial[buf][first + threadIdx.x / 32] = v;
  // a named barrier per row (ids 1..rows; at most 8 rows have several warps): the
  // block's other rows run on
  asm volatile("bar.sync %0, %1;" ::"r"(threadIdx.y + 1), "r"(blockDim.x) : "memory");
  float m = partial[buf][first];
  for (int k = 1; k < warps_per_row; ++k) m = nan_max(m, partial[buf][first + k]);
  return m;
}

template <typename DT, int NV, bool GATED, bool IL, bool EVICT_FIRST>
__device__ __forceinline__ void load_row(uint4 (&gv)[NV], uint4 (&uv)[NV], const typename DT::Storage* __restrict__ gate,
                                         const typename DT::Storage* __restrict__ up, int64_t in_stride, int64_t row,
                                         int64_t tokens, int64_t hidden) {
  constexpr int VEC = 16 / sizeof(typename DT::Storage);
  if (row >= tokens) return;
  const int64_t row_off = row * in_stride;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int64_t col = (int64_t(j) * blockDim.x + threadIdx.x) * VEC;
    if (col < hidden) load_operands<DT, GATED, IL, EVICT_FIRST>(gv[j], uv[j], gate, up, row_off, col);
  }
}

// act(x) of the thread's vectors of row `row`, rounded as the
// unfused graph stores it, in y (fp32) and yp (packed pairs, 16-bit DT), and the NaN-propagating
// max of |act(x)| over the thread's in-row vectors. fetch(j, in_row, g, u) gives vector j's operands.
template <typename DT, typename Act, int NV, bool IL, typename Fetch>
__device__ __forceinline__ float token_act(float (&y)[NV][16 / sizeof(typename DT::Storage)],
                                           uint32_t (&yp)[NV][8 / sizeof(typename DT::Storage)],
                                           const Fetch& fetch, int64_t row, int64_t tokens, int64_t hidden,
                                           const ActArgs& aa) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    // past-the-end vectors hold stale registers: keep them out of the amax
    const bool in_row = (int64_t(j) * blockDim.x + threadIdx.x) * VEC < hidden;
    uint4 ga, ua;
    fetch(j, in_row, ga, ua);
    if constexpr (IL) split_interleaved<DT>(ga, ua);
    // f16 only: its 4-vector kernel spilled 124 bytes with the exact path's call (64 without);
    // bf16 does not spill, and fewer registers there changed its occupancy for the worse
    const float m = act_round_amax<DT, Act, VEC, std::is_same_v<DT, F16>>(
        y[j], yp[j], reinterpret_cast<const S*>(&ga), reinterpret_cast<const S*>(&ua), in_row && row < tokens, aa);
    if (in_row) amax = nan_max(amax, m);
  }
  return amax;
}

// The codes of row `row` (y, yp from token_act) with the state st, and its scale.
template <typename DT, Fp8Step K, int NV>
__device__ __forceinline__ void token_store(uint8_t* __restrict__ q, float* __restrict__ s, int64_t row,
                                            int64_t hidden, const float (&y)[NV][16 / sizeof(typename DT::Storage)],
                                            const uint32_t (&yp)[NV][8 / sizeof(typename DT::Storage)],
                                            const typename Fp8Scaled<K>::State& st, const ScaleRecipe& rr) {
  constexpr int VEC = 16 / sizeof(typename DT::Storage);
  using Q = Fp8Scaled<K>;
  uint8_t* qr = q + row * hidden;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int64_t col = (int64_t(j) * blockDim.x + threadIdx.x) * VEC;
    if (col < hidden) {
      uint32_t w[VEC / 4];
      if constexpr (DT::kPacked) {
        // Rebuilt from the packed pairs (the same values: act_round_amax derives y from
        // them), so 16 registers instead of 32 per 4 vectors stay live across the row
        // barrier (f16 SiLU x Mul with 4 vectors spilled 248 bytes).
        float yr[VEC];
#pragma unroll
        for (int i = 0; i < VEC; i += 2) {
          yr[i] = DT::lo(yp[j][i / 2]);
          yr[i + 1] = DT::hi(yp[j][i / 2]);
        }
        Q::template encode<VEC, DT, kRowKernel>(yr, nullptr, st, w, rr);
      } else {
        Q::template encode<VEC, DT, kRowKernel>(y[j], nullptr, st, w, rr);
      }
      store_bytes<VEC>(qr + col, w, 0);
    }
  }
  if (threadIdx.x == 0) s[row] = Q::scale(st);
}

// One row of a persistent block: prefetch row + step into (gn, un), then quantise
// `row` from (gv, uv) with the recipe rr (Fp8Scaled<K>).
template <typename DT, typename Act, Fp8Step K, int NV, bool IL, bool EVICT_FIRST>
__device__ __forceinline__ void token_step(uint8_t* __restrict__ q, float* __restrict__ s,
                                           const typename DT::Storage* __restrict__ gate,
                                           const typename DT::Storage* __restrict__ up, int64_t in_stride,
                                           int64_t tokens, int64_t hidden, int64_t step, int buf, int64_t& row,
                                           const uint4 (&gv)[NV], const uint4 (&uv)[NV], uint4 (&gn)[NV],
                                           uint4 (&un)[NV], const ActArgs& aa, const ScaleRecipe& rr) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  load_row<DT, NV, Act::kGated, IL, EVICT_FIRST>(gn, un, gate, up, in_stride, row + step, tokens, hidden);
  float y[NV][VEC];
  uint32_t yp[NV][VEC / 2];
  auto fetch = [&](int j, bool, uint4& ga, uint4& ua) { ga = gv[j], ua = uv[j]; };
  const float amax = token_act<DT, Act, NV, IL>(y, yp, fetch, row, tokens, hidden, aa);
  const auto st = Fp8Scaled<K>::template prepare<DT, kRowKernel>(row_max(amax, buf), rr);
  if (row < tokens) token_store<DT, K, NV>(q, s, row, hidden, y, yp, st, rr);
  row += step;
}

// EVICT_FIRST: input loads as in the group kernel (act_quant.cuh ld_evict_first).
// IL: interleaved gate / up (act_quant.h Inputs). K, rr: the scale step and the recipe
// (quant_schemes.cuh Fp8Scaled).
template <typename DT, typename Act, Fp8Step K, int NV, bool EVICT_FIRST = false, bool IL = false>
__global__ void __launch_bounds__(kTokenThreads) act_token_quant_kernel(
    uint8_t* __restrict__ q, float* __restrict__ s, const typename DT::Storage* __restrict__ gate,
    const typename DT::Storage* __restrict__ up, int64_t in_stride, int64_t tokens, int64_t hidden,
    const ActArgs aa, const ScaleRecipe rr) {
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  // Row slot y of block b takes rows y * gridDim.x + b + k * step: the last, partial
  // round of rows is spread over every block's first row slots (every SM gets its share).
  int64_t row = int64_t(threadIdx.y) * gridDim.x + blockIdx.x;
  uint4 ga[NV], ua[NV], gb[NV], ub[NV];
  pdl_wait_and_trigger();
  load_row<DT, NV, Act::kGated, IL, EVICT_FIRST>(ga, ua, gate, up, in_stride, row, tokens, hidden);
  // Two rows per trip with the buffers swapped. The bound is uniform over the row's
  // threads, the only ones its barrier waits for.
  while (row < tokens) {
    token_step<DT, Act, K, NV, IL, EVICT_FIRST>(q, s, gate, up, in_stride, tokens, hidden, step, 0, row, ga, ua, gb,
                                                ub, aa, rr);
    if (row >= tokens) break;
    token_step<DT, Act, K, NV, IL, EVICT_FIRST>(q, s, gate, up, in_stride, tokens, hidden, step, 1, row, gb, ub, ga,
                                                ua, aa, rr);
  }
}

// Copies of the thread's vectors of row `row` into its own slots of shared memory (vector j's
// operand k at mine[(j * kOps + k) * blockDim.x]), as one commit group. `after`: a value computed
// from the vectors this thread last read from those slots (the row's amax), so the copies are
// issued only once those reads have landed in registers (a thread reads back only its own
// slots: no barrier).
template <typename DT, int NV, bool GATED, bool IL, bool EVICT_FIRST>
__device__ __forceinline__ void stage_row(uint4* mine, const typename DT::Storage* __restrict__ gate,
                                          const typename DT::Storage* __restrict__ up, int64_t in_stride,
                                          int64_t row, int64_t tokens, int64_t hidden, float after) {
  constexpr int VEC = 16 / sizeof(typename DT::Storage);
  constexpr int kOps = GATED ? 2 : 1;
  asm volatile("" ::"f"(after) : "memory");
  if (row < tokens) {
    const int64_t row_off = row * in_stride;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int64_t col = (int64_t(j) * blockDim.x + threadIdx.x) * VEC;
      if (col < hidden) {
        const typename DT::Storage *a, *b;
        operand_addresses<DT, IL>(a, b, gate, up, row_off, col);
        cp_async16<EVICT_FIRST>(mine + j * kOps * blockDim.x, a);
        if constexpr (GATED) cp_async16<EVICT_FIRST>(mine + (j * kOps + 1) * blockDim.x, b);
      }
    }
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

// act_token_quant_kernel with the coming rows staged in shared memory instead of a second set of
// registers. The registers of one row's vectors stay live instead of two, which keeps the
// 4-vector kernels below the register cap without spills and more warps resident. STAGES rows
// of slots per row slot of the block: with 1, the next row is copied into the slots this row was
// just read from, so its loads overlap this row's barrier and stores only; with 2, the row after
// the next goes there, and the next row's loads (issued a row earlier) overlap this row's
// arithmetic too. Dynamic shared memory: blockDim.y * STAGES * NV * (gated ? 2 : 1) * blockDim.x
// vectors (launch_unit.cuh launch_token_staged).
template <typename DT, typename Act, Fp8Step K, int NV, int STAGES, bool EVICT_FIRST = false, bool IL = false>
__global__ void __launch_bounds__(kTokenThreads) act_token_quant_staged_kernel(
    uint8_t* __restrict__ q, float* __restrict__ s, const typename DT::Storage* __restrict__ gate,
    const typename DT::Storage* __restrict__ up, int64_t in_stride, int64_t tokens, int64_t hidden,
    const ActArgs aa, const ScaleRecipe rr) {
  static_assert(STAGES == 1 || STAGES == 2, "one or two rows staged ahead");
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  constexpr int kOps = Act::kGated ? 2 : 1;
  extern __shared__ uint4 stage[];
  const int64_t slots = int64_t(NV) * kOps * blockDim.x;  // one row's
  uint4* const first = stage + int64_t(threadIdx.y) * STAGES * slots + threadIdx.x;
  const int64_t step = int64_t(gridDim.x) * blockDim.y;
  int64_t row = int64_t(threadIdx.y) * gridDim.x + blockIdx.x;  // as act_token_quant_kernel
  pdl_wait_and_trigger();
  stage_row<DT, NV, Act::kGated, IL, EVICT_FIRST>(first, gate, up, in_stride, row, tokens, hidden, 0.0f);
  if constexpr (STAGES == 2) {
    stage_row<DT, NV, Act::kGated, IL, EVICT_FIRST>(first + slots, gate, up, in_stride, row + step, tokens, hidden,
                                                    0.0f);
  }
  int buf = 0;
  while (row < tokens) {  // uniform over the row's threads, the only ones its barrier waits for
    // one commit group per staged row, in row order: this row's is complete once at most
    // STAGES - 1 newer ones are pending
    if constexpr (STAGES == 2) {
      asm volatile("cp.async.wait_group 1;" ::: "memory");
    } else {
      asm volatile("cp.async.wait_group 0;" ::: "memory");
    }
    uint4* const mine = STAGES == 2 && buf ? first + slots : first;
    // each vector read from its slot where it is used: one vector's operands live at a time
    auto fetch = [&](int j, bool in_row, uint4& ga, uint4& ua) {
      if (!in_row) return;  // a slot past the row's end was never written
      ga = mine[j * kOps * blockDim.x];
      if constexpr (Act::kGated) ua = mine[(j * kOps + 1) * blockDim.x];
    };
    float y[NV][VEC];
    uint32_t yp[NV][VEC / 2];
    const float amax = token_act<DT, Act, NV, IL>(y, yp, fetch, row, tokens, hidden, aa);
    const int64_t next = row + step;
    stage_row<DT, NV, Act::kGated, IL, EVICT_FIRST>(mine, gate, up, in_stride, next + (STAGES - 1) * step, tokens,
                                                    hidden, amax);
    const auto st = Fp8Scaled<K>::template prepare<DT, kRowKernel>(row_max(amax, buf), rr);
    buf ^= 1;
    token_store<DT, K, NV>(q, s, row, hidden, y, yp, st, rr);
    row = next;
  }
}

template <typename DT, typename Act, bool IL>
__device__ __forceinline__ void act_vector(float (&y)[16 / sizeof(typename DT::Storage)], float& amax,
                                           const typename DT::Storage* gate, const typename DT::Storage* up,
                                           int64_t row_off, int64_t col, const ActArgs& aa) {
  using S = typename DT::Storage;
  uint4 gv, uv;
  load_operands<DT, Act::kGated, IL, false>(gv, uv, gate, up, row_off, col);
  if constexpr (IL) split_interleaved<DT>(gv, uv);
  uint32_t yp[8 / sizeof(S)];
  amax = nan_max(amax, act_round_amax<DT, Act, 16 / sizeof(S)>(y, yp, reinterpret_cast<const S*>(&gv),
                                                               reinterpret_cast<const S*>(&uv), true, aa));
}

// Rows too long for registers: blockDim.x = kTokenThreads, one row per block, chunks of
// NV vectors per thread.
template <typename DT, typename Act, Fp8Step K, int NV, bool IL = false>
__global__ void __launch_bounds__(kTokenThreads) act_token_quant_wide_kernel(
    uint8_t* __restrict__ q, float* __restrict__ s, const typename DT::Storage* __restrict__ gate,
    const typename DT::Storage* __restrict__ up, int64_t in_stride, int64_t tokens, int64_t hidden,
    const ActArgs aa, const ScaleRecipe rr) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  using Q = Fp8Scaled<K>;
  pdl_wait_and_trigger();
  const int64_t row = blockIdx.x;
  const int64_t row_off = row * in_stride;
  uint8_t* qr = q + row * hidden;
  const int64_t chunk = int64_t(NV) * blockDim.x * VEC;
  float amax = 0.0f;
  float y[VEC];
  for (int64_t c0 = 0; c0 < hidden; c0 += chunk) {
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int64_t col = c0 + (int64_t(j) * blockDim.x + threadIdx.x) * VEC;
      if (col < hidden) act_vector<DT, Act, IL>(y, amax, gate, up, row_off, col, aa);
    }
  }
  const auto st = Q::template prepare<DT, kRowKernel>(row_max(amax, 0), rr);
  for (int64_t c0 = 0; c0 < hidden; c0 += chunk) {
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const int64_t col = c0 + (int64_t(j) * blockDim.x + threadIdx.x) * VEC;
      if (col < hidden) {
        float unused = 0.0f;
        act_vector<DT, Act, IL>(y, unused, gate, up, row_off, col, aa);
        uint32_t w[VEC / 4];
        Q::template encode<VEC, DT, kRowKernel>(y, nullptr, st, w, rr);
        store_bytes<VEC>(qr + col, w, 0);
      }
    }
  }
  if (threadIdx.x == 0) s[row] = Q::scale(st);
}

}  // namespace quantfuse
