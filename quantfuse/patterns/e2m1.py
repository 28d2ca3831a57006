"""MXFP4 sites by meaning: anchored on the E2M1 packing, the encoding checked by evaluating it.

An MXFP4 site writes uint8 bytes ``codes[2i] | (codes[2i + 1] << 4)`` (OCP: element 2i in the
low nibble), where ``codes`` are the E2M1 codes of ``y / 2^e``, ``e`` the block's clamped
exponent. Real code spells the encoding in many ways (counting thresholds, ``torch.round``
on the grid, torchao's bit trick on the float's bits), so it is not read symbolically: the
nodes from the scaled value ``v`` to ``codes`` (pointwise ops, casts, dtype views, views)
are run on every float32 value a 16-bit activation scaled by a power of two can produce,
and compared with the reference's E2M1 codes (:func:`quantfuse.custom_ops.reference.e2m1_codes`).
The scale (``parse_mx``), the activation and the outputs are read as for MXFP8.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch.fx import Node

from quantfuse import catalog
from quantfuse.patterns import canonical
from quantfuse.patterns import recognise as rec
from quantfuse.patterns import site as site_mod
from quantfuse.patterns.canonical import Interpreter, Unknown, const
from quantfuse.patterns.recognise import NotRecognised

aten = torch.ops.aten
prims = torch.ops.prims

_SHIFTS = {aten.__lshift__.Scalar, aten.bitwise_left_shift.Tensor_Scalar}
_COMBINES = {aten.bitwise_or.Tensor, aten.add.Tensor}
#: view-like ops of the encoding: they keep the row-major order (no permutes, no strided slices)
_VIEWS = canonical._VIEWS | {aten.clone.default, aten.contiguous.default, aten.alias.default}
_MAX_ANCESTORS = 400
#: magnitudes halfway between two E2M1 values: E2M1 rounds these to the even code
_TIES = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def _dtype(node) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def _numel(node) -> int | None:
    """The element count of ``node``'s value; with a symbolic token count, under
    :class:`canonical.symbolic_rows`, its count at the sample (the reader checks the rows); else None."""
    val = node.meta.get("val") if isinstance(node, Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    if not all(isinstance(d, int) for d in val.shape):
        try:
            return math.prod(canonical._shape(node))
        except Unknown:
            return None
    return math.prod(val.shape)


def _through_views(node):
    while isinstance(node, Node) and node.op == "call_function" and node.target in _VIEWS:
        node = node.args[0]
    return node


def _lane(node) -> tuple[Node, int] | None:
    """``(codes, k)`` when ``node`` holds the codes ``codes_flat[2i + k]`` in row-major order:
    ``codes[..., k::2]`` (also of a flattened view) or ``codes.reshape(..., 2)[..., k]``."""
    node = _through_views(node)
    if not isinstance(node, Node) or node.op != "call_function":
        return None
    if node.target == aten.slice.Tensor:
        base = node.args[0]
        shape = base.meta["val"].shape
        dim, start, end, step = (*node.args[1:], None, None, None, None)[:4]
        dim = (0 if dim is None else dim) % len(shape)
        start = 0 if start is None else start
        if dim == len(shape) - 1 and step == 2 and start in (0, 1) and (end is None or end >= shape[-1]) \
                and shape[-1] % 2 == 0:
            return base, start
    if node.target == aten.select.int:
        base = node.args[0]
        shape = base.meta["val"].shape
        if node.args[1] % len(shape) == len(shape) - 1 and shape[-1] == 2 and node.args[2] in (0, 1, -1, -2):
            return base, node.args[2] % 2
    return None


def _high(node) -> Node | None:
    """The operand of ``t << 4`` / ``t * 16``, else None."""
    node = _through_views(node)
    if not isinstance(node, Node) or node.op != "call_function":
        return None
    if node.target in _SHIFTS and node.args[1] == 4:
        return node.args[0]
    if node.target == aten.mul.Tensor:
        for a, b in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if b == 16 and isinstance(a, Node):
                return a
    return None


def read_packing(node: Node) -> tuple[Node, Node, Node, bool] | None:
    """``(codes, low lane node, high lane node, low nibble first)`` when ``node`` packs two
    4-bit lanes of one tensor into uint8 bytes, else None."""
    if node.op != "call_function" or node.target not in _COMBINES or _dtype(node) != torch.uint8:
        return None
    for lo, hi in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
        h = _high(hi)
        if h is None:
            continue
        a, b = _lane(lo), _lane(h)
        if a and b and a[0] is b[0] and a[1] != b[1]:
            return a[0], lo, hi, a[1] == 0
    return None


def ancestors(node: Node, limit: int = _MAX_ANCESTORS) -> set[Node]:
    """``node`` and the nodes it is computed from (at most ``limit``)."""
    seen, stack = set(), [node]
    while stack and len(seen) < limit:
        n = stack.pop()
        if n in seen or not isinstance(n, Node):
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def packing_nodes(pack: Node, base: Node, depth: int = 8) -> set[Node]:
    """The nodes on the paths from ``base`` to ``pack`` within ``depth`` steps, ``base`` left out:
    for a packing read_packing accepted, its lanes' views, slices and shifts and the combine (an
    ancestor walk would stop at a node limit, and a graph holds far more above the codes)."""
    reaches: dict[Node, bool] = {}

    def visit(n, d: int) -> bool:
        if n is base:
            return True
        if not isinstance(n, Node) or d == 0:
            return False
        if n not in reaches:
            reaches[n] = any([visit(a, d - 1) for a in n.all_input_nodes])  # a list: every input visited
        return reaches[n]
    visit(pack, depth)
    return {n for n, r in reaches.items() if r}


def find_candidates(graph: torch.fx.Graph) -> list[tuple[Node, Node, set[Node]]]:
    """``(pack, codes, ys)`` for each uint8 packing of two 4-bit lanes whose codes are computed
    from a reduction of ``|y|`` of an activation output ``y`` (the MXFP4 skeleton)."""
    out = []
    for node in graph.nodes:
        packing = read_packing(node)
        if packing is None:
            continue
        codes = packing[0]
        ys = set()
        for r in ancestors(codes):
            if r.op == "call_function" and r.target in canonical._REDUCTIONS | rec._NEAR_REDUCTIONS:
                src = rec._strip_up(r.args[0])
                if isinstance(src, Node) and src.target == aten.abs.default:
                    ys.add(rec._strip_up(src.args[0]))
        ys = {y for y in ys if isinstance(y, Node) and rec._is_activation(y)}
        if ys:
            out.append((node, codes, ys))
    return out


# --- the scaled value and the encoding ---------------------------------------------------------

def _scaled(expr: tuple) -> tuple[tuple, bool] | None:
    """``(s, multiplier)`` of ``y / s``, ``y * (1 / s)`` or ``y * exp2(-e)`` (``s = exp2(e)``,
    multiplier True: recognise.parse_apply's MX multiplier), else None."""
    if expr[0] not in ("div", "mul"):  # (not a clamp, which parse_apply would read)
        return None
    try:
        fields, s = rec.parse_apply(expr, catalog.E2M1)
    except rec.NotRecognised:
        return None
    return s, fields.get(rec.MULTIPLIER, False)


def _find_scaled(y: Node, ancestors: list[Node]) -> Node | None:
    """The first fp32 value of ``y``'s elements divided by a per-block scale above the codes."""
    numel = _numel(y)
    for n in ancestors:
        if n.op != "call_function" or _dtype(n) != torch.float32 or _numel(n) != numel:
            continue
        try:
            v = Interpreter(y).value(n)
        except Unknown:
            continue
        if v.level == "elem" and v.ordered and _scaled(v.expr) is not None:
            return n
    return None


def _unread_scale(y: Node, above: list[Node]) -> str | None:
    """Why a division of ``y``'s elements above the codes (or a multiply by a reciprocal) is not
    read, when the scale is what fails."""
    for n in above:
        if n.op != "call_function" or n.target not in (aten.div.Tensor, aten.mul.Tensor):
            continue
        pairs = [(n.args[0], n.args[1])] + ([(n.args[1], n.args[0])] if n.target == aten.mul.Tensor else [])
        for a, s in pairs:
            if not isinstance(s, Node):
                continue
            interp = Interpreter(y)
            try:
                if interp.value(a).expr != rec.Y:
                    continue
            except Unknown:
                continue
            try:
                interp.value(s)
            except Unknown as e:
                bits = any(m.target == aten.view.dtype for m in ancestors(s, 60) if m.op == "call_function")
                how = " (computed from the float's bits)" if bits else ""
                verb = "divided" if n.target == aten.div.Tensor else "multiplied"
                return f"the activation is {verb} by `{s.name}`, a scale the recogniser does not read{how}: {e}"
    return None


def _is_constant(node: Node) -> bool:
    """A ``full`` / ``scalar_tensor`` (what a tensor literal of one value becomes post-grad)."""
    return node.op == "call_function" and node.target in (aten.full.default, aten.scalar_tensor.default)


def elementwise_reason(n: Node) -> str | None:
    """None when ``n`` computes each element from the same-index elements of its inputs (a
    pointwise op that is not random, a cast, a ``view(dtype)`` of the same width, an
    order-keeping view, a masked fill ``t[mask] = c``), else why not."""
    t = n.target
    if t == aten.index_put.default:
        idx = n.args[1]
        if len(idx) == 1 and _dtype(idx[0]) == torch.bool and _numel(idx[0]) == _numel(n.args[0]) \
                and not (len(n.args) > 3 and n.args[3]):
            return None
        return f"`{n.name}` writes {n.args[0].name} at indices"
    pointwise = isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags \
        and torch.Tag.nondeterministic_seeded not in t.tags
    if not (pointwise or t in _VIEWS or t in (aten.view.dtype, aten._to_copy.default)):
        return f"`{n.name}` ({t}) is not an elementwise op"
    if t == aten.view.dtype and _dtype(n).itemsize != _dtype(n.args[0]).itemsize:
        return f"`{n.name}` views {_dtype(n.args[0])} as {_dtype(n)} (another element count)"
    return None


#: ops elementwise in one argument that look its values up in a sorted table (the argument at the
#: index given): ``torch.bucketize(v, boundaries)``, ``torch.searchsorted(boundaries, v)``
_TABLE_OPS = {aten.bucketize.Tensor: 1, aten.searchsorted.Tensor: 0}
#: copies a tensor literal goes through post-grad (``torch.tensor([...])`` is a ``get_attr`` constant
#: copied by ``lift_fresh_copy``, ``.to(device)``)
_CONSTANT_COPIES = {aten.lift_fresh_copy.default, aten.clone.default, aten._to_copy.default}


def table_of(node: Node) -> torch.Tensor:
    """The values of the lookup table ``node`` (a constant tensor of the graph, through copies),
    on the CPU; NotRecognised when they are not known when the graph is compiled."""
    chain = [node]
    while chain[-1].op == "call_function" and chain[-1].target in _CONSTANT_COPIES:
        src = chain[-1].args[0]
        if not isinstance(src, Node) or chain[-1].target == aten._to_copy.default and \
                set(chain[-1].kwargs) - {"device", "layout", "pin_memory"}:
            break
        chain.append(src)
    src = chain[-1]
    module = node.graph.owning_module
    if src.op != "get_attr" or module is None:
        what = "a graph input (a module buffer or an argument)" if src.op == "placeholder" else f"`{src.name}`"
        raise NotRecognised(f"the E2M1 encoding looks the values up in `{node.name}`, {what}: only a constant "
                            "tensor of the graph (a tensor literal) can be checked when the graph is compiled")
    value = module
    for part in str(src.target).split("."):
        value = getattr(value, part, None)
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or not value.is_floating_point():
        raise NotRecognised(f"the E2M1 encoding's lookup table `{node.name}` is not a 1-D float tensor")
    value = value.detach().cpu()
    if bool(value.isnan().any()) or not bool((value[1:] >= value[:-1]).all()):
        raise NotRecognised(f"the E2M1 encoding's lookup table `{node.name}` is not sorted (its lookups are "
                            "then undefined)")
    return value


def encoding_region(v: Node, codes: Node) -> list[Node]:
    """The nodes from ``v`` (exclusive) to ``codes`` (inclusive), in graph order; NotRecognised
    when one is not a pointwise op / cast / view, or reads a value other than ``v``."""
    above = ancestors(codes, 10 * _MAX_ANCESTORS)
    order = {n: i for i, n in enumerate(codes.graph.nodes)}
    region: list[Node] = []
    inside = {v}
    numel = _numel(v)
    for n in sorted(above, key=order.__getitem__):
        if order[n] <= order[v] or not any(a in inside for a in n.all_input_nodes):
            continue
        table = n.args[_TABLE_OPS[n.target]] if n.target in _TABLE_OPS else None
        if table is not None:
            if table in inside or n.kwargs.get("sorter") is not None:
                raise NotRecognised(f"the E2M1 encoding `{n.name}` looks values up in a table computed from the "
                                    "scaled values")
            table_of(table)
        for a in n.all_input_nodes:
            if a not in inside and not _is_constant(a) and a is not table and not canonical.is_size(a):
                raise NotRecognised(f"the E2M1 encoding `{n.name}` reads `{a.name}` besides the scaled values "
                                    f"`{v.name}`")
        why = None if table is not None else elementwise_reason(n)
        if why:
            raise NotRecognised(f"the E2M1 encoding uses {why}")
        if _numel(n) != numel:
            raise NotRecognised(f"the E2M1 encoding `{n.name}` has {_numel(n)} elements where the scaled values "
                                f"have {numel}")
        region.append(n)
        inside.add(n)
    if codes not in inside:
        raise NotRecognised(f"the codes `{codes.name}` are not computed from the scaled values `{v.name}`")
    return region


@functools.lru_cache(maxsize=1)
def probe_values() -> torch.Tensor:
    """Every float32 value a 16-bit activation divided by a power of two in ``[2^-127, 2^127]``
    can produce, and more: all floats with at most 12 significant bits (every bit pattern with
    the low 12 mantissa bits zero: both zeros, the subnormals of that form, ±inf), the
    subnormals with at most 11 significant bits anywhere (a tiny value divided by a large
    scale rounds there), no NaN."""
    hi = torch.arange(1 << 20, dtype=torch.int64) << 12
    sub = torch.cat([torch.arange(1, 1 << 11, dtype=torch.int64) << s for s in range(12)])
    sub = torch.cat((sub, sub | (1 << 31)))
    # unique on the bits: a float unique would merge -0.0 into 0.0
    bits = torch.cat((hi, sub)).unique().to(torch.int32)  # wraps the sign bit in: the negative values
    vals = bits.view(torch.float32)
    return vals[~torch.isnan(vals)]


#: ops whose float results a device may round otherwise (libm / CUDA's math library: within an
#: ulp or two): :func:`evaluate`'s "up" and "down" variants move them by one ulp, where the
#: result is not exact (an integer power of two, the log2 of one)
_ROUNDED_MATH = {aten.exp.default, aten.exp2.default, aten.log.default, aten.log2.default, aten.sqrt.default,
                 aten.sigmoid.default, aten.tanh.default, aten.pow.Scalar, aten.pow.Tensor_Scalar,
                 aten.pow.Tensor_Tensor, aten.rsqrt.default, aten.expm1.default, aten.log1p.default}
#: the ways :func:`evaluate` runs a region: CPU torch as is; a division by a Python number as
#: CUDA's torch computes it (a multiply by the fp32 reciprocal); rounded math one ulp up / down
VARIANTS = ("exact", "cuda_div", "up", "down")
#: a further way, not among the VARIANTS: ``exp2(-127.)`` one ulp below 2^-127, as torch's CUDA
#: ``exp2`` gives it (the one integer exponent it does not give exactly): where a result changes
#: under it, the site multiplies by the device's own value (catalog.MX_DEVICE_INF / MX_DEVICE_BYTE0)
DEVICE_EXP2 = "device_exp2"


def _exact_math(n: Node, args: tuple, out: torch.Tensor) -> torch.Tensor:
    """Where ``n``'s result is exact on every device: exp2 / 2 ** x of an integer, log2 of a
    power of two, a non-finite input or result."""
    x = args[1] if n.target == aten.pow.Scalar else args[0]
    exact = ~torch.isfinite(out)
    if isinstance(x, torch.Tensor):
        exact |= ~torch.isfinite(x)
        if n.target == aten.exp2.default or (n.target == aten.pow.Scalar and args[0] == 2):
            exact |= x == torch.round(x)
        elif n.target == aten.log2.default:
            exact |= (torch.frexp(x.float())[0].abs() == 0.5) | (x == 0)
    return exact


def evaluate(region: list[Node], inputs: dict, values: torch.Tensor | None = None,
             outputs: list[Node] | None = None, variant: str = "exact"):
    """``region``'s nodes run on 1-D tensors: ``inputs`` maps its input nodes to values (or
    ``inputs`` is the one input node and ``values`` its values); returns the last node's value,
    or those of ``outputs``. Each view is the identity (every node is an elementwise function of
    the inputs in their row-major order), ``full`` a 0-d tensor, the ops run on the CPU, in the
    :data:`VARIANTS` way ``variant``."""
    env: dict[Node, torch.Tensor] = dict(inputs) if isinstance(inputs, dict) else {inputs: values}

    def arg(a):
        if isinstance(a, Node):
            if a not in env and not _is_constant(a):  # a lookup table
                env[a] = table_of(a)
            if a not in env:  # a constant input
                env[a] = torch.tensor(a.args[1] if a.target == aten.full.default else a.args[0],
                                      dtype=a.kwargs.get("dtype") or _dtype(a))
            return env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(arg(b) for b in a)
        return a
    for n in region:
        if n.target in _VIEWS:
            env[n] = env[n.args[0]]
            continue
        args = arg(n.args)
        kwargs = {k: arg(val) for k, val in n.kwargs.items() if k not in ("device", "layout", "pin_memory")}
        if n.target == aten._to_copy.default:
            kwargs.pop("memory_format", None)
        if variant == "cuda_div" and n.target in (aten.div.Tensor, aten.div.Scalar) and not kwargs \
                and isinstance(args[1], (int, float)) and args[0].dtype == torch.float32:
            out = args[0] * torch.tensor(1.0 / args[1], dtype=torch.float32)
        else:
            out = n.target(*args, **kwargs)
        if variant == DEVICE_EXP2 and n.target == aten.exp2.default and out.dtype == torch.float32:
            out = torch.where(args[0] == -127, torch.nextafter(out, torch.zeros_like(out)), out)
        if variant in ("up", "down") and n.target in _ROUNDED_MATH and out.is_floating_point():
            moved = torch.nextafter(out, torch.full_like(out, float("inf") if variant == "up" else float("-inf")))
            out = torch.where(_exact_math(n, args, out), out, moved)
        env[n] = out
    if outputs is None:
        return env[region[-1]]
    return [env[n] for n in outputs]


def _show(values: torch.Tensor) -> str:
    return ", ".join(f"{float(x):g}" for x in values[:4])


def encoding_difference(got: torch.Tensor, want: torch.Tensor, values: torch.Tensor) -> str | None:
    """None when ``got`` are E2M1's codes of ``values``, else what differs (a near miss's reason)."""
    if got.dtype != torch.uint8:
        return f"the E2M1 codes are {got.dtype}, not uint8"
    wrong = got != want
    if not bool(wrong.any()):
        return None
    bad, g, w = values[wrong], got[wrong], want[wrong]
    mag = bad.abs()
    example = f"{float(bad[0]):g} gives code {int(g[0])}, E2M1 code {int(w[0])}"
    if bool(torch.isin(mag, torch.tensor(_TIES)).all()):
        up = (g & 7) > (w & 7)
        how = "away from zero" if bool(up.all()) else "toward zero" if not bool(up.any()) else "unlike ties to even"
        return f"the E2M1 encoding rounds ties {how} where E2M1 rounds them to even (at |v| = " \
               f"{_show(mag.unique())}: {example})"
    if bool((mag > catalog.E2M1.max).all()):
        return f"the E2M1 encoding does not saturate at ±{catalog.E2M1.max} ({example})"
    if bool(((g ^ w) == 8).all()):
        return f"the E2M1 encoding sets the sign bit unlike E2M1's sign of the value ({example}; E2M1 keeps " \
               "the sign of -0.0 and of negative values that round to zero)"
    return f"the E2M1 encoding differs from round-to-nearest-even with saturation at ±{catalog.E2M1.max} at " \
           f"{int(wrong.sum())} of {values.numel()} float32 values ({example})"


def _structure(region: list[Node], v: Node) -> tuple:
    """What the encoding computes, without node names or shapes (views are the identity there):
    equal for the same encoding in every layer of a model, so each is evaluated once."""
    index = {v: ("v",)}

    def norm(a):
        if isinstance(a, Node):
            if a not in index and not _is_constant(a):  # a lookup table: its values
                t = table_of(a)
                index[a] = ("t", str(t.dtype), tuple(t.tolist()))
            if a not in index:
                index[a] = ("c", a.target, repr(a.args[1:]), repr(a.kwargs.get("dtype")))
            return index[a]
        if isinstance(a, (list, tuple)):
            return tuple(norm(b) for b in a)
        return repr(a)
    out = []
    for i, n in enumerate(region):
        if n.target in _VIEWS:
            out.append((n.target, norm(n.args[0])))
        else:
            out.append((n.target, norm(n.args), norm(tuple(sorted((k, w) for k, w in n.kwargs.items()
                                                                   if k not in ("device", "layout", "pin_memory"))))))
        index[n] = ("n", i)
    return tuple(out)


_CHECKED: dict[tuple, str | None] = {}


def check_encoding(region: list[Node], v: Node) -> None:
    """NotRecognised naming the difference unless ``region`` computes E2M1's codes of ``v``."""
    key = _structure(region, v)
    if key not in _CHECKED:
        if len(_CHECKED) > 64:
            _CHECKED.clear()
        _CHECKED[key] = _encoding_reason(region, v)
    if _CHECKED[key]:
        raise NotRecognised(_CHECKED[key])


def _encoding_reason(region: list[Node], v: Node) -> str | None:
    from quantfuse.custom_ops.reference import e2m1_codes

    values = probe_values()
    try:
        got = evaluate(region, v, values)
    except (RuntimeError, TypeError, ValueError) as e:
        return f"the E2M1 encoding could not be evaluated ({type(e).__name__}: {e})"
    return encoding_difference(got, e2m1_codes(values), values)


# --- the site ---------------------------------------------------------------------------------

def read_site(pack: Node, codes: Node, y: Node, config) -> rec.Site:
    """Read one MXFP4 candidate; NotRecognised names the first thing that does not fit.

    A block scale the canonical interpreter cannot read, or reads as no recipe, is read by
    evaluating it (:mod:`quantfuse.patterns.mx_scale`); when that fails too, the reason is the
    interpreter's, unless it could not read the scale at all."""
    _, lo, hi, low_first = read_packing(pack)
    if not low_first:
        raise NotRecognised("the packing puts element 2i in the high nibble: MXFP4 (OCP) puts it in the low "
                            "nibble (codes[..., ::2] | codes[..., 1::2] << 4)")
    x_dtype = _dtype(y)
    if x_dtype not in config.torch_dtypes:
        raise NotRecognised(f"input dtype {x_dtype} is not supported (supported: {', '.join(config.dtypes)})")
    if x_dtype == torch.float32:
        raise NotRecognised(site_mod.FP32_MX_REASON)

    def encode(v: Node) -> set[Node]:
        region = encoding_region(v, codes)
        check_encoding(region, v)
        packing = set(region) | {lo, hi} | {n for n in ancestors(lo, 8) | ancestors(hi, 8)
                                            if n not in ancestors(codes)}
        tables = {n.args[_TABLE_OPS[n.target]] for n in region if n.target in _TABLE_OPS}
        constants = {a for n in region for a in n.all_input_nodes if (_is_constant(a) or a in tables) and
                     all(u in packing for u in a.users)}
        return packing | constants
    # the packing pairs codes 2i, 2i + 1 of the row-major order (read_packing), also over views of
    # the codes that flatten the rows (torchao's pack_uint4): with an even row (MX blocks of 32)
    # no pair straddles two rows, so those nodes need not keep the rows at a symbolic count
    packing = frozenset(packing_nodes(pack, _through_views(codes))) if canonical.is_symbolic(y) else frozenset()
    try:
        return rec.read_for_every_count(y, lambda: _read_canonical(pack, codes, y, encode), packing)
    except NotRecognised as e:
        try:
            site = rec.read_for_every_count(
                y, lambda: rec.read_evaluated_mx(pack, codes, y, catalog.MXFP4, config, encode), packing)
        except NotRecognised as e2:
            raise (e2 if isinstance(e, rec._Unreadable) else e) from None
        if site is None:
            raise
        return site


def _read_canonical(pack: Node, codes: Node, y: Node, encode) -> rec.Site:
    element = catalog.E2M1
    order = {n: i for i, n in enumerate(pack.graph.nodes)}
    above = sorted(ancestors(codes), key=order.__getitem__)
    v = _find_scaled(y, above)
    if v is None:
        raise rec._Unreadable(_unread_scale(y, above) or "the E2M1 codes are not computed from y / 2^e in float32 "
                              "(the activation divided by its block's power of two)")
    interp = Interpreter(y)
    vv = interp.value(v)
    s_expr, multiplier = _scaled(vv.expr)
    groups = {val.group for val in interp.memo.values() if val.level == "group"}
    if rec.exp2_arg(s_expr) is None or groups != {catalog.MX_BLOCK}:
        raise NotRecognised(f"the values encoded as E2M1 are y / {rec._show(s_expr)} over groups of "
                            f"{sorted(groups)}: MXFP4 divides by a power of two 2^e per block of {catalog.MX_BLOCK}")
    more, exponent = rec.parse_mx(s_expr, element, multiplier)
    extra = encode(v)
    scheme = catalog.MXFP4
    recipe = dataclasses.replace(scheme.base, **more)
    scale_out = (("to_uint8", Interpreter._sorted("add", exponent, const(catalog.E8M0_BIAS))), torch.uint8)
    rec._forward_bytes(interp, exponent)
    return rec.finish_site(interp, pack, y, scheme, recipe, s_expr, scale_out, element=element,
                           mx_exponent=exponent, extra=frozenset(extra))
