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

  // The expert of token t (0 <= t < eo(experts); the offsets consistent, so every value is below
  // 2^31 as the token and scale row counts are): e, the last expert with eo[e] <= t (empty experts
  // before it share its eo), with eo[e], eo[e + 1] and bo[e]; 32 bits each, to spare registers.
  struct Owner {
    uint32_t e, first, next, scale_row0;  // e, eo[e], eo[e + 1], bo[e]
  };

  // The owner of t by a kWays-way search: each round probes kWays entries of eo at once, so E
  // experts take ceil(log_kWays E) rounds of dependent loads where the binary search
  // last_at_most takes log2 E (8 at E = 256, for every group's scale). On the device it is
  // warp-collective: every lane of the warp calls it with the same t, lane k probes entry k of
  // a round (one load and a ballot), and the owner's entries come from the lanes that loaded
  // them; on the host the lanes are a loop, so tests/test_experts_layout.py checks the search on
  // the CPU.
  static constexpr uint32_t kWays = 32;
  QF_HOST_DEVICE Owner owner(int64_t t) const {
    // the owner lies in [lo, lo + n), and eo[lo] <= t < eo[lo + n]
    uint32_t lo = 0, n = uint32_t(experts);
    while (n >= kWays) {
      const uint32_t piece = (n + kWays - 1) / kWays;
      uint32_t c = 0;  // probes lo + k * piece (k * piece < n) at or below t: a prefix of k
#ifdef __CUDA_ARCH__
      const uint32_t i = (threadIdx.x % 32) * piece;
      c = __popc(__ballot_sync(0xffffffffu, i < n && eo(lo + i) <= t));
#else
      for (uint32_t k = 0; k < kWays && k * piece < n; ++k) c += eo(lo + k * piece) <= t;
#endif
      lo += (c - 1) * piece;
      n = n - (c - 1) * piece < piece ? n - (c - 1) * piece : piece;
    }
    // last round: entries lo .. lo + n (n < kWays), each lane its own, with its bo
#ifdef __CUDA_ARCH__
    const uint32_t k = threadIdx.x % 32;
    uint32_t first = 0, start = 0;
    if (k <= n) {
      first = uint32_t(eo(lo + k));
      if (k < n) start = uint32_t(bo(lo + k));
    }
    const uint32_t c = __popc(__ballot_sync(0xffffffffu, k < n && first <= t));
    return {lo + c - 1, __shfl_sync(0xffffffffu, first, c - 1), __shfl_sync(0xffffffffu, first, c),
            __shfl_sync(0xffffffffu, start, c - 1)};
#else
    uint32_t c = 0;
    for (uint32_t k = 0; k < n; ++k) c += eo(lo + k) <= t;
    const uint32_t e = lo + c - 1;
    return {e, uint32_t(eo(e)), uint32_t(eo(e + 1)), uint32_t(bo(e))};
#endif
  }

  // Scale row of token t (0 <= t < eo(experts)): bo[e] + t - eo[e] for the expert e that owns it.
  // `near`: the owner of a token at or before t, from which the owner of t is walked to (the
  // experts kernel searches once per warp and walks each lane's later tokens: a row boundary
  // inside the warp's groups).
  QF_HOST_DEVICE int64_t scale_row(int64_t t, const Owner& near) const {
    if (t < near.next) return int64_t(near.scale_row0) + t - near.first;
    int64_t e = near.e + 1;
    while (eo(e + 1) <= t) ++e;
    return bo(e) + t - eo(e);
  }
  // (host code only: on the device owner() is warp-collective)
  inline int64_t scale_row(int64_t t) const { return scale_row(t, owner(t)); }

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
