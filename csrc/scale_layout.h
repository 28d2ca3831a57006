// The 128x4 tiled scale layout that block-scaled tensor-core GEMMs read
// (reference.swizzle_128x4, torchao's to_blocked), for the MX kernels' scale stores.
// Host and device code with no dependencies, so that tests/test_scale_layout.py can
// compile it on the CPU and compare it with the reference.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define QF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define QF_HOST_DEVICE inline
#endif

namespace quantfuse {

// The tiled layout covers [T_pad, G_pad]: tokens padded to 128 rows, groups to 4 columns
// (kernel_inputs.swizzled_scale_shape is the Python side, for the ops' fake impls).
QF_HOST_DEVICE int64_t swizzled_rows(int64_t tokens) { return (tokens + 127) / 128 * 128; }
QF_HOST_DEVICE int64_t swizzled_cols(int64_t groups) { return (groups + 3) / 4 * 4; }

// Offset of scale (t, g): 128 x 4 tiles row-major by (row block, column block), byte
// (r, c) of a tile at (r % 32) * 16 + (r / 32) * 4 + c; rowblock = 128 * G_pad.
QF_HOST_DEVICE int64_t swizzled_scale_offset(uint32_t t, uint32_t g, int64_t rowblock) {
  return int64_t(t >> 7) * rowblock + int64_t(g >> 2) * 512 + (t & 31) * 16 + ((t >> 5) & 3) * 4 + (g & 3);
}

// Zero bytes in the padding of the tiled layout: groups [G, G_pad) of rows < T, then rows
// [T, T_pad). Thread `first` of `stride` threads takes every stride-th byte (in a kernel:
// the global thread index and the grid's thread count). At most 127 rows and 3 columns,
// T_pad * G_pad < 2^31 (checked by the caller).
template <typename Scale>
QF_HOST_DEVICE void zero_scale_padding(Scale* s, uint32_t tokens, uint32_t groups, int64_t rowblock,
                                       uint32_t first, uint32_t stride) {
  const uint32_t g_pad = uint32_t(rowblock / 128), t_pad = uint32_t(swizzled_rows(tokens));
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
