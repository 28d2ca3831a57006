"""Fold a model's 128x4 swizzle of MX scale bytes (torchao's ``to_blocked``) into the fused op.

Block-scaled GEMMs read MX scales in the padded 128x4 tiled layout
(:func:`quantfuse.custom_ops.reference.swizzle_128x4`), so code that quantises for one ends with
a swizzle of the scale bytes: torchao's ``to_blocked`` (``torchao/prototype/mx_formats/utils.py``:
a zero buffer with the bytes written into its top-left corner, then views, permutes and copies)
or any other spelling. Left after the fused op it is a copy kernel of its own, and in torch 2.13
Inductor's CPU code cannot compile it at all for ``float8_e8m0fnu`` values. The fused MX ops
write that layout themselves (``is_sf_swizzled_layout=True``).

Whether a chain is that layout is decided by evaluation, not by its op sequence: the single-user
chain after the site's scale bytes (views, permutes, copies, padding, dtype views between the
1-byte scale dtypes, and writes into constant buffers) is run on an index tensor (scale ``k``
holds ``k``, a padding byte ``b`` reads ``-1 - b``) and compared with the swizzled layout's index
map (the reference swizzle of the same index tensor, its zero padding reading ``-1``). Equal
(same scales in the same places, padding bytes equal to the fused op's zeros, any final view
shape) folds; a chain that lays all the scales out another way (another tile, another padding
byte) is a near miss naming how, and the graph keeps it. At a symbolic token count the chain's
sizes are expressions of the count: it is evaluated at several sample counts within the graph's
range of it (the sizes substituted) and folds only if it is the swizzled layout at every one.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import sympy
import torch
from torch.fx import Node

from quantfuse import catalog
from quantfuse.catalog import ScaleLayout
from quantfuse.custom_ops import reference
from quantfuse.patterns import canonical

aten = torch.ops.aten

#: ops that move bytes without computing: the chain passes through these only
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.squeeze.dim,
          aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default, aten.flatten.using_ints,
          aten.unflatten.int, aten.slice.Tensor, aten.alias.default}
_PERMUTES = {aten.permute.default, aten.transpose.int, aten.t.default}
_COPIES = {aten.clone.default, aten.contiguous.default}
#: ops that put bytes into a padded buffer: F.pad, ``buf[:t, :g] = s`` (copy + slice_scatter)
_PADS = {aten.constant_pad_nd.default, aten.slice_scatter.default, aten.copy.default}
_DTYPE_VIEW = aten.view.dtype
_MOVES = _VIEWS | _PERMUTES | _COPIES | _PADS | {_DTYPE_VIEW}
#: buffers a chain may write the scales into (their fill byte is the padding)
_BUFFERS = {aten.full.default}
#: the dtypes of MX scale bytes a dtype view may move between (same width: a view keeps places)
BYTE_DTYPES = (torch.uint8, torch.float8_e8m0fnu)
_MAX_CHAIN = 40
#: token counts a chain is evaluated at when the count is symbolic: under one 128-row tile, a
#: whole one, past one, several with a remainder
SAMPLE_COUNTS = (1, 128, 129, 300)
#: with several symbols: the counts of each combined (its smallest), and the most rows a sample
#: evaluates the chain at
MULTI_SYMBOL_COUNTS = 4
MAX_SAMPLE_ROWS = 1 << 12


@dataclasses.dataclass
class Chain:
    """The nodes after a site's scale bytes that may lay them out: ``main`` reads the bytes (graph
    order, each the previous one's only user), ``buffers`` the constant nodes they write into."""

    scale: Node
    main: list[Node]
    buffers: set[Node]

    def nodes(self, end: Node) -> set[Node]:
        """The chain's nodes up to ``end`` and the buffers they read."""
        main = self.main[:self.main.index(end) + 1]
        buffers = {b for b in self.buffers if any(u in main or u in self.buffers for u in b.users)}
        # views of a buffer nothing reads (functionalisation leaves them) would keep it alive
        dead = {u for b in buffers for u in b.users if not u.users and u.target in _VIEWS}
        return set(main) | buffers | dead


@dataclasses.dataclass
class Outcome:
    """What :func:`fold` decided: the chain's last node it folds (``end``), or a near miss."""

    end: Node | None = None
    nodes: frozenset = frozenset()
    reason: str = ""
    node: Node | None = None
    #: a node of the chain whose stack trace names the model's line (the near miss's source)
    source: Node | None = None


def _dtype(node) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def _constant(node: Node, found: set[Node], depth: int = 6) -> bool:
    """Whether ``node`` is a buffer of one byte value, or views of one (collected in ``found``)."""
    if not isinstance(node, Node) or node.op != "call_function" or depth == 0 or _dtype(node) not in BYTE_DTYPES:
        return False
    if node.target in _BUFFERS:
        found.add(node)
        return True
    if node.target in _VIEWS | _PERMUTES | _COPIES | {_DTYPE_VIEW}:
        if _constant(node.args[0], found, depth - 1):
            found.add(node)
            return True
    return False


def chain_after(scale: Node, inside: set[Node]) -> Chain | None:
    """The single-user chain of byte-moving ops after ``scale`` (read outside ``inside``), or None."""
    users = [u for u in scale.users if u not in inside]
    main, buffers, node = [], set(), scale
    while len(users) == 1 and len(main) < _MAX_CHAIN:
        u = users[0]
        if u.op != "call_function" or u.target not in _MOVES or _dtype(u) not in BYTE_DTYPES:
            break
        found: set[Node] = set()
        if not all(_constant(a, found) or canonical.is_size(a) for a in u.all_input_nodes if a is not node):
            break
        main.append(u)
        buffers |= found
        node, users = u, list(u.users)
    return Chain(scale, main, buffers) if main else None


def _byte_of(fill, dtype: torch.dtype) -> int:
    """The byte a ``dtype`` buffer filled with ``fill`` holds (torch's own conversion)."""
    return int(aten.full.default([1], fill, dtype=dtype).view(torch.uint8)[0])


def _pad_byte(value, dtype: torch.dtype) -> int:
    return int(aten.constant_pad_nd.default(torch.zeros(0, dtype=torch.uint8).view(dtype), [0, 1], value)
               .view(torch.uint8)[0])


def size_at(v, at: dict):
    """An int, or a SymInt's value with its symbols replaced by the ints of ``at``."""
    if isinstance(v, torch.SymInt):
        return int(v.node.expr.xreplace({k: sympy.Integer(n) for k, n in at.items()}))
    return v


def evaluate(chain: Chain, codes: torch.Tensor, at: dict | None = None) -> dict[Node, torch.Tensor]:
    """Run the chain's ops on int64 ``codes`` in place of the scale bytes; a padding byte ``b`` reads
    ``-1 - b``; sizes (at a symbolic count) take their values at the symbols' ints ``at``. Raises
    ValueError on an op that is not a pure move of bytes here."""
    at = at or {}
    env = {chain.scale: codes}
    order = {n: i for i, n in enumerate(chain.scale.graph.nodes)}

    def arg(a):
        if isinstance(a, Node):
            return size_at(a.meta["val"], at) if a not in env and canonical.is_size(a) else env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(arg(b) for b in a)
        return size_at(a, at)
    for n in sorted(chain.buffers | set(chain.main), key=order.__getitem__):
        kwargs = {k: v for k, v in n.kwargs.items() if k not in ("dtype", "layout", "device", "pin_memory")}
        if n.target in _BUFFERS:
            shape, fill = arg(n.args[0]), n.args[1]
            env[n] = torch.full(shape, -1 - _byte_of(fill, _dtype(n)), dtype=torch.int64)
        elif n.target is _DTYPE_VIEW:
            if _dtype(n.args[0]) not in BYTE_DTYPES:
                raise ValueError(f"a dtype view from {_dtype(n.args[0])}")
            env[n] = env[n.args[0]]
        elif n.target is aten.constant_pad_nd.default:
            value = n.args[2] if len(n.args) > 2 else n.kwargs.get("value", 0)
            env[n] = aten.constant_pad_nd.default(env[n.args[0]], arg(n.args[1]), -1 - _pad_byte(value, _dtype(n)))
        elif n.target in (aten.copy.default, aten.slice_scatter.default) and _dtype(n.args[0]) != _dtype(n.args[1]):
            raise ValueError("a write that converts values")  # a cast, not a move of bytes
        else:
            env[n] = n.target(*arg(n.args), **arg(kwargs))
        val = n.meta.get("val")
        if val is None or tuple(env[n].shape) != tuple(size_at(d, at) for d in val.shape):
            raise ValueError(f"`{n.name}` evaluates to shape {tuple(env[n].shape)}")
    return env


def tiled_map(tokens: int, groups: int, rows: int, cols: int) -> torch.Tensor:
    """The index map of a ``rows x cols`` tiled layout of ``[tokens, groups]`` scale codes, tiles in
    row-major order, inside a tile row r at ``(r % (rows / 4)) * 4 cols + (r // (rows / 4)) * cols``
    (for 128x4 the reference swizzle); padding reads -1. Only for naming near misses."""
    sub = rows // 4
    tp, gp = -(-tokens // rows) * rows, -(-groups // cols) * cols
    padded = torch.full((tp, gp), -1, dtype=torch.int64)
    padded[:tokens, :groups] = torch.arange(tokens * groups).reshape(tokens, groups)
    return padded.view(tp // rows, 4, sub, gp // cols, cols).permute(0, 3, 2, 1, 4).reshape(-1)


def _swizzled_map(tokens: int, groups: int) -> torch.Tensor:
    """The fused op's swizzled scale buffer as codes: scale (t, g) reads ``t * groups + g``, its zero
    padding ``-1 - 0``."""
    codes = torch.arange(1, tokens * groups + 1, dtype=torch.int64).reshape(tokens, groups)
    return reference.swizzle_128x4(codes).reshape(-1) - 1


def _lays_out(chain: Chain, end: Node) -> bool:
    """Whether the chain up to ``end`` makes a new layout (pads, or permutes and copies): one that is
    not the fused op's is worth a near miss; plain views are not."""
    main = chain.main[:chain.main.index(end) + 1]
    targets = {n.target for n in main}
    return bool(targets & _PADS) or bool(targets & _PERMUTES and targets & _COPIES)


_TILE = f"{catalog.SWIZZLE_ROWS}x{catalog.SWIZZLE_COLS}"
#: tiles a near miss is checked against, to name the one a chain uses
_OTHER_TILES = ((32, 4), (64, 4), (256, 4), (128, 1), (128, 2), (128, 8), (128, 16))


def _why_not(got: torch.Tensor, want: torch.Tensor, tokens: int, groups: int) -> str:
    """Why the chain's codes ``got`` are not the swizzled buffer's ``want`` (both flat)."""
    n = tokens * groups
    real = got[got >= 0]
    if real.numel() != n or not torch.equal(real.sort().values, torch.arange(n)):
        return (f"the scale chain does not keep each of the {n} scales once ({real.unique().numel()} distinct of "
                f"{real.numel()} placed); the fused op's swizzled layout holds each once")
    if got.numel() == want.numel() and torch.equal(got.clamp(min=-1), want):
        pads = sorted({-1 - int(v) for v in got[got < -1].unique()})
        return (f"the scale chain is the {_TILE} swizzled layout but pads with byte(s) "
                f"{', '.join(f'0x{b:02x}' for b in pads)}; the fused op writes zero bytes there")
    for rows, cols in _OTHER_TILES:
        tiled = tiled_map(tokens, groups, rows, cols)
        if got.numel() == tiled.numel() and torch.equal(got.clamp(min=-1), tiled):
            return (f"the scale chain lays the scales out in {rows}x{cols} tiles; the fused op's swizzled layout "
                    f"has {_TILE} tiles")
    m = min(got.numel(), want.numel())
    differ = (got[:m] != want[:m]).nonzero()
    if not differ.numel():
        return f"the scale chain gives {got.numel()} bytes, the fused op's swizzled layout {want.numel()}"
    k = int(differ[0])

    def what(code) -> str:
        return f"scale {divmod(int(code), groups)}" if code >= 0 else "padding"
    return (f"the scale chain lays the scales out unlike the fused op's {_TILE} swizzled layout: element {k} "
            f"holds {what(got[k])}, the fused op's has {what(want[k])}")


def fold(scale: Node, inside: set[Node], samples: list[tuple[dict, int]], groups: int) -> Outcome | None:
    """Decide whether the chain after an MX site's scale bytes ``scale`` (``tokens`` x ``groups``
    bytes in row-major order, read outside the site's nodes ``inside``) is exactly the fused op's
    swizzled buffer: at every ``(at, tokens)`` of ``samples`` (one, ``({}, tokens)``, for a static
    count; the symbols' values and the count they give at a symbolic one). None when there is no
    layout chain to speak of."""
    chain = chain_after(scale, inside)
    if chain is None:
        return None
    envs, wants = [], []
    for at, tokens in samples:
        codes = torch.arange(tokens * groups, dtype=torch.int64).reshape(
            [size_at(d, at) for d in scale.meta["val"].shape])
        try:
            envs.append(evaluate(chain, codes, at))
        except (ValueError, RuntimeError, TypeError, IndexError):
            return None
        wants.append(_swizzled_map(tokens, groups))
    def lays_out(env: dict, want: torch.Tensor, end: Node) -> bool:
        return env[end].numel() == want.numel() and torch.equal(env[end].reshape(-1), want)
    strided = None
    for end in reversed(chain.main):
        if all(lays_out(env, want, end) for env, want in zip(envs, wants)):
            if all(env[end].is_contiguous() for env in envs):
                return Outcome(end=end, nodes=frozenset(chain.nodes(end)))
            strided = strided or end
    last = chain.main[-1]
    if not _lays_out(chain, last):
        return None
    source = next((n for n in reversed(chain.main) if n.meta.get("stack_trace")), last)
    if strided is not None:
        return Outcome(reason=f"the scale chain is the {_TILE} swizzled layout as a strided view (strides "
                              f"{tuple(envs[0][strided].stride())}); the fused op writes it contiguous",
                       node=strided, source=source)
    # the near miss names the first sample that differs
    k = next((i for i, (env, want) in enumerate(zip(envs, wants)) if not lays_out(env, want, last)), 0)
    return Outcome(reason=_why_not(envs[k][last].reshape(-1), wants[k], samples[k][1], groups), node=last,
                   source=source)


def _counts_in_range(shape_env, sym) -> list[int]:
    """The sample counts the graph's guards allow the symbol (its value range: a graph compiled
    for counts past 128 is not evaluated at 1), with the range's own first counts."""
    vr = shape_env.var_to_range.get(sym) if shape_env is not None else None

    def bound(v):
        try:
            return int(v)
        except (TypeError, ValueError, AttributeError, OverflowError):  # an infinite bound
            return None
    lo = (bound(vr.lower) if vr is not None else None) or 0
    hi = bound(vr.upper) if vr is not None else None
    wanted = {*SAMPLE_COUNTS, lo, lo + 1, lo + 129, lo + 300} | ({(lo + hi) // 2, hi} if hi is not None else set())
    return sorted(t for t in wanted if t >= max(lo, 1) and (hi is None or t <= hi))


def apply(site) -> Outcome | None:
    """The hook for a recognised MX site: fold its swizzle chain (the recipe's scale layout becomes
    ``SWIZZLED``, the chain joins the site and its last node becomes a view of the fused op's
    scales; None), or the near miss of a chain that is close (the site is fused with row-major
    scales and the graph keeps the chain: the caller reports ``reason`` at ``node``)."""
    # every other reader of the scales (a cast of 2^e to e8m0 the rewrite views as the bytes) reads
    # them row-major
    if not site.scheme.base.mx or len(site.scales) != 1 or site.column_tail is not None \
            or getattr(site, "e8m0_scales", None):
        return None
    groups = site.recipe.groups(site.y.meta["val"].shape[-1])
    lead = site.x.meta["val"].shape[:-1]
    if canonical.is_symbolic(site.x):
        # evaluated at sample counts, never at the traced one (int(d) of a symbolic dim would
        # specialise the graph to it): below, at and past the 128-row tiles; with several symbols
        # (a [B, S] lead, both dynamic) at the combinations of their smallest counts up to
        # MAX_SAMPLE_ROWS rows, so a chain that pads each symbol apart (not their product) is caught
        dims = [d for d in lead if isinstance(d, torch.SymInt)]
        symbols = sorted({sym for d in dims for sym in d.node.expr.free_symbols}, key=str)
        env = dims[0].node.shape_env
        counts = [_counts_in_range(env, sym) for sym in symbols]
        several = len(symbols) > 1
        if several:  # the smallest few of each: past a tile with B > 1 is what tells
            counts = [c[:MULTI_SYMBOL_COUNTS] for c in counts]
        samples = []
        for values in itertools.product(*counts):
            at = dict(zip(symbols, values))
            tokens = math.prod(size_at(d, at) for d in lead)
            if not several or tokens <= MAX_SAMPLE_ROWS:
                samples.append((at, tokens))
        if len({t for _, t in samples}) < 3:
            return None
    else:
        samples = [({}, math.prod(int(d) for d in lead))]
    shape = site.scales[0].meta["val"].shape
    if any(math.prod(size_at(d, at) for d in shape) != tokens * groups for at, tokens in samples):
        return None
    outcome = fold(site.scales[0], site.nodes, samples, groups)
    if outcome is None or outcome.end is None:
        return outcome
    site.nodes |= outcome.nodes
    site.recipe = dataclasses.replace(site.recipe, scale_layout=ScaleLayout.SWIZZLED)
    site.column_tail = outcome.end
    site.scales = []
    return None
