"""Fold a model's "make the scales column-major" copy into the fused op.

Block-scaled FP8 GEMMs read activation scales as a ``[T, G]`` view of ``[G, T]``
storage, so native code often ends with ``s.squeeze(-1).t().contiguous().t()``.  After
a native rewrite that tail would be a separate copy kernel (and, at decode sizes, a
separate launch); the fused op can write that layout directly
(``column_major_scales=True``).  The tail is folded only when it provably computes
the identity on values: a single-user chain of squeeze/reshape of the keep-dim axis,
then permutes and clones whose permutations compose to the identity, ending in a
tensor with exactly the fused op's column-major strides.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node

aten = torch.ops.aten

_DROP_KEEPDIM = (aten.squeeze.dim, aten.squeeze.dims, aten.reshape.default, aten.view.default)
_PERMUTES = (aten.permute.default, aten.t.default, aten.transpose.int)
_COPIES = (aten.clone.default, aten.contiguous.default)


def _column_major_strides(shape) -> tuple[int, ...]:
    """Strides of ``torch.empty(G, *lead).movedim(0, -1)`` for ``shape = (*lead, G)``."""
    return tuple(torch.empty((shape[-1], *shape[:-1]), device="meta").movedim(0, -1).stride())


def _compose(perm: list[int], node: Node, ndim: int) -> list[int] | None:
    if node.target == aten.permute.default:
        dims = [d % ndim for d in node.args[1]]
    elif node.target == aten.t.default:
        dims = [1, 0] if ndim == 2 else None
    else:
        a, b = (d % ndim for d in node.args[1:3])
        dims = list(range(ndim))
        dims[a], dims[b] = dims[b], dims[a]
    return None if dims is None else [perm[d] for d in dims]


def column_major_tail(scale_out: Node, inside: set[Node]) -> list[Node] | None:
    """The nodes of a layout-only tail that turns ``scale_out`` column-major, or None.

    ``scale_out`` is the site's keep-dim scale ``[..., G, 1]``; ``inside`` the site's nodes.
    """
    users = [u for u in scale_out.users if u not in inside]
    if len(users) != 1 or users[0].target not in _DROP_KEEPDIM:
        return None
    tail = [users[0]]
    val = tail[0].meta.get("val")
    want = tuple(scale_out.meta["val"].shape[:-1])
    if val is None or tuple(val.shape) != want:
        return None
    ndim, perm, copied = len(want), list(range(len(want))), False
    while len(tail[-1].users) == 1:
        nxt = next(iter(tail[-1].users))
        if nxt.target in _PERMUTES:
            perm = _compose(perm, nxt, ndim)
            if perm is None:
                return None
        elif nxt.target in _COPIES:
            if nxt.kwargs.get("memory_format", torch.contiguous_format) != torch.contiguous_format:
                return None
            copied = True
        else:
            break
        tail.append(nxt)
    val = tail[-1].meta.get("val")
    if not copied or perm != list(range(ndim)) or val is None:
        return None
    if tuple(val.shape) != want or tuple(val.stride()) != _column_major_strides(want):
        return None
    return tail


def fold(tail: list[Node]) -> None:
    """After the rewrite, point the tail's users at the fused op's scales and drop the tail.

    The rewrite made ``tail[0]`` read the replacement's keep-dim scale, a view of the
    fused op's ``[..., G]`` column-major output (a ``getitem``).
    """
    graph = tail[0].graph
    source = tail[0].args[0]
    views = []
    while source.target is not operator.getitem:
        views.append(source)
        source = source.args[0]
    tail[-1].replace_all_uses_with(source)
    for node in reversed(tail + views):
        if not node.users:
            graph.erase_node(node)
