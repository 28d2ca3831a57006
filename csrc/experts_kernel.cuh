// The experts ops' kernel (catalog OpEntry.experts): the MX group kernel of group_kernel.cuh
// over all T tokens at once (their elements do not depend on the experts), with ExpertScales
// as its scale policy: each group's scale byte goes to its expert's tiled offset
// (experts_layout.h), and before the groups every block checks the offsets and the grid
// writes the buffer's zero bytes (padding columns, each expert's padding rows, rows of no
// expert), so every byte of the [rows, G_pad] buffer is written once and nothing zeroes it
// first (docs/decisions/021-experts-kernel-checks-offsets.md).
#pragma once

#include "experts_layout.h"
#include "group_kernel.cuh"

namespace quantfuse {

struct ExpertScales {
  ExpertOffsets o;
  int64_t rows;      // of the scale buffer (experts_scale_rows)
  int64_t rowblock;  // kSwizzleRows * g_pad: bytes of a 128-row block
  uint32_t g_pad;
  int* error;        // host-mapped flag set to 1 by a launch whose offsets fail the check; may be null

  // offset() is warp-collective (group_kernel.cuh group_compute calls it from every lane of the
  // warp, those of past-the-end groups with valid false): one search per warp for the warp's first
  // token (lane 0's group, which exists while the warp runs), each lane's later token walked to
  // from it.
  static constexpr bool kWarpOffset = true;
  __device__ __forceinline__ int64_t offset(uint32_t t, uint32_t g, bool valid) const {
    const ExpertOffsets::Owner near = o.owner(__shfl_sync(0xffffffffu, t, 0));
    return valid ? swizzled_scale_offset(uint32_t(o.scale_row(t, near)), g, rowblock) : 0;
  }

  // Every block checks every offset entry (ExpertOffsets::entry_ok; 2 (E + 1) cached loads,
  // issued while the block's first inputs are in flight), so that no store below can leave
  // the outputs whatever the offsets hold. Consistent offsets: the grid writes the zero bytes
  // (zero_experts_chunk, 16-byte chunks split over every thread) and the groups run. Otherwise
  // the whole scale buffer is written as E8M0 NaN (0xFF: a GEMM reading it gives NaN, not
  // plausible numbers), the flag is raised, and q is left unwritten.
  template <typename Scale>
  __device__ __forceinline__ bool prologue(Scale* s, uint32_t tokens, uint32_t groups) const {
    bool bad = false;
    for (int64_t e = threadIdx.x; e <= o.experts; e += blockDim.x) bad |= !o.entry_ok(e, tokens, rows);
    bad = __syncthreads_or(bad);
    const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t chunks = rows * g_pad / kChunkBytes;
    if (bad) {
      if (first == 0 && error != nullptr) *reinterpret_cast<volatile int*>(error) = 1;
      const uint32_t nan4 = uint32_t(kE8m0Nan) * 0x01010101u;
      for (int64_t c = first; c < chunks; c += stride) {
        *reinterpret_cast<uint4*>(reinterpret_cast<uint8_t*>(s) + c * kChunkBytes) = make_uint4(nan4, nan4, nan4, nan4);
      }
      return false;
    }
    for (int64_t c = first; c < chunks; c += stride) zero_experts_chunk(s, c, groups, g_pad, o);
    return true;
  }
};

}  // namespace quantfuse
