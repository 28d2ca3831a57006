"""The CUDA experts kernel's layout code (csrc/experts_layout.h), compiled for the CPU: each
token's scales at ``swizzled_scale_offset(scale_row(t), g)`` (its expert found by the 32-way
search ``owner``, the lanes a loop here, or walked to from an earlier token's owner as a warp's
later lanes do; equal to the binary search ``last_at_most``) and the zero bytes from
``zero_experts_chunk``, split over several threads as the grid splits them, on a poisoned
buffer, equal the reference's experts scale buffer (each expert's ``reference.swizzle_128x4``
from row ``blockscale_offsets[e]``, zero elsewhere) byte for byte; ``entry_ok`` accepts exactly
the offsets ``plan.check_expert_offsets`` accepts; ``experts_scale_rows`` is the plan's.
Skipped without a C++ compiler."""

from __future__ import annotations

import random
import subprocess

import pytest
import torch

from quantfuse import catalog
from quantfuse.custom_ops.plan import check_expert_offsets, experts_scale_rows
from quantfuse.custom_ops.reference import swizzle_128x4
from helpers import cpu_harness
from test_experts_ops import offsets

TILE = catalog.SWIZZLE_ROWS
#: reads "T G E wide rows threads" then eo and bo (E + 1 each); prints the verdict of every
#: entry_ok, then (if all pass) the scale buffer's bytes after the kernel's stores, then
#: experts_scale_rows(T, E), then (if all pass) how many tokens' scale rows differ between the
#: 32-way search, the walk from the owners of tokens 1, 7 and 64 before, and the binary search
HARNESS = r"""
#include "experts_layout.h"
#include <cstdio>
#include <vector>
int main() {
  long long t, g, e, wide, rows, threads;
  if (std::scanf("%lld %lld %lld %lld %lld %lld", &t, &g, &e, &wide, &rows, &threads) != 6) return 2;
  std::vector<long long> v(2 * (e + 1));
  for (auto& x : v) if (std::scanf("%lld", &x) != 1) return 2;
  std::vector<int64_t> w64(v.begin(), v.end());
  std::vector<int32_t> w32(v.begin(), v.end());
  const void* eo = wide ? static_cast<const void*>(w64.data()) : static_cast<const void*>(w32.data());
  const void* bo = wide ? static_cast<const void*>(w64.data() + e + 1) : static_cast<const void*>(w32.data() + e + 1);
  const quantfuse::ExpertOffsets o{eo, bo, e, wide != 0};
  bool ok = true;
  for (long long i = 0; i <= e; ++i) {
    const bool k = o.entry_ok(i, t, rows);
    ok = ok && k;
    std::printf("%d ", int(k));
  }
  std::printf("\n");
  if (ok) {
    const uint32_t gp = uint32_t(quantfuse::swizzled_cols(g));
    std::vector<uint8_t> s(size_t(rows) * gp, 0xAB);  // poison: unwritten bytes show
    for (long long i = 0; i < t; ++i)
      for (long long j = 0; j < g; ++j)
        s[quantfuse::swizzled_scale_offset(uint32_t(o.scale_row(i)), uint32_t(j), 128 * gp)] = uint8_t((i * g + j) % 251 + 1);
    const long long chunks = rows * gp / quantfuse::kChunkBytes;
    for (long long k = 0; k < threads; ++k)
      for (long long c = k; c < chunks; c += threads) quantfuse::zero_experts_chunk(s.data(), c, uint32_t(g), gp, o);
    for (uint8_t b : s) std::printf("%u ", b);
  }
  std::printf("\n%lld\n", (long long)quantfuse::experts_scale_rows(t, e));
  long long differ = 0;
  for (long long i = 0; ok && i < t; ++i) {
    const uint32_t b = o.last_at_most(o.expert, uint32_t(e), i);
    const int64_t want = o.bo(b) + i - o.eo(b), got = o.scale_row(i);
    bool same = got == want;
    for (long long back : {1LL, 7LL, 64LL}) same = same && o.scale_row(i, o.owner(i > back ? i - back : 0)) == want;
    differ += !same;
  }
  std::printf("%lld\n", differ);
  return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return cpu_harness(tmp_path_factory.mktemp("experts_layout"), HARNESS)


def _run(harness, tokens, groups, eo, bo, rows, wide=False, threads=7):
    text = " ".join(map(str, [tokens, groups, len(eo) - 1, int(wide), rows, threads, *eo, *bo]))
    out = subprocess.run([str(harness)], input=text, capture_output=True, text=True, check=True).stdout
    verdicts, data, scale_rows, differ = out.split("\n")[:4]
    ok = [v == "1" for v in verdicts.split()]
    buf = torch.tensor([int(b) for b in data.split()], dtype=torch.uint8) if all(ok) else None
    assert int(differ) == 0, f"{differ} tokens' scale rows differ between the searches"
    return ok, buf, int(scale_rows)


def _expected(tokens, groups, eo, bo, rows):
    """The reference's buffer (reference.experts_quantize's placement) of the harness's scales."""
    gp = -(-groups // 4) * 4
    scales = (torch.arange(tokens * groups, dtype=torch.int64).view(tokens, groups) % 251 + 1).to(torch.uint8)
    s = torch.zeros(rows, gp, dtype=torch.uint8)
    for e in range(len(eo) - 1):
        se = swizzle_128x4(scales[eo[e]:eo[e + 1]])
        s[bo[e]:bo[e] + se.shape[0]] = se
    return s.flatten()


def _spread(experts, busy, seed):
    """``experts`` counts, ``busy`` of them with 1-130 tokens and the rest empty."""
    rng = random.Random(seed)
    counts = [0] * experts
    for e in rng.sample(range(experts), busy):
        counts[e] = rng.randint(1, 130)
    return counts


#: tokens per expert (0 / 1 / 127 / 128 / 129 and runs of empty experts), with group counts that
#: pad (3, 5, 1) and do not (4, 8); 31 / 32 / 33 experts (one search round or two) and 300 / 2000
#: (two, three), mostly empty
CASES = [([0, 1, 127, 128, 129, 0], 3), ([5], 1), ([0, 0], 4), ([129, 0, 3], 5), ([300, 1, 0, 0, 256], 8),
         ([1] * 9, 2), ([128, 128], 7), ([2] * 31, 1), ([1] * 32, 2), ([3] * 33, 1), (_spread(300, 40, 1), 1),
         (_spread(2000, 30, 2), 2), ([0] * 1999 + [5], 1), ([5] + [0] * 1999, 1)]


@pytest.mark.parametrize("counts,groups", CASES,
                         ids=lambda c: ("-".join(map(str, c)) if len(c) < 12 else f"E{len(c)}-{sum(c)}")
                         if isinstance(c, list) else c)
@pytest.mark.parametrize("wide", [False, True])
def test_kernel_places_every_scale_and_zero_as_the_reference(harness, counts, groups, wide):
    eo, bo = (t.tolist() for t in offsets(counts))
    rows = experts_scale_rows(eo[-1], len(counts))
    for threads in (1, 5, 4096):
        ok, got, scale_rows = _run(harness, eo[-1], groups, eo, bo, rows, wide, threads)
        assert all(ok) and scale_rows == rows
        want = _expected(eo[-1], groups, eo, bo, rows)
        assert torch.equal(got, want), f"{int((got != want).sum())} of {want.numel()} bytes differ"


def test_gaps_and_rows_of_no_expert_are_zero(harness):
    """blockscale_offsets may leave row blocks to no expert (before the first, between two,
    after the last): their bytes are zero too."""
    eo = [0, 3, 3, 133]
    bo = [128, 384, 512, 768]
    rows = 1024
    check_expert_offsets("t", torch.tensor(eo), torch.tensor(bo), 133, rows)  # valid
    ok, got, _ = _run(harness, 133, 6, eo, bo, rows, threads=3)
    assert all(ok)
    want = _expected(133, 6, eo, bo, rows)
    assert torch.equal(got, want), f"{int((got != want).sum())} of {want.numel()} bytes differ"


def _mutations(rng: random.Random, eo: list[int], bo: list[int]):
    yield eo, bo
    yield eo, bo[:-1] + [bo[-1] + TILE]  # a free row block at the end: valid where the rows allow
    big = [-1, -128, 1, 64, 127, 128, 2**31 - 1, 2**40, 2**61, -(2**61)]
    for _ in range(60):
        a, b = list(eo), list(bo)
        which = rng.choice((a, b))
        i = rng.randrange(len(which))
        which[i] = which[i] + rng.choice(big) if rng.random() < 0.7 else rng.choice(big)
        yield a, b


def test_kernel_check_accepts_exactly_what_the_host_check_accepts(harness):
    rng = random.Random(5)
    for counts in ([3, 0, 2], [0, 1, 127, 128, 129, 0], [200]):
        eo, bo = (t.tolist() for t in offsets(counts))
        tokens, rows = eo[-1], experts_scale_rows(eo[-1], len(counts))
        seen = set()
        for a, b in _mutations(rng, eo, bo):
            for wide in (False, True):
                if not wide and any(not -(2**31) <= v < 2**31 for v in a + b):
                    continue  # not an int32 tensor
                try:
                    check_expert_offsets("t", torch.tensor(a), torch.tensor(b), tokens, rows)
                    host = True
                except ValueError:
                    host = False
                ok, _, _ = _run(harness, tokens, 3, a, b, rows, wide)
                assert all(ok) == host, (a, b, wide, ok)
                seen.add(host)
        assert seen == {True, False}


def test_scale_rows_are_the_plans(harness):
    for tokens, experts in ((0, 3), (1, 256), (5, 3), (129, 2), (4096, 256), (300, 1)):
        eo = [0] * experts + [tokens]
        assert _run(harness, tokens, 1, eo, [0] * (experts + 1), 0)[2] == experts_scale_rows(tokens, experts)
