// The 128x4 tiled scale layout that block-scaled tensor-core GEMMs read
// (reference.swizzle_128x4, torchao's to_blocked), for the MX kernels' scale stores.
// Host and device code with no dependencies, so that tests/test_scale_layout.py can
// compile it on the CPU and compare it with the reference.
#pragma once

#include <cstdint>

#include "quantfuse_catalog.h"  // generated: kSwizzleRows, kSwizzleCols

#ifdef __CUDACC__
#define QF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define QF_HOST_DEVICE inline
#endif

namespace quantfuse {

// The tiled layout covers [T_pad, G_pad]: tokens padded to kSwizzleRows (128) rows, groups
// to kSwizzleCols (4) columns (plan.swizzled_scale_shape is the Python side).
QF_HOST_DEVICE int64_t swizzled_rows(int64_t tokens) { return (tokens + kSwizzleRows - 1) / kSwizzleRows * kSwizzleRows; }
QF_HOST_DEVICE int64_t swizzled_cols(int64_t groups) { return (groups + kSwizzleCols - 1) / kSwizzleCols * kSwizzleCols; }

// A tile's rows are kSwizzleSub interleaved sub-blocks of 32 (the GEMMs' warp rows).
constexpr uint32_t kSwizzleSub = kSwizzleRows / 32, kSwizzleTile = kSwizzleRows * kSwizzleCols;
static_assert(kSwizzleRows % 32 == 0, "tiles are whole warps of rows");

// Offset of scale (t, g): kSwizzleRows x kSwizzleCols tiles row-major by (row block, column
// block), byte (r, c) of a tile at (r % 32) * kSwizzleSub * kSwizzleCols + (r / 32) *
// kSwizzleCols + c; rowblock = kSwizzleRows * G_pad.
QF_HOST_DEVICE int64_t swizzled_scale_offset(uint32_t t, uint32_t g, int64_t rowblock) {
  return int64_t(t / kSwizzleRows) * rowblock + int64_t(g / kSwizzleCols) * kSwizzleTile +
         (t % 32) * (kSwizzleSub * kSwizzleCols) + (t / 32 % kSwizzleSub) * kSwizzleCols + g % kSwizzleCols;
}

// Zero bytes in the padding of the tiled layout: groups [G, G_pad) of rows < T, then rows
// [T, T_pad). Thread `first` of `stride` threads takes every stride-th byte (in a kernel:
// the global thread index and the grid's thread count). Less than a tile's rows and columns,
// T_pad * G_pad < 2^31 (checked by the caller).
template <typename Scale>
QF_HOST_DEVICE void zero_scale_padding(Scale* s, uint32_t tokens, uint32_t groups, int64_t rowblock,
                                       uint32_t first, uint32_t stride) {
  const uint32_t g_pad = uint32_t(rowblock / kSwizzleRows), t_pad = uint32_t(swizzled_rows(tokens));
  const uint32_t side = g_pad - groups;
  const uint32_t n_side = tokens * side, n = n_side + (t_pad - tokens) * g_pad;
  for (uint32_t k = first; k < n; k += stride) {
    const bool in_rows = k < n_side;
    const uint32_t r = in_rows ? k : k - n_side, w = in_rows ? side : g_pad;
    const uint32_t t = (in_rows ? 0 : tokens) + r / w, g = (in_rows ? groups : 0) + r % w;
    s[swizzled_scale_offset(t, g, rowblock)] = Scale(0);
  }
}

}  // namespace quantfuse
