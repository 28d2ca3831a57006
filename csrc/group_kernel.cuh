// act(x) -> per-group quantisation, one kernel template for every activation and
// per-group scheme (FP8 per-token-group with any dynamic recipe, MXFP8, MXFP4).
//
// A sub-warp of TPG = GS / (VEC * NV) threads owns one group; each thread loads NV
// 16-byte vectors of gate (and NV of up), vector j at group offset (j * TPG + lane) *
// VEC so every load instruction of the sub-warp reads one contiguous span. amax is
// reduced with shuffles inside the sub-warp; each thread writes its NV * VEC encoded
// elements, lane 0 the scale. Groups are numbered row-major over [T, G]; the grid is
// persistent (sized to fill the SMs), each sub-warp walks groups gi, gi + step, ...
// keeping (token, group) incrementally (no division in the loop), and the next
// iteration's loads are issued before this iteration's arithmetic (register double
// buffering). The loop bound is block-uniform so every lane reaches the shuffles.
// Interleaved inputs (IL): the two 16-byte vectors of a thread's 2 * VEC inputs take the
// place of its gate and up vectors, and are split in registers where they are used.
// Where the scales go is the Scales policy's (StridedScales; the experts ops' ExpertScales).
#pragma once

#include "quant_schemes.cuh"
#include "scale_layout.h"

namespace quantfuse {

template <typename DT, int GS, int NV, bool GATED, bool IL, bool EVICT_FIRST>
__device__ __forceinline__ void load_group(uint4 (&gv)[NV], uint4 (&uv)[NV],
                                           const typename DT::Storage* __restrict__ gate,
                                           const typename DT::Storage* __restrict__ up, int64_t in_stride,
                                           bool valid, uint32_t t, uint32_t g, int lane) {
  constexpr int VEC = 16 / sizeof(typename DT::Storage);
  constexpr int TPG = GS / (VEC * NV);
  const int64_t row_off = int64_t(t) * in_stride, col = int64_t(g) * GS + lane * VEC;
  // An invalid (past-the-end) group keeps stale registers: its sub-warp reduces and
  // computes garbage that is never stored (shuffles stay inside the sub-warp).
  if (valid) {
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      load_operands<DT, GATED, IL, EVICT_FIRST>(gv[j], uv[j], gate, up, row_off, col + j * TPG * VEC);
    }
  }
}

// act(x) for N elements held as raw input bits, rounded to the input dtype as the
// unfused graph stores it ("Intermediate rounding"), and the NaN-propagating max of
// |act(x)| over them. 16-bit types also return the packed pairs in yp (Act::pairs) and
// take the max on pairs (HMNMX2).
// kCallFree16: SiLU's exact path without a call (silu_big_16bit; 16-bit DT only), for
// kernels short of registers (the f16 per-token kernel).
template <typename DT, typename Act, int N, bool kCallFree16 = false>
__device__ __forceinline__ float act_round_amax(float (&y)[N], uint32_t (&yp)[(N + 1) / 2],
                                                const typename DT::Storage* gs,
                                                const typename DT::Storage* us, bool valid, const ActArgs& aa) {
  if constexpr (DT::kPacked) {
    Act::template pairs<DT, N, kCallFree16>(yp, reinterpret_cast<const uint32_t*>(gs),
                                            reinterpret_cast<const uint32_t*>(us), valid, aa);
    uint32_t m2 = 0;
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const uint32_t p = yp[i / 2];
      m2 = Act::kNonNegative ? DT::max2(m2, p) : DT::amax2(m2, p);
      y[i] = DT::lo(p);
      y[i + 1] = DT::hi(p);
    }
    return nan_max(DT::lo(m2), DT::hi(m2));
  } else {
    float gf[N], uf[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      gf[i] = DT::to_float(gs[i]);
      uf[i] = Act::kGated ? DT::to_float(us[i]) : 0.0f;
    }
    Act::template apply<DT, N>(y, gf, uf, valid, aa);
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < N; ++i) amax = nan_max(amax, fabsf(y[i]));
    return amax;
  }
}

// Where a group kernel stores the scale of group (t, g) (QuantParams::s): at t * stride_t +
// g * stride_g, or (swizzled, MX) in the 128x4 tiled layout of row-block stride stride_t, whose
// padding prologue() zeroes before the groups run (it returns whether they run). The experts
// ops' scales are the other policy (experts_kernel.cuh ExpertScales).
struct StridedScales {
  int64_t stride_t, stride_g;
  bool swizzled;
  // offset() is per lane, called by the lane that stores (ExpertScales': warp-collective)
  static constexpr bool kWarpOffset = false;
  __device__ __forceinline__ int64_t offset(uint32_t t, uint32_t g, bool = true) const {
    return swizzled ? swizzled_scale_offset(t, g, stride_t) : int64_t(t) * stride_t + int64_t(g) * stride_g;
  }
  template <typename Scale>
  __device__ __forceinline__ bool prologue(Scale* s, uint32_t tokens, uint32_t groups) const {
    if (swizzled) {
      zero_scale_padding(s, tokens, groups, stride_t, blockIdx.x * blockDim.x + threadIdx.x, gridDim.x * blockDim.x);
    }
    return true;
  }
};

// The group after (t, g) of this sub-warp (gi: its index): (gi + step, ...).
__device__ __forceinline__ void next_group(uint32_t& gi, uint32_t& t, uint32_t& g, uint32_t step, uint32_t step_t,
                                           uint32_t step_g, uint32_t gpr) {
  gi += step;
  t += step_t;
  g += step_g;
  if (g >= gpr) { g -= gpr; ++t; }
}

// Compute and store group (t, g) (index gi) from its vectors (ga, ua; interleaved inputs still
// raw). after_act(amax) runs once act(x) is in registers and the vectors are dead: the staged
// kernel issues its next copies into their slots there.
template <typename DT, int GS, typename Act, typename Scheme, int NV, bool IL, typename Scales, typename AfterAct>
__device__ __forceinline__ void group_compute(uint8_t* __restrict__ q, typename Scheme::Scale* __restrict__ s,
                                              uint32_t total_groups, int64_t hidden, const Scales& sc, int lane,
                                              uint32_t gi, uint32_t t, uint32_t g, uint4 (&ga)[NV], uint4 (&ua)[NV],
                                              const ActArgs& aa, const ScaleRecipe& rr, AfterAct after_act) {
  using S = typename DT::Storage;
  constexpr int VEC = 16 / sizeof(S);
  constexpr int EPT = VEC * NV;  // elements per thread per group
  constexpr int TPG = GS / EPT;
  constexpr int kVecBytes = VEC * Scheme::kBits / 8;  // encoded bytes of one vector
  if constexpr (IL) {
#pragma unroll
    for (int j = 0; j < NV; ++j) split_interleaved<DT>(ga[j], ua[j]);
  }
  float y[EPT];
  uint32_t yp[EPT / 2];
  float amax = act_round_amax<DT, Act, EPT>(y, yp, reinterpret_cast<const S*>(ga),
                                            reinterpret_cast<const S*>(ua), gi < total_groups, aa);
  after_act(amax);
  // All 32 lanes take part; xor offsets < TPG stay inside the sub-warp.
#pragma unroll
  for (int off = TPG / 2; off > 0; off >>= 1) {
    amax = nan_max(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  }
  const auto st = Scheme::template prepare<DT>(amax, rr);
  if (gi < total_groups) {
    uint32_t w[(EPT * Scheme::kBits + 31) / 32];
    Scheme::template encode<EPT, DT>(y, yp, st, w, rr);
    uint8_t* qp = q + (int64_t(t) * hidden + int64_t(g) * GS + lane * VEC) * Scheme::kBits / 8;
#pragma unroll
    for (int j = 0; j < NV; ++j) store_bytes<kVecBytes>(qp + j * TPG * kVecBytes, w, j * kVecBytes);
    if constexpr (!Scales::kWarpOffset) {
      if (lane == 0) s[sc.offset(t, g)] = Scheme::scale(st);
    }
  }
  // a warp-collective offset (every lane; the next group's loads are in flight meanwhile), last,
  // where the fewest values are live
  if constexpr (Scales::kWarpOffset) {
    const int64_t so = sc.offset(t, g, gi < total_groups);
    if (gi < total_groups && lane == 0) s[so] = Scheme::scale(st);
  }
}

// One step of a sub-warp: prefetch the group after (t, g) into (gn, un), then
// compute and store group (t, g) from (gv, uv).
template <typename DT, int GS, typename Act, typename Scheme, int NV, bool IL, bool EVICT_FIRST, typename Scales>
__device__ __forceinline__ void group_step(
    uint8_t* __restrict__ q, typename Scheme::Scale* __restrict__ s, const typename DT::Storage* __restrict__ gate,
    const typename DT::Storage* __restrict__ up, int64_t in_stride, uint32_t total_groups, uint32_t gpr,
    int64_t hidden, const Scales& sc, uint32_t step, uint32_t step_t, uint32_t step_g,
    int lane,
    uint32_t& gi, uint32_t& t, uint32_t& g, const uint4 (&gv)[NV], const uint4 (&uv)[NV],
    uint4 (&gn)[NV], uint4 (&un)[NV], const ActArgs& aa, const ScaleRecipe& rr) {
  uint32_t gin = gi, tn = t, gn_ = g;
  next_group(gin, tn, gn_, step, step_t, step_g, gpr);
  load_group<DT, GS, NV, Act::kGated, IL, EVICT_FIRST>(gn, un, gate, up, in_stride, gin < total_groups, tn, gn_,
                                                       lane);
  uint4 ga[NV], ua[NV];
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    ga[j] = gv[j];
    ua[j] = uv[j];
  }
  group_compute<DT, GS, Act, Scheme, NV, IL>(q, s, total_groups, hidden, sc, lane, gi, t, g, ga, ua, aa, rr,
                                             [](float) {});
  gi = gin;
  t = tn;
  g = gn_;
}

// A sub-warp's walk over the groups on the persistent grid (both group kernels): its lane, the
// step between its groups (in groups, and as tokens and groups) and its current group (gi, and
// as (t, g)); wbase, its warp's first group of the step, is warp-uniform. Warp w of block b takes
// groups (w * gridDim.x + b) * GPW + [0, GPW) of each step, so a step's last, partial round of
// groups is spread over every block's first warps (every SM gets its share) instead of over the
// first blocks. TPG = GS / (VEC * NV) threads own a group (a sub-warp).
template <typename DT, int GS, int NV>
struct GroupWalk {
  static constexpr int EPT = 16 / int(sizeof(typename DT::Storage)) * NV;  // elements per thread per group
  static constexpr int TPG = GS / EPT;
  static_assert(TPG >= 1 && TPG <= 32 && 32 % TPG == 0 && TPG * EPT == GS, "bad group split");
  static constexpr int GPS = kThreads / TPG;  // groups per block per step
  static constexpr int GPW = 32 / TPG;        // groups per warp per step
  int lane;
  uint32_t gpr, step, step_t, step_g, wbase, gi, t, g;
  __device__ __forceinline__ explicit GroupWalk(uint32_t groups_per_row)
      : lane(threadIdx.x % TPG), gpr(groups_per_row), step(gridDim.x * GPS) {  // total < 2^31: no overflow
    step_t = step / gpr;
    step_g = step - step_t * gpr;
    wbase = (threadIdx.x / 32 * gridDim.x + blockIdx.x) * GPW;
    gi = wbase + threadIdx.x % 32 / TPG;
    t = gi / gpr;
    g = gi - t * gpr;
  }
  __device__ __forceinline__ void next(uint32_t& i, uint32_t& ti, uint32_t& gi_) const {
    next_group(i, ti, gi_, step, step_t, step_g, gpr);
  }
};

// MINB > 0 caps registers so that MINB blocks fit on an SM (tried for NV = 2 with
// MINB = 3: spills, 40% slower; docs/decisions/003-vectors-per-thread.md). EVICT_FIRST: ld_evict_first.
// IL: interleaved gate / up (act_quant.h Inputs). Scales: where the scales go (StridedScales).
// rr: the FP8 recipe (act_quant.h ScaleRecipe; MX schemes: unused).
template <typename DT, int GS, typename Act, typename Scheme, int NV, int MINB = 0, bool EVICT_FIRST = false,
          bool IL = false, typename Scales = StridedScales>
__global__ void __launch_bounds__(kThreads, MINB) act_group_quant_kernel(
    uint8_t* __restrict__ q, typename Scheme::Scale* __restrict__ s, const typename DT::Storage* __restrict__ gate,
    const typename DT::Storage* __restrict__ up, int64_t in_stride, uint32_t total_groups, uint32_t groups_per_row,
    int64_t hidden, const Scales sc, const ActArgs aa, const ScaleRecipe rr) {
  GroupWalk<DT, GS, NV> w(groups_per_row);
  uint4 ga[NV], ua[NV], gb[NV], ub[NV];
  pdl_wait_and_trigger();
  load_group<DT, GS, NV, Act::kGated, IL, EVICT_FIRST>(ga, ua, gate, up, in_stride, w.gi < total_groups, w.t, w.g,
                                                       w.lane);
  if (!sc.prologue(s, total_groups / w.gpr, w.gpr)) return;
  // Two steps per trip with the buffers swapped: no register copies between steps.
  // The bound is warp-uniform (no block barrier past the prologue), so every lane reaches
  // the shuffles and warps past the end stop computing.
  while (w.wbase < total_groups) {
    group_step<DT, GS, Act, Scheme, NV, IL, EVICT_FIRST>(q, s, gate, up, in_stride, total_groups, w.gpr, hidden, sc,
                                                         w.step, w.step_t, w.step_g, w.lane, w.gi, w.t, w.g, ga, ua,
                                                         gb, ub, aa, rr);
    w.wbase += w.step;
    if (w.wbase >= total_groups) break;
    group_step<DT, GS, Act, Scheme, NV, IL, EVICT_FIRST>(q, s, gate, up, in_stride, total_groups, w.gpr, hidden, sc,
                                                         w.step, w.step_t, w.step_g, w.lane, w.gi, w.t, w.g, gb, ub,
                                                         ga, ua, aa, rr);
    w.wbase += w.step;
  }
}

// Copies of this thread's vectors of group (t, g) into its own slots (vector j's operand k at
// mine[(j * kOps + k) * kThreads]) by cp.async, as one commit group (empty past the end).
// `after`: a value computed from the vectors this thread last read from those slots, so the
// copies are issued only once those reads have landed in registers (a thread reads back only
// its own slots: no barrier). As the per-token kernel's stage_row.
template <typename DT, int GS, int NV, bool GATED, bool EVICT_FIRST>
__device__ __forceinline__ void stage_group(uint4* mine, const typename DT::Storage* __restrict__ gate,
                                            const typename DT::Storage* __restrict__ up, int64_t in_stride,
                                            bool valid, uint32_t t, uint32_t g, int lane, float after) {
  constexpr int VEC = 16 / sizeof(typename DT::Storage);
  constexpr int TPG = GS / (VEC * NV);
  constexpr int kOps = GATED ? 2 : 1;
  asm volatile("" ::"f"(after) : "memory");
  if (valid) {
    const int64_t row_off = int64_t(t) * in_stride, col = int64_t(g) * GS + lane * VEC;
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      const typename DT::Storage *a, *b;
      operand_addresses<DT, false>(a, b, gate, up, row_off, col + j * TPG * VEC);
      cp_async16<EVICT_FIRST>(mine + j * kOps * kThreads, a);
      if constexpr (GATED) cp_async16<EVICT_FIRST>(mine + (j * kOps + 1) * kThreads, b);
    }
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// act_group_quant_kernel with the coming groups staged in shared memory by cp.async instead of a
// second set of registers (the per-token kernel's staging, for groups): each thread keeps
// AHEAD slots of its NV vectors per operand and reads back only its own. A group's slot is
// refilled with the group AHEAD steps later as soon as act(x) is in registers, so AHEAD groups'
// loads are in flight through the shuffles, encode and stores, AHEAD - 1 through the activation;
// the registers hold one group's vectors instead of two. Halves or separate inputs (not
// interleaved). Dynamic shared memory: group_stage_bytes.
template <typename DT, int GS, typename Act, typename Scheme, int NV, int AHEAD, bool EVICT_FIRST = false,
          typename Scales = StridedScales>
__global__ void __launch_bounds__(kThreads) act_group_quant_staged_kernel(
    uint8_t* __restrict__ q, typename Scheme::Scale* __restrict__ s, const typename DT::Storage* __restrict__ gate,
    const typename DT::Storage* __restrict__ up, int64_t in_stride, uint32_t total_groups, uint32_t groups_per_row,
    int64_t hidden, const Scales sc, const ActArgs aa, const ScaleRecipe rr) {
  static_assert(AHEAD >= 1, "at least one group staged ahead");
  constexpr int kOps = Act::kGated ? 2 : 1;
  constexpr int kSlot = NV * kOps * kThreads;  // vectors of one slot, all threads
  extern __shared__ uint4 staged[];
  uint4* const mine = staged + threadIdx.x;
  GroupWalk<DT, GS, NV> w(groups_per_row);
  pdl_wait_and_trigger();
  uint32_t gs = w.gi, ts = w.t, gs_ = w.g;  // the next group to stage
#pragma unroll
  for (int k = 0; k < AHEAD; ++k) {
    stage_group<DT, GS, NV, Act::kGated, EVICT_FIRST>(mine + k * kSlot, gate, up, in_stride, gs < total_groups, ts,
                                                      gs_, w.lane, 0.0f);
    w.next(gs, ts, gs_);
  }
  if (!sc.prologue(s, total_groups / w.gpr, w.gpr)) {
    cp_async_wait<0>();  // no copy outlives the block
    return;
  }
  int slot = 0;
  while (w.wbase < total_groups) {  // warp-uniform, as act_group_quant_kernel
    // one commit group per staged group, in order: this one's is complete once at most
    // AHEAD - 1 newer ones are pending
    cp_async_wait<AHEAD - 1>();
    uint4* const cur = mine + slot * kSlot;
    uint4 ga[NV], ua[NV];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      ga[j] = cur[j * kOps * kThreads];
      if constexpr (Act::kGated) ua[j] = cur[(j * kOps + 1) * kThreads];
    }
    group_compute<DT, GS, Act, Scheme, NV, false>(
        q, s, total_groups, hidden, sc, w.lane, w.gi, w.t, w.g, ga, ua, aa, rr, [&](float amax) {
          stage_group<DT, GS, NV, Act::kGated, EVICT_FIRST>(cur, gate, up, in_stride, gs < total_groups, ts, gs_,
                                                            w.lane, amax);
        });
    w.next(gs, ts, gs_);
    w.next(w.gi, w.t, w.g);
    w.wbase += w.step;
    slot = slot + 1 == AHEAD ? 0 : slot + 1;
  }
}

// The groups the staged kernels stage ahead (QuantParams::row_stages of a group kernel: 0, the
// next group in registers, or this). With fewer, the refill waits for this group's activation
// and the loads of the next overlap nothing; more measured no faster than two (tuning records).
constexpr int kGroupStaged = 2;

// Dynamic shared memory of act_group_quant_staged_kernel.
template <int NV, int AHEAD, bool GATED>
constexpr int group_stage_bytes() {
  return AHEAD * NV * (GATED ? 2 : 1) * kThreads * 16;
}

}  // namespace quantfuse
