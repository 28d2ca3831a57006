// Where the experts ops' MX scales go (catalog OpEntry.experts; reference.experts_quantize):
// x holds the tokens sorted by expert, expert e the rows [eo[e], eo[e + 1]) (expert_offsets,
// int32 or int64 [E + 1]); its scales are the 128x4 tiled layout of its own rows, placed from
// scale row bo[e] (blockscale_offsets, a multiple of 128) of one [R, G_pad] byte buffer, and
// every byte that is not a scale is zero. Because each expert starts a row block, the tiled
// offset of its local row i is the global layout's offset of row bo[e] + i
// (scale_layout.h swizzled_scale_offset), so scale (t, g) of token t of expert e is at
// swizzled_scale_offset(bo[e] + t - eo[e], g, rowblock).
//
// Host and device code with no dependencies, so that tests/test_experts_layout.py can compile
// it on the CPU and compare it with the reference and with plan.check_expert_offsets.
#pragma once

#include <cstdint>
#include <cstring>

#include "scale_layout.h"  // QF_HOST_DEVICE, swizzled_scale_offset, kSwizzleRows / Cols

namespace quantfuse {

// Scale rows of an experts op's buffer for T tokens over E experts: the padded rows of the
// worst split (plan.experts_scale_rows is the Python side, tests/test_experts_layout.py
// compares them), so the shape depends on no offset value.
QF_HOST_DEVICE int64_t experts_scale_rows(int64_t tokens, int64_t experts) {
  const int64_t busy = tokens < experts ? tokens : experts;
  return (tokens + (kSwizzleRows - 1) * busy) / kSwizzleRows * kSwizzleRows;
}

// The offsets as a kernel reads them: element i of an int32 or (wide) int64 array.
struct ExpertOffsets {
  const void* expert;  // expert_offsets [experts + 1]
  const void* scale;   // blockscale_offsets [experts + 1]
  int64_t experts;
  bool wide;

  QF_HOST_DEVICE int64_t load(const void* p, int64_t i) const {
#ifdef __CUDA_ARCH__
    return wide ? int64_t(__ldg(static_cast<const long long*>(p) + i)) : int64_t(__ldg(static_cast<const int*>(p) + i));
#else
    return wide ? static_cast<const int64_t*>(p)[i] : int64_t(static_cast<const int32_t*>(p)[i]);
#endif
  }
  QF_HOST_DEVICE int64_t eo(int64_t e) const { return load(expert, e); }
  QF_HOST_DEVICE int64_t bo(int64_t e) const { return load(scale, e); }

  // The last index in [0, n) of array p (eo or bo) whose value is <= v, given p[0] <= v and
  // non-decreasing values: a branch-free binary search of ceil(log2 n) steps (the same count
  // for every thread of a launch).
  QF_HOST_DEVICE uint32_t last_at_most(const void* p, uint32_t n, int64_t v) const {
    uint32_t base = 0;
    while (n > 1) {
      const uint32_t half = n / 2;
      base = load(p, base + half) <= v ? base + half : base;
      n -= half;
    }
    return base;
  }

  // Scale row of token t (0 <= t < eo(experts)): bo[e] + t - eo[e] for the expert e that owns
  // it, the last one with eo[e] <= t (empty experts before it share its eo).
  QF_HOST_DEVICE int64_t scale_row(int64_t t) const {
    const uint32_t e = last_at_most(expert, uint32_t(experts), t);
    return bo(e) + t - eo(e);
  }

  // Whether the offsets' entry e (0 <= e <= experts) is consistent, for a scale buffer of
  // `rows` rows and T tokens; all of them are iff plan.check_expert_offsets accepts the
  // offsets: eo from 0, non-decreasing, to T; bo multiples of 128 in [0, rows], each expert's
  // padded rows ending at or before the next expert's first. Every value is also checked to
  // lie in its range, so no sum below overflows whatever the others hold.
  QF_HOST_DEVICE bool entry_ok(int64_t e, int64_t tokens, int64_t rows) const {
    const int64_t a = eo(e), s = bo(e);
    bool ok = a >= 0 && a <= tokens && s >= 0 && s <= rows && s % kSwizzleRows == 0;
    if (e == 0) ok = ok && a == 0;
    if (e == experts) return ok && a == tokens;
    const int64_t b = eo(e + 1), n = b - a;
    return ok && b >= a && b <= tokens && s + (n + kSwizzleRows - 1) / kSwizzleRows * kSwizzleRows <= bo(e + 1);
  }
};

// A 16-byte chunk of the tiled layout is one row of each of a tile's kSwizzleSub sub-blocks:
// chunk k of a tile holds rows k + 32 i (i < kSwizzleSub) of its row block, 4 columns each.
constexpr uint32_t kChunkBytes = kSwizzleSub * kSwizzleCols, kTileChunks = kSwizzleTile / kChunkBytes;
static_assert(kChunkBytes == 16 && kTileChunks == 32, "a chunk is one 16-byte store");

// Write the zero bytes of 16-byte chunk `chunk` of the experts scale buffer ([rows, g_pad]
// bytes; chunk c covers bytes [16c, 16c + 16)): every byte of it that holds no scale, which
// with the scales of swizzled_scale_offset(o.scale_row(t), g, rowblock) for each token t and
// group g < groups is every byte of the buffer, each written once. In the tiled layout a chunk
// is rows k, k + 32, k + 64, k + 96 of one row block and one tile of 4 columns, 4 bytes a row
// (scale_layout.h); the rows are a scale row each of the block's owner (the last expert whose
// first scale row is at or before the block's), rows past its tokens and blocks of no expert
// are padding. Chunks of padding only take one 16-byte store.
template <typename Scale>
QF_HOST_DEVICE void zero_experts_chunk(Scale* s, int64_t chunk, uint32_t groups, uint32_t g_pad,
                                       const ExpertOffsets& o) {
  const int64_t tiles = g_pad / kSwizzleCols, block = chunk / (tiles * kTileChunks);
  const int64_t block_row = block * kSwizzleRows, row0 = block_row + chunk % kTileChunks;
  int64_t real = 0;  // the chunk's rows of tokens: rows row0 + 32 i for i < real
  if (o.bo(0) <= block_row) {
    const int64_t e = o.last_at_most(o.scale, uint32_t(o.experts + 1), block_row);
    if (e < o.experts) {
      const int64_t left = o.eo(e + 1) - o.eo(e) - (row0 - o.bo(e));  // its tokens from row0 on
      const int64_t words = (left + 31) / 32;  // rows of a chunk are 32 apart
      real = left <= 0 ? 0 : words < int64_t(kSwizzleSub) ? words : int64_t(kSwizzleSub);
    }
  }
  uint8_t* p = reinterpret_cast<uint8_t*>(s) + chunk * kChunkBytes;
  if (real == 0) {
#ifdef __CUDA_ARCH__
    *reinterpret_cast<uint4*>(p) = make_uint4(0u, 0u, 0u, 0u);
#else
    std::memset(p, 0, kChunkBytes);
#endif
    return;
  }
  for (int64_t i = real; i < kSwizzleSub; ++i) *reinterpret_cast<uint32_t*>(p + i * kSwizzleCols) = 0u;
  // the padding columns [groups, g_pad) of the rows of tokens: high bytes of the last tile
  const uint32_t used = groups % kSwizzleCols;
  if (used != 0 && chunk / kTileChunks % tiles == tiles - 1) {
    for (int64_t i = 0; i < real; ++i) {
      for (uint32_t c = used; c < kSwizzleCols; ++c) p[i * kSwizzleCols + c] = 0;
    }
  }
}

}  // namespace quantfuse
