"""Plain-PyTorch spellings of activations and quantisation schemes, as people write them.

Each entry is a small function; the pattern generator (:mod:`quantfuse.patterns.act_quant`)
traces every combination into an aten-level search graph.  Spellings that normalise to
the same post-grad graph need no entry of their own: ``view``, ``reshape``,
``unflatten`` all become ``aten.reshape``; ``chunk(2, -1)`` and ``split(d, -1)``
become ``aten.split``; ``clamp(a, b)`` and ``torch.clamp(min=a, max=b)`` become
``clamp_min`` + ``clamp_max``.  Alternatives with the same arity but another op
(``clamp(min=eps)`` vs ``torch.maximum``, ``/ 448`` vs ``* (1 / 448)``) are folded
into one pattern by :func:`quantfuse.patterns.act_quant.widen`; their constants are
checked per site by :mod:`quantfuse.patterns.site`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn


def _halves_by_slicing(x):
    d = x.shape[-1] // 2
    return x[..., :d], x[..., d:]


def _halves_by_split(x):
    return x.chunk(2, dim=-1)


#: how the gate and up halves are taken from ``x = [gate | up]``
GATE_UP_SPLITS: dict[str, Callable] = {
    "slice": _halves_by_slicing,
    "split": _halves_by_split,
}

#: ``silu(gate) * up`` spellings
SILU_MULS: dict[str, Callable] = {
    "F.silu": lambda gate, up: F.silu(gate) * up,
    "sigmoid": lambda gate, up: gate * torch.sigmoid(gate) * up,
}

#: UE8M0 (power-of-two) scale rounding spellings; "none" keeps fp32 scales
SCALE_ROUNDINGS: dict[str, Callable | None] = {
    "none": None,
    "exp2": lambda s: torch.exp2(torch.ceil(torch.log2(s))),
    "pow": lambda s: 2 ** torch.ceil(torch.log2(s)),
}


def fp8_group_quant(y: torch.Tensor, group_size: int, round_scale: Callable | None):
    """Dynamic per-group FP8 quantisation written out in torch; returns grouped q, scale.

    The pattern's outputs are the grouped ``q`` (``[..., G, group]``) and the
    keep-dim scale (``[..., G, 1]``): whatever reshape or squeeze the model applies
    afterwards stays in the graph and is applied to the fused op's outputs.
    """
    yg = y.unflatten(-1, (-1, group_size)).float()
    scale = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    if round_scale is not None:
        scale = round_scale(scale)
    q = (yg / scale).clamp(-448.0, 448.0).to(FP8)
    return q, scale
