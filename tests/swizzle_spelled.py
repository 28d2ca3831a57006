"""The 128x4 swizzle of MX scale bytes written in plain torch, in spellings of its own (not torchao's
``to_blocked`` nor the reference's ``swizzle_128x4``), for the tests of the swizzle fold
(quantfuse/patterns/swizzle.py): ``padded`` pads with ``F.pad`` and moves with unflatten /
transpose / flatten; ``into_zeros`` writes the bytes into the corner of a zero buffer and moves
with one permute. ``rows`` / ``value`` make the near misses: other tiles, another padding byte."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _padded_sizes(t: int, g: int, rows: int, cols: int) -> tuple[int, int]:
    return -(-t // rows) * rows, -(-g // cols) * cols


def padded(s: torch.Tensor, rows: int = 128, cols: int = 4, value: int = 0) -> torch.Tensor:
    """uint8 bytes ``[T, G]`` -> the tiled layout as ``float8_e8m0fnu [T_pad * G_pad / 16, 16]``:
    tile row r's four byte rows of a sub-tile are ``r // (rows / 4)``."""
    t, g = s.shape
    tp, gp = _padded_sizes(t, g, rows, cols)
    p = F.pad(s, (0, gp - g, 0, tp - t), value=value)
    tiles = p.unflatten(0, (tp // rows, 4, rows // 4)).unflatten(-1, (gp // cols, cols))
    return tiles.transpose(1, 3).flatten().view(torch.float8_e8m0fnu).view(-1, 16)


def into_zeros(s: torch.Tensor, contiguous: bool = True) -> torch.Tensor:
    """The same layout by writing ``s`` into a zero buffer and one permute: ``uint8 [T_pad, G_pad]``
    (not ``contiguous``: the permuted view, the layout's order in a strided tensor)."""
    t, g = s.shape
    tp, gp = _padded_sizes(t, g, 128, 4)
    buf = torch.zeros(tp, gp, dtype=s.dtype, device=s.device)
    buf[:t, :g] = s
    tiles = buf.view(tp // 128, 4, 32, gp // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.contiguous().view(tp, gp) if contiguous else tiles
