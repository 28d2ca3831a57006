"""Abstract interpretation of a post-grad region: what each node computes, canonically.

Each node of the region gets a :class:`Val`: a canonical expression over the region's
leaves (the activation output ``y``, the activation's inputs, a static scale), the level
it lives at (one value per element of ``y``, per group of ``y``, or a constant) and an
index map from its own indices to ``y``'s elements or groups. Spellings that compute the
same bits get the same :class:`Val`:

* view-like ops (reshape / view / unflatten / flatten / squeeze / unsqueeze, permutes,
  clones, expands of a group value over its group) only change the index map;
* casts that cannot change a value (up-casts, a cast back to a dtype the value already
  fits, a max or abs in bf16) vanish; casts that round stay as ``("round", dtype, e)``;
* every other op is ``(op, *args)`` meaning "computed in fp32 (eager's opmath), then
  rounded to the op's output dtype" (a 16-bit output adds the ``round``);
* commutative ops sort their operands; ``clamp`` becomes ``max`` / ``min``;
  ``torch.where(x < c, c, x)`` and ``torch.maximum(x, tensor(c))`` become ``max(x, c)``;
  ``1 / s`` becomes ``recip(s)``; ``max(dim)[0]`` is ``amax``.

Anything else raises :class:`Unknown` with the reason (a near miss).
"""

from __future__ import annotations

import dataclasses
import math
import operator

import torch
from torch.fx import Node

aten = torch.ops.aten
prims = torch.ops.prims

SIXTEEN_BIT = (torch.bfloat16, torch.float16)


class Unknown(Exception):
    """The region computes something the interpreter does not model; the message says what."""


@dataclasses.dataclass(frozen=True)
class Val:
    """What one node computes.

    ``level``: ``"elem"`` (one value per element of ``y``), ``"group"`` (one per group of
    ``group`` consecutive elements of ``y``'s rows), ``"const"`` (a number, ``expr`` is
    ``("c", value)``) or ``"leaf"`` (an input of the region other than ``y``).
    For elem and group values ``base`` is a shape whose row-major order is ``y``'s element
    order (group order) and ``perm`` maps the node's dims to ``base``'s: the node is
    ``base_tensor.permute(perm)``.
    """

    expr: tuple
    dtype: torch.dtype
    level: str
    shape: tuple = ()
    base: tuple = ()
    perm: tuple = ()
    group: int = 0
    #: the narrowest dtype that holds the value exactly (drops casts that cannot round)
    narrow: torch.dtype = torch.float32

    @property
    def ordered(self) -> bool:
        """The node's row-major order is the base order (no pending permutation)."""
        return self.perm == tuple(range(len(self.perm)))


def _width(dtype: torch.dtype) -> int:
    return {torch.bfloat16: 16, torch.float16: 16, torch.float32: 32, torch.float64: 64}.get(dtype, 0)


def _fits(narrow: torch.dtype, dtype: torch.dtype) -> bool:
    """A value exactly representable in ``narrow`` is exactly representable in ``dtype``."""
    if narrow == dtype:
        return True
    if narrow in SIXTEEN_BIT:
        return dtype in (torch.float32, torch.float64)
    return narrow == torch.float32 and dtype == torch.float64


def _meta(node: Node):
    val = node.meta.get("val") if isinstance(node, Node) else None
    if not isinstance(val, torch.Tensor):
        raise Unknown(f"`{getattr(node, 'name', node)}` has no tensor metadata")
    return val


@dataclasses.dataclass
class Rows:
    """What :func:`_shape` met under :func:`symbolic_rows`: the sample value of each symbol, and
    for each node read symbolically the product of its symbolic dims (its rows)."""

    symbols: dict = dataclasses.field(default_factory=dict)
    products: dict = dataclasses.field(default_factory=dict)


#: the active :class:`Rows`, innermost last
_rows: list[Rows] = []
#: the values symbolic dims take in the analysis (any value works where the check holds; primes
#: keep a token count apart from the static dims' products)
_SAMPLES = (7, 11, 13, 17, 19, 23)


class symbolic_rows:
    """Within it, a shape whose leading dims are symbolic (a dynamic token count) and whose other
    dims are static reads with each symbol at a sample value; the reader must then check
    (:func:`check_rows`) that every such node has the same rows as ``y``, so every view moved
    whole rows and the analysis holds for every token count."""

    def __enter__(self) -> Rows:
        _rows.append(Rows())
        return _rows[-1]

    def __exit__(self, *exc):
        _rows.pop()
        return False


def _sample(d, symbols: dict) -> int:
    expr = d.node.expr
    for sym in sorted(expr.free_symbols, key=str):
        if sym not in symbols:
            if len(symbols) == len(_SAMPLES):
                raise Unknown(f"more than {len(_SAMPLES)} symbolic dims")
            symbols[sym] = _SAMPLES[len(symbols)]
    value = expr.subs(symbols)
    if not value.is_Integer or int(value) < 1:
        raise Unknown(f"the symbolic dim {d} has no positive integer value at the sample")
    return int(value)


def _shape(node: Node) -> tuple:
    shape = tuple(_meta(node).shape)
    if all(isinstance(d, int) for d in shape):
        return shape
    if not _rows:
        raise Unknown(f"`{node.name}` has a dynamic shape {shape}; only static shapes are recognised")
    lead = 0
    while lead < len(shape) and not isinstance(shape[lead], int):
        lead += 1
    if not all(isinstance(d, int) for d in shape[lead:]):
        raise Unknown(f"`{node.name}` has a symbolic dim after a static one {shape}: only leading dims "
                      "(the token count) may be symbolic")
    rows = _rows[-1]
    rows.products[node] = math.prod(d.node.expr for d in shape[:lead])
    return tuple(_sample(d, rows.symbols) for d in shape[:lead]) + shape[lead:]


def check_rows(rows: Rows, y: Node) -> bool:
    """Whether every node :func:`_shape` read symbolically has ``y``'s rows (the product of its
    symbolic dims equals ``y``'s): only then does the analysis at the sample hold for every token
    count. False also when ``y`` itself is static."""
    want = rows.products.get(y)
    if want is None:
        return False
    return all((v - want).expand() == 0 for v in rows.products.values())


def is_symbolic(node: Node) -> bool:
    """Whether ``node``'s value has a symbolic dim."""
    val = node.meta.get("val") if isinstance(node, Node) else None
    return isinstance(val, torch.Tensor) and not all(isinstance(d, int) for d in val.shape)


def is_size(node) -> bool:
    """Whether ``node`` is a symbolic size (a placeholder, ``sym_size`` or size arithmetic holding
    a SymInt): a shape argument of a view or buffer at a symbolic token count, not a value."""
    return isinstance(node, Node) and isinstance(node.meta.get("val"), torch.SymInt)


#: ops that compute a value from their inputs without rounding (their result is one of the inputs'
#: values, or exact): the result fits wherever the inputs fit
_EXACT = {aten.abs.default: "abs", aten.neg.default: "neg", aten.relu.default: "relu",
          aten.ceil.default: "ceil", aten.floor.default: "floor", aten.clone.default: None,
          aten.alias.default: None}
#: rounding unary ops: computed in fp32, rounded to the output dtype
_UNARY = {aten.exp.default: "exp", aten.exp2.default: "exp2", aten.log2.default: "log2",
          aten.sigmoid.default: "sigmoid", aten.reciprocal.default: "recip", aten.tanh.default: "tanh",
          aten.sqrt.default: "sqrt", aten.log.default: "log"}
_BINARY = {aten.add.Tensor: "add", aten.mul.Tensor: "mul", aten.div.Tensor: "div", aten.sub.Tensor: "sub",
           aten.maximum.default: "max", aten.minimum.default: "min", aten.pow.Tensor_Scalar: "pow",
           aten.pow.Tensor_Tensor: "pow", aten.pow.Scalar: "pow", aten.rsub.Scalar: "rsub",
           aten.add.Scalar: "add", aten.mul.Scalar: "mul", aten.div.Scalar: "div"}
_COMMUTATIVE = {"add", "mul", "max", "min"}
_VIEWS = {aten.reshape.default, aten.view.default, aten._unsafe_view.default, aten.squeeze.dim,
          aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default, aten.flatten.using_ints,
          aten.unflatten.int}
_PERMUTES = {aten.permute.default, aten.t.default, aten.transpose.int}
_CASTS = {prims.convert_element_type.default, aten._to_copy.default}
_REDUCTIONS = {aten.amax.default, aten.max.dim, aten.max.default}
#: every op the interpreter reads (the backward slice walks only through these)
REGION_OPS = (set(_EXACT) | set(_UNARY) | set(_BINARY) | _VIEWS | _PERMUTES | _CASTS | _REDUCTIONS
              | {aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default, aten.where.self,
                 aten.expand.default, aten.contiguous.default, operator.getitem, aten.full.default,
                 aten.lt.Scalar, aten.le.Scalar, aten.gt.Scalar, aten.ge.Scalar, aten.lt.Tensor,
                 aten.gt.Tensor, aten.square.default})


def const(value: float) -> tuple:
    return ("c", float(value))


class Interpreter:
    """Interprets the nodes above ``leaves`` (``{node: expr}``); ``y`` is the elem-level leaf."""

    def __init__(self, y: Node, leaves: dict[Node, tuple] | None = None,
                 elem_leaves: dict[Node, tuple] | None = None):
        self.y = y
        yv = _meta(y)
        if yv.dim() and not isinstance(yv.shape[-1], int) and _rows:
            raise Unknown(f"`{y.name}` has a symbolic last dim {tuple(yv.shape)}: the hidden size must be static "
                          "(mark only the token dims dynamic)")
        self.y_shape = _shape(y)
        self.hidden = self.y_shape[-1] if self.y_shape else 1
        self.numel = math.prod(self.y_shape)
        self.memo: dict[Node, Val] = {
            y: Val(("y",), yv.dtype, "elem", self.y_shape, self.y_shape, tuple(range(len(self.y_shape))),
                   0, yv.dtype if yv.dtype in SIXTEEN_BIT else torch.float32)}
        for node, expr in (leaves or {}).items():
            v = _meta(node)
            shape = _shape(node) if is_symbolic(node) and _rows else tuple(v.shape)
            self.memo[node] = Val(expr, v.dtype, "leaf", shape)
        for node, expr in (elem_leaves or {}).items():
            # the activation's inputs: elem-level values of y's shape, in y's order
            v = _meta(node)
            shape = _shape(node)
            self.memo[node] = Val(expr, v.dtype, "elem", shape, shape, tuple(range(len(shape))), 0,
                                  v.dtype if v.dtype in SIXTEEN_BIT else torch.float32)
        self.visited: set[Node] = set()
        #: expression -> the narrowest dtype holding its value (every node's, for _stored_expr)
        self.narrows: dict[tuple, torch.dtype] = {v.expr: v.narrow for v in self.memo.values()}

    # --- entry ----------------------------------------------------------------------------
    def value(self, node) -> Val:
        """The :class:`Val` of ``node`` (a Node or a Python number)."""
        if not isinstance(node, Node):
            if isinstance(node, bool) or not isinstance(node, (int, float)):
                raise Unknown(f"argument {node!r} is not a number")
            return Val(const(node), torch.float32, "const")
        if node in self.memo:
            return self.memo[node]
        if node.op != "call_function":
            raise Unknown(f"`{node.name}` ({node.op}) is an input the quantisation reads besides the activation")
        self.visited.add(node)
        out = self._eval(node)
        self.memo[node] = out
        self.narrows.setdefault(out.expr, out.narrow)
        return out

    # --- helpers ---------------------------------------------------------------------------
    def _dtype(self, node: Node) -> torch.dtype:
        return _meta(node).dtype

    def _round(self, expr: tuple, narrow: torch.dtype, dtype: torch.dtype) -> tuple[tuple, torch.dtype]:
        """``expr`` stored in ``dtype``: a round unless the value already fits (or is a max / min of
        values that fit and constants: :meth:`_stored_expr`)."""
        if _fits(narrow, dtype):
            return expr, narrow
        if dtype in SIXTEEN_BIT:
            pushed = self._stored_expr(expr, dtype)
            if pushed is not None:
                return pushed, dtype
            return ("round", str(dtype).replace("torch.", ""), expr), dtype
        if dtype == torch.float32:
            return expr, torch.float32
        raise Unknown(f"a value is stored as {dtype}")

    def _stored_expr(self, e: tuple, dtype: torch.dtype) -> tuple | None:
        """``e`` rounded to 16-bit ``dtype`` without a round where the rounding can go inside: a value
        that fits, or a max / min of such values and constants, whose rounding is the max / min of
        the rounded operands (rounding is monotonic), as eager's 16-bit clamp_min(v, eps) decomposes
        to max(v.float(), eps) rounded: max(v, eps rounded). None where it cannot."""
        if e[0] == "c":
            return _stored(e, dtype)
        if _fits(self.narrows.get(e, torch.float32), dtype):
            return e
        if e[0] in ("max", "min") and len(e) == 3:
            parts = [self._stored_expr(p, dtype) for p in e[1:]]
            if None not in parts:
                return self._sorted(e[0], *parts)
        return None

    def _like(self, v: Val, expr: tuple, dtype: torch.dtype, narrow: torch.dtype, node: Node) -> Val:
        if v.level == "const":
            return Val(expr, dtype, "const")
        return dataclasses.replace(v, expr=expr, dtype=dtype, narrow=narrow, shape=_shape(node))

    def _eval(self, node: Node) -> Val:
        t, args = node.target, node.args
        dtype = self._dtype(node)
        if t in _CASTS:
            v = self.value(args[0])
            if t == aten._to_copy.default and set(node.kwargs) - {"dtype", "layout", "device"}:
                raise Unknown(f"`{node.name}` copies with {node.kwargs}")
            if dtype == torch.uint8:
                # E8M0 scale bytes (MX): kept as an integer cast; the MX recipe reading it checks
                # that the value is a clamped exponent plus the bias, so the cast is exact
                return self._like(v, ("to_uint8", v.expr), dtype, dtype, node)
            if dtype == torch.float8_e4m3fn or not _width(dtype):
                raise Unknown(f"`{node.name}` casts to {dtype} inside the region")
            expr, narrow = self._round(v.expr, v.narrow, dtype)
            return self._like(v, expr, dtype, narrow, node)
        if t in _VIEWS:
            return self._view(node, self.value(args[0]))
        if t in _PERMUTES:
            return self._permute(node, self.value(args[0]))
        if t in (aten.contiguous.default,) or _EXACT.get(t, "") is None:
            if t == aten.clone.default and node.kwargs.get("memory_format", torch.contiguous_format) \
                    not in (torch.contiguous_format, torch.preserve_format):
                raise Unknown(f"`{node.name}` clones to {node.kwargs['memory_format']}")
            return dataclasses.replace(self.value(args[0]), shape=_shape(node))
        if t == aten.expand.default:
            return self._expand(node, self.value(args[0]))
        if t == aten.full.default:
            if list(args[0]) and math.prod(args[0]) != 1:
                raise Unknown(f"`{node.name}` is a full tensor of shape {args[0]}")
            return Val(const(args[1]), dtype, "const")
        if t == operator.getitem:
            src = args[0]
            if isinstance(src, Node) and src.target == aten.max.dim and args[1] == 0:
                self.visited.add(src)
                return self._reduce(node, src.args[0], src.args[1] if len(src.args) > 1 else None,
                                    bool(src.args[2]) if len(src.args) > 2 else False)
            if isinstance(src, Node) and src.target == aten.frexp.Tensor:
                raise Unknown(f"the exponent is read by torch.frexp (`{src.name}`), which gives 0 for an all-zero "
                              "block and for inf, where floor(log2(amax)) gives -inf and inf (clamped to -127 "
                              "and 127): no recipe computes that")
            raise Unknown(f"`{node.name}` takes item {args[1]} of `{getattr(src, 'name', src)}`")
        if t == aten.amax.default:
            dims = args[1] if len(args) > 1 else []
            return self._reduce(node, args[0], list(dims), bool(args[2]) if len(args) > 2 else False)
        if t == aten.max.default:
            return self._reduce(node, args[0], [], False)
        if t in _EXACT:
            v = self.value(args[0])
            return self._like(v, (_EXACT[t], v.expr), dtype, v.narrow, node)
        if t in _UNARY:
            v = self.value(args[0])
            expr, narrow = self._round((_UNARY[t], v.expr), torch.float32, dtype)
            return self._like(v, expr, dtype, narrow, node)
        if t == aten.square.default:
            return self._binary(node, "pow", self.value(args[0]), self.value(2))
        if t in (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default):
            return self._clamp(node)
        if t == aten.where.self:
            return self._where(node)
        if t in _BINARY:
            name = _BINARY[t]
            if node.kwargs.get("alpha", 1) != 1:
                raise Unknown(f"`{node.name}` has alpha={node.kwargs['alpha']}")
            a, b = self.value(args[0]), self.value(args[1])
            if name == "rsub":
                a, b, name = b, a, "sub"
            return self._binary(node, name, a, b)
        raise Unknown(f"`{node.name}` ({t}) is not an op the recogniser reads")

    # --- shapes ----------------------------------------------------------------------------
    def _view(self, node: Node, v: Val) -> Val:
        if v.level == "const":
            return v
        if v.level == "leaf":
            raise Unknown(f"`{node.name}` reshapes an input")
        if not v.ordered:
            raise Unknown(f"`{node.name}` reshapes a permuted view (the elements move)")
        shape = _shape(node)
        return dataclasses.replace(v, shape=shape, base=shape, perm=tuple(range(len(shape))))

    def _permute(self, node: Node, v: Val) -> Val:
        if v.level in ("const", "leaf"):
            raise Unknown(f"`{node.name}` permutes a {v.level}")
        nd = len(v.shape)
        if node.target == aten.permute.default:
            dims = [d % nd for d in node.args[1]]
        elif node.target == aten.t.default:
            dims = [1, 0] if nd == 2 else list(range(nd))
        else:
            a, b = (d % nd for d in node.args[1:3])
            dims = list(range(nd))
            dims[a], dims[b] = dims[b], dims[a]
        perm = tuple(v.perm[d] for d in dims)
        return dataclasses.replace(v, shape=_shape(node), perm=perm)

    def _expand(self, node: Node, v: Val) -> Val:
        if v.level == "const":
            return v
        if v.level == "group" and v.ordered and self._broadcasts(v, _shape(node)):
            # a group value spread over its group: an elem value
            shape = _shape(node)
            return dataclasses.replace(v, level="elem", shape=shape, base=shape, perm=tuple(range(len(shape))),
                                       expr=("bcast", v.expr))
        if tuple(v.shape) == _shape(node):
            return v
        raise Unknown(f"`{node.name}` expands {tuple(v.shape)} to {_shape(node)}")

    def _elem_ok(self, shape: tuple) -> bool:
        return math.prod(shape) == self.numel

    def _broadcasts(self, g: Val, shape: tuple) -> bool:
        """Broadcasting ``g`` (a group value in group order) to ``shape`` (in ``y``'s element order)
        gives each element its own group's value."""
        if not self._elem_ok(shape) or not g.group:
            return False
        gs = (1,) * (len(shape) - len(g.shape)) + tuple(g.shape)
        if len(gs) != len(shape):
            return False
        k = max((i + 1 for i, d in enumerate(gs) if d != 1), default=0)
        if any(gs[i] != shape[i] for i in range(k) if shape[i] != 1):
            return False
        return math.prod(shape[k:]) == g.group

    def _reduce(self, node: Node, src: Node, dims, keepdim: bool) -> Val:
        v = self.value(src)
        if v.level != "elem":
            raise Unknown(f"`{node.name}` reduces a {v.level} value")
        if not v.ordered:
            raise Unknown(f"`{node.name}` reduces a permuted view")
        nd = len(v.shape)
        dims = [dims] if isinstance(dims, int) else dims
        dims = sorted({d % nd for d in dims}) if dims else list(range(nd))
        if dims != list(range(nd - len(dims), nd)):
            raise Unknown(f"`{node.name}` reduces dims {dims} of {tuple(v.shape)}: not the trailing dims "
                          "(a group must be consecutive elements of a row)")
        group = math.prod(v.shape[d] for d in dims)
        if group != self.numel and self.hidden % group:
            raise Unknown(f"`{node.name}` reduces {group} elements, which do not tile a row of {self.hidden}")
        shape = _shape(node)
        return Val(("amax", v.expr), self._dtype(node), "group", shape, shape, tuple(range(len(shape))), group,
                   v.narrow)

    # --- pointwise -------------------------------------------------------------------------
    def _join(self, node: Node, a: Val, b: Val) -> Val:
        """The level and index map of a pointwise result of ``a`` and ``b``."""
        shape = _shape(node)
        levels = {a.level, b.level} - {"const"}
        if not levels:
            return Val((), self._dtype(node), "const")
        if levels == {"leaf"}:
            return Val((), self._dtype(node), "leaf", shape)
        if "leaf" in levels and levels & {"elem", "group"}:
            # a static scale: a one-element input broadcast over everything
            leaf = a if a.level == "leaf" else b
            other = b if leaf is a else a
            if math.prod(leaf.shape) != 1:
                raise Unknown(f"`{node.name}` combines the activation with an input of shape {leaf.shape}")
            return dataclasses.replace(other, shape=shape) if other.level != "elem" or tuple(other.shape) == shape \
                else self._fail_shape(node)
        if levels == {"elem"} or levels == {"group"}:
            vals = [v for v in (a, b) if v.level != "const"]
            first = vals[0]
            for v in vals:
                if v.group != first.group or not v.ordered or tuple(v.shape) != shape \
                        and math.prod(v.shape) != math.prod(shape):
                    raise Unknown(f"`{node.name}` combines values with different index maps")
                if tuple(v.shape) != shape and not _same_order(v.shape, shape):
                    raise Unknown(f"`{node.name}` broadcasts {tuple(v.shape)} to {shape}")
            return dataclasses.replace(first, shape=shape, base=shape, perm=tuple(range(len(shape))))
        # elem with group: the group value must be broadcast over its own group
        e, g = (a, b) if a.level == "elem" else (b, a)
        if not (e.ordered and g.ordered) or tuple(e.shape) != shape or not self._broadcasts(g, shape):
            raise Unknown(f"`{node.name}` broadcasts a scale of shape {tuple(g.shape)} over values of shape "
                          f"{tuple(e.shape)}, which does not give each element its own group's scale")
        return dataclasses.replace(e, shape=shape)

    def _fail_shape(self, node):
        raise Unknown(f"`{node.name}` broadcasts the activation")

    def _binary(self, node: Node, name: str, a: Val, b: Val) -> Val:
        out = self._join(node, a, b)
        dtype = self._dtype(node)
        ea, eb = (("bcast", v.expr) if v.level == "group" and out.level == "elem" else v.expr for v in (a, b))
        if name == "div" and a.level == "const" and a.expr == const(1):
            expr, exact = ("recip", eb), False
        elif name == "mul" and b.level == "const" and b.expr == const(1):
            return dataclasses.replace(out, expr=ea, dtype=dtype, narrow=a.narrow)
        elif name == "mul" and ea == eb:
            # x * x is pow(x, 2) (both one fp32 product, rounded once)
            expr, exact = ("pow", ea, const(2)), False
        elif name in ("max", "min"):
            ea, eb = (_stored(e, dtype) if v.level == "const" else e for v, e in ((a, ea), (b, eb)))
            expr, exact = self._sorted(name, ea, eb), True
        else:
            expr = self._sorted(name, ea, eb) if name in _COMMUTATIVE else (name, ea, eb)
            exact = False
        if exact:
            narrow = a.narrow if b.level == "const" else b.narrow if a.level == "const" \
                else (a.narrow if _fits(b.narrow, a.narrow) else b.narrow)
            if not all(_const_fits(e, narrow) for v, e in ((a, ea), (b, eb)) if v.level == "const"):
                narrow = torch.float32  # max(v, c) is c where c wins, which v's dtype may not hold
            expr, narrow = self._round(expr, narrow, dtype)
        else:
            expr, narrow = self._round(expr, torch.float32, dtype)
        return dataclasses.replace(out, expr=expr, dtype=dtype, narrow=narrow)

    @staticmethod
    def _sorted(name, ea, eb):
        return (name, *sorted((ea, eb), key=repr))

    def _clamp(self, node: Node) -> Val:
        t, args = node.target, node.args
        v = self.value(args[0])
        lo = hi = None
        if t == aten.clamp_min.default:
            lo = args[1]
        elif t == aten.clamp_max.default:
            hi = args[1]
        else:
            lo = args[1] if len(args) > 1 else node.kwargs.get("min")
            hi = args[2] if len(args) > 2 else node.kwargs.get("max")
        expr, narrow = v.expr, v.narrow
        for name, c in (("max", lo), ("min", hi)):
            if c is not None:
                ce = _stored(self.value(c).expr, self._dtype(node))
                narrow = narrow if _const_fits(ce, narrow) else torch.float32
                expr = self._sorted(name, expr, ce)
        return self._like(v, expr, self._dtype(node), narrow, node)

    def _where(self, node: Node) -> Val:
        """``where(x < c, c, x)`` is ``max(x, c)``; ``where(x > c, c, x)`` is ``min(x, c)``."""
        cond, a, b = node.args
        if not isinstance(cond, Node) or cond.target not in (aten.lt.Scalar, aten.le.Scalar, aten.gt.Scalar,
                                                              aten.ge.Scalar, aten.lt.Tensor, aten.gt.Tensor):
            raise Unknown(f"`{node.name}` selects with a condition the recogniser does not read")
        self.visited.add(cond)
        x, c = self.value(cond.args[0]), self.value(cond.args[1])
        va, vb = self.value(a), self.value(b)
        low = cond.target in (aten.lt.Scalar, aten.le.Scalar, aten.lt.Tensor)
        if c.level != "const":
            raise Unknown(f"`{node.name}` compares with a tensor")
        def same(k: Val) -> bool:
            # `torch.where(t < eps, eps, t)` stores eps as a full tensor of t's dtype
            return k.level == "const" and _as(k.expr[1], x.dtype) == _as(c.expr[1], x.dtype)
        if same(va) and vb.expr == x.expr:
            name = "max" if low else "min"
        elif same(vb) and va.expr == x.expr:
            name = "min" if low else "max"
        else:
            raise Unknown(f"`{node.name}` is a select that is not a max or min with a constant")
        ce = _stored(c.expr, self._dtype(node))
        return self._like(x, self._sorted(name, x.expr, ce), self._dtype(node),
                          x.narrow if _const_fits(ce, x.narrow) else torch.float32, node)


def _as(value: float, dtype: torch.dtype) -> float:
    return float(torch.tensor(value, dtype=dtype))


def _const_fits(c: tuple, narrow: torch.dtype) -> bool:
    """The constant ``c`` is exact in the 16-bit ``narrow`` (wider dtypes: always, as before)."""
    return narrow not in SIXTEEN_BIT or _as(c[1], narrow) == c[1]


def _stored(c: tuple, dtype: torch.dtype) -> tuple:
    """The constant of a max or min stored in ``dtype``: eager's 16-bit ``clamp_min(v, c)`` stores
    ``max(v, c)`` rounded, which for a ``v`` of that dtype is ``max(v, c rounded)`` (no value of the
    dtype lies between ``c`` and its rounding), and compares and selects likewise; torch rounds the
    Python float through fp32. (GPT-OSS's clamp limit is read so too: the same clamp.)"""
    if dtype not in SIXTEEN_BIT or c[0] != "c":
        return c
    return const(_as(_as(c[1], torch.float32), dtype))


def _same_order(a: tuple, b: tuple) -> bool:
    """Two shapes that differ only by size-1 dims (the same row-major order)."""
    return tuple(d for d in a if d != 1) == tuple(d for d in b if d != 1)
