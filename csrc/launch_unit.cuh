// Launchers of one (input dtype, activation) unit: included by a generated
// translation unit that defines QF_TRAITS (F32 / F16 / BF16), QF_ACT (Identity /
// SiluMul / Relu2 / SwigluOai) and QF_UNIT (the unit's name), and defines
// launch_quant_<unit>(QuantParams) and launch_act_<unit>(ActParams).
#pragma once
#include "act_quant.h"
#include "act_kernel.cuh"
#include "experts_kernel.cuh"
#include "quantfuse_units.h"  // generated: kActGated
#include "tensor_kernel.cuh"
#include "token_kernel.cuh"

#include <algorithm>

#define QF_CAT_(a, b) a##b
#define QF_CAT(a, b) QF_CAT_(a, b)

namespace quantfuse {
namespace {

using DT = QF_TRAITS;
using Act = QF_ACT;
using S = typename DT::Storage;
constexpr int kVec = 16 / sizeof(S);
static_assert(Act::kCode >= 0 && Act::kCode < kNumActs, "activation code out of the catalog's range");
static_assert(kActGated[Act::kCode] == Act::kGated, "the catalog and the Act struct disagree on gating");

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// kernel<<<grid, block, 0, stream>>>(args...), with programmatic stream serialization
// when pdl: the launch may begin before the previous kernel in the stream has finished
// (the kernels wait for it themselves, act_quant.cuh pdl_wait_and_trigger). After a
// kernel that triggers early that hides 0.4-0.7 µs of the gap (docs/decisions/006-pdl-off-by-default.md).
template <typename... KArgs, typename... Args>
const char* launch_smem(void (*kernel)(KArgs...), dim3 grid, dim3 block, int smem, cudaStream_t stream, bool pdl,
                        Args... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it: the error is returned here
    return cudaGetErrorString(err);
  }
  return launch_status();
}
// The same without dynamic shared memory.
template <typename... KArgs, typename... Args>
const char* launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t stream, bool pdl, Args... args) {
  return launch_smem(kernel, grid, block, 0, stream, pdl, args...);
}

// Whether a Scheme kernel loads this input evict-first (group_kernel.cuh ld_evict_first):
// when it fits in Scheme::kEvictFirstL2s L2 sizes (1, MXFP4 3). Inputs that fit gain 2-17
// points of copy bandwidth with the hint, the largest lose 4-10
// (docs/decisions/001-evict-first-loads-gated-by-l2.md, 002-mxfp4-evict-first-up-to-3-l2.md).
template <typename Scheme>
bool evict_first_input(const QuantParams& p) {
  return p.tokens * p.hidden * int64_t(sizeof(S)) * (Act::kGated ? 2 : 1) <= Scheme::kEvictFirstL2s * p.l2_bytes;
}

// Kernel arguments of the operands (act_quant.h Inputs).
const S* gate_ptr(const Inputs& in) { return static_cast<const S*>(in.gate); }
const S* up_ptr(const Inputs& in) { return static_cast<const S*>(in.up != nullptr ? in.up : in.gate); }
bool interleaved(const Inputs& in) { return Act::kGated && in.layout == kLayoutInterleaved; }
// The interleaved variants' IL argument: for non-gated activations the plain kernels (never
// chosen: interleaved() is false), so nothing extra is instantiated.
constexpr bool kIL = Act::kGated;

// A persistent grid of at most `most` blocks for `needed` blocks' worth of work, sized
// so that every block makes the same number of trips: with min(needed, most) blocks the
// last trip is partial, and a tail of few warps is latency-bound (ReLU^2 -> MXFP4 at
// 4096 x 2048: 85% of copy bandwidth that way, 91% balanced).
int64_t balanced_grid(int64_t needed, int64_t most) {
  const int64_t trips = (needed + most - 1) / most;
  return (needed + trips - 1) / trips;
}

// The staged group kernel (group_kernel.cuh act_group_quant_staged_kernel, AHEAD groups staged):
// a persistent grid of as many blocks as fit under its registers and shared memory.
template <typename Scheme, int GS, int NV, int AHEAD, typename Scales>
const char* launch_group_staged(const QuantParams& p, const Scales& sc) {
  constexpr int smem = group_stage_bytes<NV, AHEAD, Act::kGated>();
  const auto kernel = act_group_quant_staged_kernel<DT, GS, Act, Scheme, NV, AHEAD, false, Scales>;
  static const int resident = [&] {
    int dev = 0, optin = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (smem <= optin) {
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem);
    }
    cudaGetLastError();
    return n;
  }();
  if (resident == 0) return "quantfuse: the staged group kernel does not fit in an SM's shared memory";
  const int64_t groups_per_row = p.hidden / GS, total = p.tokens * groups_per_row;
  constexpr int64_t per_block = GroupWalk<DT, GS, NV>::GPS;
  const int64_t blocks = balanced_grid((total + per_block - 1) / per_block, int64_t(resident) * p.sms);
  return launch_smem(kernel, dim3(unsigned(blocks)), dim3(kThreads), smem, p.stream, p.pdl,
                     static_cast<uint8_t*>(p.q), static_cast<typename Scheme::Scale*>(p.s), gate_ptr(p.in),
                     up_ptr(p.in), p.in.in_stride, uint32_t(total), uint32_t(groups_per_row), p.hidden, sc,
                     p.act_args, p.recipe);
}

template <typename Scheme, int GS, int NV, typename Scales>
const char* launch_group(const QuantParams& p, const Scales& sc) {
  constexpr int TPG = GS / (kVec * NV);
  if constexpr (TPG < 1) {
    return "quantfuse: vectors per thread exceed the group";
  } else {
    if (p.row_stages > 0) {
      if constexpr (NV <= 2) {
        if (p.row_stages != kGroupStaged) return "quantfuse: the staged group kernels stage 2 groups ahead";
        if (interleaved(p.in)) return "quantfuse: the staged group kernels take halves or separate inputs";
        if (p.blocks_per_sm != 0) return "quantfuse: the staged group kernels take the persistent grid";
        return launch_group_staged<Scheme, GS, NV, kGroupStaged>(p, sc);
      } else {
        return "quantfuse: the staged group kernels take 1 or 2 vectors per thread";
      }
    }
    const int64_t groups_per_row = p.hidden / GS, total = p.tokens * groups_per_row;
    // Evict-first loads on the default vector count only (the benchmarks' other counts
    // keep plain loads). The GPU tests take both paths: the forced vector counts and bf16
    // 4097 x 2 * 7168 (117 MB; not MXFP4) load plainly, the default count on smaller
    // inputs evict-first. Interleaved inputs: the default count only (fewer instantiations).
    auto kernel = act_group_quant_kernel<DT, GS, Act, Scheme, NV, 0, false, false, Scales>;
    if constexpr (NV == Scheme::kVectors) {
      const bool ef = evict_first_input<Scheme>(p);
      if (ef) kernel = act_group_quant_kernel<DT, GS, Act, Scheme, NV, 0, true, false, Scales>;
      if (interleaved(p.in)) {
        kernel = ef ? act_group_quant_kernel<DT, GS, Act, Scheme, NV, 0, true, kIL, Scales>
                    : act_group_quant_kernel<DT, GS, Act, Scheme, NV, 0, false, kIL, Scales>;
      }
    } else {
      if (interleaved(p.in)) return "quantfuse: interleaved inputs take the default vectors per thread";
    }
    const int64_t per_block = kThreads / TPG;
    int64_t blocks = (total + per_block - 1) / per_block;
    if (p.blocks_per_sm >= 0) {
      // Persistent grid: as many blocks as fit on the SMs at once (0 = occupancy).
      // The kernel variants of one NV share their register count (layout and load hint
      // change no live state), so one occupancy serves them all.
      static const int resident = [&] {
        int n = 0;
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, 0);
        return n > 0 ? n : 1;
      }();
      blocks = balanced_grid(blocks, (p.blocks_per_sm > 0 ? p.blocks_per_sm : resident) * p.sms);
    }
    return launch(kernel, dim3(unsigned(blocks)), dim3(kThreads), p.stream, p.pdl, static_cast<uint8_t*>(p.q),
                  static_cast<typename Scheme::Scale*>(p.s), gate_ptr(p.in), up_ptr(p.in), p.in.in_stride,
                  uint32_t(total), uint32_t(groups_per_row), p.hidden, sc, p.act_args, p.recipe);
  }
}

template <typename Scheme, int GS>
const char* dispatch_vectors(const QuantParams& p) {
  const StridedScales sc{p.s_stride_t, p.s_stride_g, p.s_swizzled};
  switch (p.vectors == 0 ? Scheme::kVectors : p.vectors) {
    case 1: return launch_group<Scheme, GS, 1>(p, sc);
    case 2: return launch_group<Scheme, GS, 2>(p, sc);
    case 4: return launch_group<Scheme, GS, 4>(p, sc);
    default: return "quantfuse: vectors per thread must be 0, 1, 2 or 4";
  }
}

// The Fp8Scaled kernel of a dynamic FP8 recipe: the default ones for the op parameters' recipes
// (the amax floored at the default eps, fp32 steps, y / s, the clamp, no or exact UE8M0 scales),
// the runtime-recipe one for every other (quant_schemes.cuh Fp8Step).
Fp8Step fp8_step(const ScaleRecipe& r) {
  const bool defaults = r.amax_floor == kDefaultEps && r.scale_floor == 0.0f && r.pow2_floor == 0.0f &&
                        r.step == kStepFp32 && r.apply == kApplyDiv;
  if (defaults && r.ue8m0 == kUe8m0None) return Fp8Step::kDefault;
  if (defaults && r.ue8m0 == kUe8m0Exact) return Fp8Step::kDefaultUe8m0;
  return Fp8Step::kRecipe;
}

// Fp8Scaled<scale step> (three kinds); Mx<bits, saturate>: whether the MX rounding lets scaled values pass the
// element's largest (catalog.MX_SATURATING; kMxRoundingSaturates), the other MX fields at run time (MxArgs).
template <int GS>
const char* dispatch_fp8_group(const QuantParams& p) {
  switch (fp8_step(p.recipe)) {
    case Fp8Step::kDefault: return dispatch_vectors<Fp8Scaled<Fp8Step::kDefault>, GS>(p);
    case Fp8Step::kDefaultUe8m0: return dispatch_vectors<Fp8Scaled<Fp8Step::kDefaultUe8m0>, GS>(p);
    default: return dispatch_vectors<Fp8Scaled<Fp8Step::kRecipe>, GS>(p);
  }
}
template <template <bool> class Scheme, int GS>
const char* dispatch_bool(const QuantParams& p, bool value) {
  return value ? dispatch_vectors<Scheme<true>, GS>(p) : dispatch_vectors<Scheme<false>, GS>(p);
}
template <bool kSaturate> using Mxfp8 = Mx<8, kSaturate>;
template <bool kSaturate> using Mxfp4 = Mx<4, kSaturate>;
bool mx_saturates(const QuantParams& p) { return kMxRoundingSaturates[p.recipe.mx.rounding]; }

// The experts ops (experts_kernel.cuh): the MX group kernel with the experts' scale policy
// (s_stride_t: the row-block stride of the tiles), at 1 or 2 vectors per thread (0: the scheme's
// default; custom_ops/tuning.py EXPERTS_VECTORS), the next group in registers or staged.
template <typename Scheme>
const char* launch_experts(const QuantParams& p, const ExpertScales& sc) {
  switch (p.vectors == 0 ? Scheme::kVectors : p.vectors) {
    case 1: return launch_group<Scheme, kMxBlock, 1>(p, sc);
    case 2: return launch_group<Scheme, kMxBlock, 2>(p, sc);
    default: return "quantfuse: the experts kernels take 0, 1 or 2 vectors per thread";
  }
}
template <template <bool> class Scheme>
const char* dispatch_experts(const QuantParams& p) {
  const ExpertScales sc{p.experts.offsets, p.experts.scale_rows, p.s_stride_t, uint32_t(p.s_stride_t / kSwizzleRows),
                        p.experts.error};
  return mx_saturates(p) ? launch_experts<Scheme<true>>(p, sc) : launch_experts<Scheme<false>>(p, sc);
}

// Rows per block of a per-token launch: up to `most`, but no more than it takes to give every
// SM a block when there are fewer rows than that: a decode batch is latency-bound, and 128 rows
// of 768 in blocks of 5 rows would leave 106 of 132 SMs idle. A benchmark's forced block size
// (p.blocks_per_sm) is kept.
inline int rows_per_block(const QuantParams& p, int most) {
  if (p.blocks_per_sm > 0 || p.sms <= 0) return most;
  return int(std::max<int64_t>(1, std::min<int64_t>(most, (p.tokens + p.sms - 1) / p.sms)));
}

// The staged per-token kernel (STAGES rows staged ahead) with threads_x threads a row: rows per
// block chosen for the most threads resident per SM under the shared memory the rows' slots take
// (ties: fewer rows a block, so the last round of rows spreads over more SMs). Returns "" (not an
// error) when one row's slots exceed a block's shared memory, for the caller's register kernel.
template <Fp8Step K, int NV, int STAGES>
const char* launch_token_staged(const QuantParams& p, int threads_x, bool ef) {
  using Kernel = decltype(&act_token_quant_staged_kernel<DT, Act, K, NV, STAGES>);
  // [evict-first][interleaved]; the interleaved variants are the plain ones for non-gated activations
  static const Kernel variants[2][2] = {
      {act_token_quant_staged_kernel<DT, Act, K, NV, STAGES, false>,
       act_token_quant_staged_kernel<DT, Act, K, NV, STAGES, false, kIL>},
      {act_token_quant_staged_kernel<DT, Act, K, NV, STAGES, true>,
       act_token_quant_staged_kernel<DT, Act, K, NV, STAGES, true, kIL>}};
  const Kernel kernel = variants[ef][interleaved(p.in)];
  const int64_t row_bytes = int64_t(STAGES) * NV * (Act::kGated ? 2 : 1) * threads_x * 16;
  struct Shape { int rows = 0, per_sm = 0; };
  // by row width in warps (host-side cache; the variants share their registers and shared memory)
  static Shape shapes[kTokenThreads / 32 + 1];
  Shape& sh = shapes[threads_x / 32];
  if (sh.rows == 0) {
    int dev = 0, optin = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    for (auto& row : variants) {
      for (Kernel k : row) cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    }
    sh.rows = -1;
    int best = 0;
    for (int rows = 1; rows * threads_x <= kTokenThreads && rows * row_bytes <= optin; ++rows) {
      int n = 0;
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, rows * threads_x, int(rows * row_bytes));
      if (n * rows * threads_x > best) best = n * rows * threads_x, sh = {rows, n};
    }
    cudaGetLastError();
  }
  if (sh.rows < 0) return "";
  const int rows = rows_per_block(p, sh.rows);
  const int64_t blocks = std::min<int64_t>((p.tokens + rows - 1) / rows, int64_t(sh.per_sm) * p.sms);
  return launch_smem(kernel, dim3(unsigned(blocks)), dim3(threads_x, rows), int(rows * row_bytes), p.stream,
                     p.pdl, static_cast<uint8_t*>(p.q), static_cast<float*>(p.s), gate_ptr(p.in), up_ptr(p.in),
                     p.in.in_stride, p.tokens, p.hidden, p.act_args, p.recipe);
}

// Per-token blocks of about block_threads threads (block_threads / threads_x rows).
template <Fp8Step K, int NV>
const char* launch_token(const QuantParams& p, int threads_x, int block_threads) {
  // Every vector count takes the hint here (SiLU x FP8 per-token 4096 x 2048: 86% -> 97% of
  // copy bandwidth). Both variants use the same registers, so one occupancy serves both.
  const bool ef = evict_first_input<Fp8Scaled<K>>(p);
  if (p.row_stages > 0 && p.blocks_per_sm <= 0) {
    const char* err = p.row_stages == 2 ? launch_token_staged<K, NV, 2>(p, threads_x, ef)
                                        : launch_token_staged<K, NV, 1>(p, threads_x, ef);
    if (err == nullptr || err[0] != '\0') return err;
  }
  auto kernel = ef ? act_token_quant_kernel<DT, Act, K, NV, true> : act_token_quant_kernel<DT, Act, K, NV>;
  if (interleaved(p.in)) {
    kernel = ef ? act_token_quant_kernel<DT, Act, K, NV, true, kIL> : act_token_quant_kernel<DT, Act, K, NV, false, kIL>;
  }
  const int rows = rows_per_block(p, std::max(1, block_threads / threads_x));
  // blocks of one kernel resident per SM, by block size in warps (host-side cache)
  static int resident[kTokenThreads / 32 + 1] = {};
  int& n = resident[rows * threads_x / 32];
  if (n == 0) {
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, rows * threads_x, 0);
    n = std::max(n, 1);
  }
  // every slot filled: the kernel spreads the last, partial round of rows over all blocks
  const int64_t blocks = std::min<int64_t>((p.tokens + rows - 1) / rows, int64_t(n) * p.sms);
  return launch(kernel, dim3(unsigned(blocks)), dim3(threads_x, rows), p.stream, p.pdl, static_cast<uint8_t*>(p.q),
                static_cast<float*>(p.s), gate_ptr(p.in), up_ptr(p.in), p.in.in_stride, p.tokens, p.hidden,
                p.act_args, p.recipe);
}

// Per-token: up to 4 vectors per thread, so that a row takes few threads (a warp for
// rows up to 128 vectors: no barrier) and a block many rows (fewer barriers per byte),
// when that still leaves two blocks per SM; fewer tokens get the fewest vectors per
// thread (more threads per row, more blocks: at T = 64 four vectors per thread left
// most SMs idle and took 4.6 µs). Rows of 129-256 vectors (bf16 H = 2048) with rows to
// spare take 2 vectors per thread in 256-thread blocks instead (SiLU x Mul at 4096 x
// 2048: 85% of copy bandwidth, 82% with 4 vectors in 512-thread blocks; sweep_vectors).
// Threads are whole warps; rows past kTokenThreads * 4 vectors take two passes.
// p.vectors and p.blocks_per_sm = k (benchmarks) force the vectors per thread (where
// they fit) and blocks of about kTokenThreads / k threads. K: the recipe's scale step (fp8_step).
template <Fp8Step K>
const char* dispatch_token(const QuantParams& p) {
  const int64_t vecs = p.hidden / kVec;
  auto threads = [&](int64_t nv) { return std::max<int64_t>(32, ((vecs + nv - 1) / nv + 31) / 32 * 32); };
  const int64_t rows4 = std::max<int64_t>(1, kTokenThreads / threads(4));
  const bool many = threads(4) <= kTokenThreads && (p.tokens + rows4 - 1) / rows4 >= 2 * p.sms;
  const int forced = p.blocks_per_sm > 0 ? kTokenThreads / int(std::min<int64_t>(p.blocks_per_sm, 16)) : 0;
  if (p.vectors == 0 && many && threads(4) > 32 && threads(2) <= 128) {
    return launch_token<K, 2>(p, int(threads(2)), forced ? forced : kTokenThreads / 2);
  }
  const int block = forced ? forced : kTokenThreads;
  for (int nv : {1, 2, 4}) {
    const int64_t tx = threads(nv);
    if (tx > kTokenThreads) continue;
    if (p.vectors != 0 ? nv < p.vectors : (many && nv < 4)) continue;
    if (nv == 1) return launch_token<K, 1>(p, int(tx), block);
    if (nv == 2) return launch_token<K, 2>(p, int(tx), block);
    return launch_token<K, 4>(p, int(tx), block);
  }
  auto wide = act_token_quant_wide_kernel<DT, Act, K, 4>;
  if (interleaved(p.in)) wide = act_token_quant_wide_kernel<DT, Act, K, 4, kIL>;
  return launch(wide, dim3(unsigned(p.tokens)), dim3(kTokenThreads), p.stream, p.pdl, static_cast<uint8_t*>(p.q),
                static_cast<float*>(p.s), gate_ptr(p.in), up_ptr(p.in), p.in.in_stride, p.tokens, p.hidden,
                p.act_args, p.recipe);
}

// The elementwise kernel (act_kernel.cuh) over [tokens, hidden]: Q = void writes act(x)
// to out in the input dtype, Q = Fp8Static<A> the static FP8 codes.
template <int VEC, typename Q>
const char* launch_elementwise(void* out, const Inputs& in, int64_t tokens, int64_t hidden, const float* scale,
                               bool pdl, cudaStream_t stream, const ActArgs& aa) {
  // Chunks of whole warps that tile the row: a row of 7168 bf16 (896 vectors) takes 4 x 224
  // threads rather than 4 x 256 with the last chunk half idle.
  const int64_t vecs = (hidden + VEC - 1) / VEC;
  const int64_t chunks = (vecs + kThreads - 1) / kThreads;
  const int64_t threads = ((vecs + chunks - 1) / chunks + 31) / 32 * 32;
  auto kernel = act_kernel<DT, Act, VEC, false, Q>;
  if (interleaved(in)) kernel = act_kernel<DT, Act, VEC, kIL, Q>;
  return launch(kernel, dim3(unsigned(tokens * chunks)), dim3(unsigned(threads)), stream, pdl, out, gate_ptr(in), up_ptr(in),
                in.in_stride, hidden, uint32_t(chunks), scale, aa);
}

// Static FP8 with the one-element fp32 scale at `scale` (device memory): the elementwise kernel, the
// apply form its per-element work (no reduction, no fast path to choose).
const char* launch_static(const QuantParams& p, const float* scale) {
  if (p.recipe.apply == kApplyMulInv) {
    return launch_elementwise<kVec, Fp8Static<kApplyMulInv>>(p.q, p.in, p.tokens, p.hidden, scale, p.pdl, p.stream,
                                                             p.act_args);
  }
  return launch_elementwise<kVec, Fp8Static<kApplyDiv>>(p.q, p.in, p.tokens, p.hidden, scale, p.pdl, p.stream,
                                                        p.act_args);
}

// Dynamic per-tensor FP8 (tensor_kernel.cuh): the amax pass on min(tokens, partials_count) blocks,
// the scale step into p.s, then the static kernel's encode reading p.s as its scale (y / s or
// y * (1 / s): the binding declines apply=mul_ratio).
const char* launch_tensor(const QuantParams& p) {
  // an empty tensor has no partials: its amax is taken as 0 (reference.quantize), the scale still written
  const int64_t blocks = p.hidden > 0 ? std::min<int64_t>(p.tokens, p.partials_count) : 0;
  if (blocks > 0 && p.partials == nullptr) return "quantfuse: the per-tensor kernels need their workspace";
  const char* err = nullptr;
  if (blocks > 0) {
    auto amax = act_amax_kernel<DT, Act, false>;
    if (interleaved(p.in)) amax = act_amax_kernel<DT, Act, kIL>;
    err = launch(amax, dim3(unsigned(blocks)), dim3(kThreads), p.stream, p.pdl, p.partials, gate_ptr(p.in),
                 up_ptr(p.in), p.in.in_stride, p.hidden, p.tokens, p.act_args);
  }
  if (err == nullptr) {
    err = launch(tensor_scale_kernel<DT>, dim3(1), dim3(kThreads), p.stream, p.pdl, static_cast<float*>(p.s),
                 static_cast<const float*>(p.partials), int(blocks), p.recipe);
  }
  if (err != nullptr || blocks == 0) return err;
  return launch_static(p, static_cast<const float*>(p.s));
}

}  // namespace

const char* QF_CAT(launch_quant_, QF_UNIT)(const QuantParams& p) {
  if ((p.tokens == 0 || p.hidden == 0) && p.scheme != kPerTensor) return nullptr;  // per tensor: the scale
  switch (p.scheme) {
    case kPerToken:  // the per-token op has no UE8M0 parameter: a UE8M0 recipe is a runtime one
      return fp8_step(p.recipe) == Fp8Step::kDefault && !p.runtime_recipe ? dispatch_token<Fp8Step::kDefault>(p)
                                                     : dispatch_token<Fp8Step::kRecipe>(p);
    case kPerGroup:
      if (p.group_size == kFp8GroupSizes[0]) return dispatch_fp8_group<kFp8GroupSizes[0]>(p);
      if (p.group_size == kFp8GroupSizes[1]) return dispatch_fp8_group<kFp8GroupSizes[1]>(p);
      return "quantfuse: group_size is not one the kernels take";
    case kMxfp8: return p.experts.offsets.experts ? dispatch_experts<Mxfp8>(p) : dispatch_bool<Mxfp8, kMxBlock>(p, mx_saturates(p));
    case kMxfp4: return p.experts.offsets.experts ? dispatch_experts<Mxfp4>(p) : dispatch_bool<Mxfp4, kMxBlock>(p, mx_saturates(p));
    case kStatic: return launch_static(p, p.scale);
    case kPerTensor: return launch_tensor(p);
    default: return "quantfuse: unknown scheme";
  }
}

const char* QF_CAT(launch_act_, QF_UNIT)(const ActParams& p) {
  if constexpr (Act::kCode == kActIdentity) {
    return "quantfuse: the identity has no activation kernel";
  } else {
    if (p.tokens == 0 || p.hidden == 0) return nullptr;
    return p.vectorized
               ? launch_elementwise<kVec, void>(p.out, p.in, p.tokens, p.hidden, nullptr, p.pdl, p.stream, p.act_args)
               : launch_elementwise<1, void>(p.out, p.in, p.tokens, p.hidden, nullptr, p.pdl, p.stream, p.act_args);
  }
}

}  // namespace quantfuse
