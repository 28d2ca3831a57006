"""The CUDA kernels' tiled scale layout (csrc/scale_layout.h), compiled for the CPU: every
scale byte at ``swizzled_scale_offset`` and the padding from ``zero_scale_padding``, split
over several threads as a grid does, equals ``reference.swizzle_128x4`` of the row-major
scales, padding zeros included. Skipped without a C++ compiler."""

from __future__ import annotations

import subprocess

import pytest
import torch

from helpers import cpu_harness
from quantfuse.custom_ops.reference import swizzle_128x4

HARNESS = r"""
#include "scale_layout.h"
#include <cstdio>
#include <cstdlib>
#include <vector>
int main(int argc, char** argv) {
  const uint32_t t = std::atoi(argv[1]), g = std::atoi(argv[2]), threads = std::atoi(argv[3]);
  const uint32_t tp = (t + 127) / 128 * 128, gp = (g + 3) / 4 * 4;
  std::vector<uint8_t> s(size_t(tp) * gp, 0xAB);  // poison: unwritten bytes show
  for (uint32_t i = 0; i < t; ++i)
    for (uint32_t j = 0; j < g; ++j) s[quantfuse::swizzled_scale_offset(i, j, 128 * gp)] = uint8_t((i * g + j) % 251 + 1);
  for (uint32_t k = 0; k < threads; ++k) quantfuse::zero_scale_padding(s.data(), t, g, 128 * gp, k, threads);
  for (uint8_t b : s) std::printf("%u ", b);
  return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return cpu_harness(tmp_path_factory.mktemp("scale_layout"), HARNESS)


@pytest.mark.parametrize("tokens,groups", [(1, 1), (5, 5), (128, 4), (130, 3), (301, 224), (257, 9), (0, 4)])
@pytest.mark.parametrize("threads", [1, 7, 4096])
def test_kernel_layout_is_the_reference_swizzle(harness, tokens, groups, threads):
    out = subprocess.run([str(harness), str(tokens), str(groups), str(threads)], capture_output=True, text=True,
                         check=True).stdout.split()
    got = torch.tensor([int(b) for b in out], dtype=torch.uint8)
    rows = torch.arange(tokens * groups, dtype=torch.int64).view(tokens, groups)
    want = swizzle_128x4((rows % 251 + 1).to(torch.uint8)).flatten()
    assert got.numel() == want.numel()
    assert torch.equal(got, want), f"{int((got != want).sum())} of {want.numel()} bytes differ"
