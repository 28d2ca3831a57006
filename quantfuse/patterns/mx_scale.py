"""MX block scales by meaning: what a site computes from each block's amax, evaluated.

An MX site's scale is a function of one number per block of 32, its amax: the E8M0 byte it
stores and the value its elements are divided (or multiplied) by. Real code computes it in many
ways: ``exp2(clamp(floor(log2(amax)) - 8, -127, 127))`` in floats (read symbolically by
:func:`quantfuse.patterns.recognise.parse_mx`), or torchao's ``to_mx`` from the float's bits
(``view(torch.int32)``, shifts, masks, ``where(isnan(amax), 0xFF, ...)``, the byte shifted
back into a float's exponent and floored at ``2^-126``; RCEIL's nest of ``where`` on the
byte). Such a scale is not read symbolically: the nodes computed from the amax alone
(elementwise ops, casts, dtype views: :func:`quantfuse.patterns.e2m1.elementwise_reason`) are
run on every amax a 16-bit activation can have (each non-negative value of its dtype, inf and
NaN) and compared with every MX recipe's bytes and multipliers
(:func:`quantfuse.custom_ops.reference.mx_block_scales`), so any spelling that computes a
recipe's bits is that recipe, and one that computes no recipe's is a near miss saying where it
differs. The evaluation runs on the CPU; that it holds on the GPU too is checked by running it
again with a division by a number done as CUDA's torch does it (a multiply by the fp32
reciprocal) and with every libm result (log2, exp2, ...) moved one ulp up and down where it is
not exact: the bytes and multipliers must not change.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator

import torch
from torch.fx import Node

from quantfuse import catalog
from quantfuse.catalog import MxByte0, MxInf, MxNan, MxRounding
from quantfuse.patterns import canonical
from quantfuse.patterns import e2m1
from quantfuse.patterns.canonical import Interpreter, Unknown
from quantfuse.patterns.recognise import NotRecognised

aten = torch.ops.aten

#: the leaf the interpreter gives the block factor (``y / F`` or ``y * F``)
FACTOR = ("mx_factor",)
FP32_REASON = ("MX of a float32 activation: a block scale the recogniser evaluates is checked on every amax a "
               "16-bit activation can have, and a float32 amax can be any float")


@dataclasses.dataclass
class Found:
    """An MX skeleton: ``scaled = y / factor`` (or ``y * factor``), ``factor`` computed from the
    block amax ``amax`` alone through ``region`` (graph order)."""

    amax: Node
    #: elements per block (the MX block is 32; another is reported)
    group: int
    factor: Node
    scaled: Node
    divides: bool
    region: list[Node]


def _numel(node) -> int | None:
    return e2m1._numel(node)


def _closure(amax: Node) -> list[Node]:
    """The nodes computed elementwise from ``amax`` and constants alone, in graph order."""
    order = {n: i for i, n in enumerate(amax.graph.nodes)}
    numel = _numel(amax)
    inside, out = {amax}, []
    stack = list(amax.users)
    seen = set()
    candidates = []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        candidates.append(n)
        stack.extend(n.users)
    for n in sorted(candidates, key=order.__getitem__):
        if n.op != "call_function" or _numel(n) != numel or e2m1.elementwise_reason(n) is not None:
            continue
        if all(a in inside or e2m1._is_constant(a) for a in n.all_input_nodes):
            inside.add(n)
            out.append(n)
    return out


def _amax_node(y: Node, above: list[Node]) -> tuple[Node, int] | None:
    """The first node of ``above`` that is ``max |y|`` over blocks (the interpreter's reading), and
    the block size."""
    for n in above:
        if n.op != "call_function" or n.target not in canonical._REDUCTIONS | {operator.getitem}:
            continue
        try:
            v = Interpreter(y).value(n)
        except Unknown:
            continue
        if v.level == "group" and v.ordered and v.expr == ("amax", ("abs", ("y",))):
            return n, v.group
    return None


def find(y: Node, above: list[Node]) -> Found | None:
    """The MX skeleton among ``above`` (the anchor's ancestors, in graph order): the reduction of
    ``|y|`` over blocks and the first float32 ``y / F`` / ``y * F`` of ``y``'s elements whose ``F``
    is computed from that amax alone; None when there is none."""
    reduction = _amax_node(y, above)
    if reduction is None:
        return None
    amax, group = reduction
    region = _closure(amax)
    inside = set(region)
    numel = _numel(y)
    for n in above:
        if n.op != "call_function" or n.target not in (aten.div.Tensor, aten.mul.Tensor) \
                or e2m1._dtype(n) != torch.float32 or _numel(n) != numel:
            continue
        pairs = [(n.args[0], n.args[1])]
        if n.target == aten.mul.Tensor:
            pairs.append((n.args[1], n.args[0]))
        for a, f in pairs:
            if f not in inside or not isinstance(a, Node):
                continue
            try:
                v = Interpreter(y).value(a)
            except Unknown:
                continue
            if v.level == "elem" and v.ordered and v.expr == ("y",) and v.dtype == torch.float32:
                keep = e2m1.ancestors(f, 10 * e2m1._MAX_ANCESTORS)
                return Found(amax, group, f, n, n.target == aten.div.Tensor,
                             [r for r in region if r in keep or _leads_to_bytes(r, inside)])
    return None


def _leads_to_bytes(n: Node, inside: set) -> bool:
    """``n`` is computed on the way to uint8 values read outside the amax's closure (the scale
    bytes of a spelling that computes them apart from the factor)."""
    stack, seen = [n], set()
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        if e2m1._dtype(m) == torch.uint8 and any(u not in inside for u in m.users):
            return True
        stack.extend(u for u in m.users if u in inside)
    return False


def interpreter(y: Node, found: Found) -> Interpreter:
    """An interpreter of ``y``'s side of the site, the factor a block-level leaf (:data:`FACTOR`)."""
    interp = Interpreter(y)
    interp.value(found.amax)
    shape = canonical._shape(found.factor)
    interp.memo[found.factor] = canonical.Val(FACTOR, torch.float32, "group", shape, shape,
                                              tuple(range(len(shape))), found.group)
    return interp


@functools.lru_cache(maxsize=4)
def probe_amax(dtype: torch.dtype) -> torch.Tensor:
    """Every amax of a ``dtype`` (16-bit) activation's block, as float32: each non-negative value
    (±0 as +0, subnormals, +inf) and NaN."""
    if dtype not in canonical.SIXTEEN_BIT:
        raise ValueError(f"no exhaustive amax probe for {dtype}")
    bits = torch.arange(0, 0x7C01 if dtype == torch.float16 else 0x7F81, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype).float()
    return torch.cat((values, torch.tensor([float("nan")])))


def _same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise equality of values, NaN equal to NaN (payloads aside)."""
    if a.is_floating_point() or b.is_floating_point():
        a, b = a.double(), b.double()
        return (a == b) | (torch.isnan(a) & torch.isnan(b))
    return a.long() == b.long()


def _run(found: Found, outputs: list[Node], amax: torch.Tensor) -> list[torch.Tensor]:
    """``outputs``' values for the probe ``amax`` in every :data:`e2m1.VARIANTS`; NotRecognised
    when a variant changes one (the scale depends on how the device rounds)."""
    inputs = {found.amax: amax.to(e2m1._dtype(found.amax))}
    try:
        runs = {v: e2m1.evaluate(found.region, inputs, outputs=outputs, variant=v) for v in e2m1.VARIANTS}
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise NotRecognised(f"the MX scale could not be evaluated ({type(e).__name__}: {e})") from None
    base = runs["exact"]
    for variant, got in runs.items():
        for node, a, b in zip(outputs, base, got):
            diff = ~_same(a.reshape(-1), b.reshape(-1))
            if bool(diff.any()):
                at = float(amax[diff.nonzero()[0, 0]])
                how = "CUDA's division by a number (a multiply by the reciprocal)" if variant == "cuda_div" \
                    else "a libm result one ulp off"
                raise NotRecognised(f"the MX scale `{node.name}` depends on how the device rounds: {how} changes "
                                    f"it at amax = {at:g}")
    return [t.reshape(-1) for t in base]


def _recipes(element: catalog.Element):
    """Every MX recipe of ``element``'s scheme, defaults first (each field in enum order)."""
    base = (catalog.MXFP8 if element is catalog.E4M3 else catalog.MXFP4).base
    # the device's values are not bits a CPU evaluation can tell apart: _device_form reads them
    byte0s = [b for b in MxByte0 if b not in catalog.MX_DEVICE_BYTE0]
    infs = [i for i in MxInf if i not in catalog.MX_DEVICE_INF]
    for rounding, inf, byte0, nan in itertools.product(MxRounding, infs, byte0s, MxNan):
        yield dataclasses.replace(base, mx_rounding=rounding, mx_inf=inf, mx_byte0=byte0, mx_nan=nan)


@functools.lru_cache(maxsize=4)
def _candidates(element: catalog.Element, dtype: torch.dtype) -> tuple:
    """``(recipe, bytes, multipliers)`` of every MX recipe of ``element`` on the probe amaxes of ``dtype``."""
    from quantfuse.custom_ops import reference

    amax = probe_amax(dtype)
    return tuple((r, *reference.mx_block_scales(amax, r)) for r in _recipes(element))


def _fields(r: catalog.Recipe) -> dict:
    return {f: getattr(r, f) for f, _ in catalog.MX_CODE_FIELDS}


def _spec(r: catalog.Recipe) -> str:
    return ", ".join(f"{f}={getattr(r, f).value}" for f, _ in catalog.MX_CODE_FIELDS)


def check(y: Node, found: Found) -> None:
    """NotRecognised unless the skeleton's scale can be evaluated: blocks of 32, a 16-bit activation."""
    if found.group != catalog.MX_BLOCK:
        raise NotRecognised(f"the block scale is computed from the amax by ops the recogniser evaluates only for MX "
                            f"blocks of {catalog.MX_BLOCK} elements (these have {found.group})")
    if e2m1._dtype(y) not in canonical.SIXTEEN_BIT:
        raise NotRecognised(FP32_REASON)


def read(y: Node, found: Found, element: catalog.Element, site: set[Node]) -> tuple[dict, list[Node]]:
    """The MX recipe fields the site computes and its scale-byte nodes (the region's values read
    by nodes not in ``site``, which the fused op's bytes replace); NotRecognised says why not."""
    check(y, found)
    exported = [n for n in found.region if any(u not in site for u in n.users)]
    for n in exported:
        if e2m1._dtype(n) != torch.uint8:
            raise NotRecognised(f"intermediate value `{n.name}` of the MX scale has a consumer outside the pattern "
                                f"({', '.join(u.name for u in n.users if u not in site)}); the fused op returns q "
                                "and the E8M0 scale bytes only")
    index = {n: i for i, n in enumerate(found.region)}
    # one evaluation per way of computing the scale (every layer of a model computes it alike)
    key = (e2m1._structure(found.region, found.amax), index[found.factor], tuple(index[n] for n in exported),
           found.divides, element.name, e2m1._dtype(y), e2m1._dtype(found.amax))
    if key not in _READ:
        if len(_READ) > 64:
            _READ.clear()
        fields = _read(y, found, element, exported)
        _READ[key] = fields
    return _READ[key], exported


#: structure of an evaluated scale -> the MX fields it computes (the successful readings)
_READ: dict[tuple, dict] = {}


def _device_form(found: Found, amax: torch.Tensor, factor: torch.Tensor, r: catalog.Recipe,
                 ref_bytes: torch.Tensor) -> dict:
    """The fields that say where the site's factor is the device's own ``exp2(-127.)``
    (e2m1.DEVICE_EXP2): a multiplier of inf blocks (torchao's RCEIL ``exp2(127 - byte)``:
    ``mx_inf=exp2``), a divisor of byte-0 blocks (``mx_byte0=exp2``); {} where it is not used;
    NotRecognised where it is used elsewhere."""
    try:
        moved = e2m1.evaluate(found.region, {found.amax: amax.to(e2m1._dtype(found.amax))}, outputs=[found.factor],
                              variant=e2m1.DEVICE_EXP2)[0].reshape(-1)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return {}
    diff = ~_same(moved, factor)
    if not bool(diff.any()):
        return {}
    inf, byte0 = torch.isinf(amax), ref_bytes == 0
    if not found.divides and r.mx_inf is MxInf.CLAMP and bool((inf | ~diff).all()):
        return {"mx_inf": MxInf.EXP2}
    if found.divides and r.mx_byte0 is MxByte0.EXACT and bool((byte0 | ~diff).all()):
        return {"mx_byte0": MxByte0.EXP2}
    at = float(amax[diff.nonzero()[0, 0]])
    raise NotRecognised(f"the MX block scale uses the device's exp2(-127.) where no MX recipe does: at amax = {at:g}")


def _read(y: Node, found: Found, element: catalog.Element, exported: list[Node]) -> dict:
    amax = probe_amax(e2m1._dtype(y))
    factor, *values = _run(found, [found.factor] + exported, amax)
    f64 = factor.double()
    site_m = 1.0 / f64 if found.divides else f64
    zero = amax == 0
    best = None
    for r, ref_bytes, ref_m in _candidates(element, e2m1._dtype(y)):
        same = _same(site_m, ref_m)
        # an all-zero block's elements are +-0 times any finite multiplier
        same |= zero & torch.isfinite(site_m) & torch.isfinite(ref_m.double())
        wrong = int((~same).sum())
        if wrong == 0:
            for n, got in zip(exported, values):
                bad = ~_same(got, ref_bytes)
                if bool(bad.any()):
                    i = bad.nonzero()[0, 0]
                    raise NotRecognised(f"the scale bytes `{n.name}` are not the E8M0 bytes of the block scale the "
                                        f"elements get ({_spec(r)}): at amax = {float(amax[i]):g} the byte is "
                                        f"{int(got[i])}, not {int(ref_bytes[i])}")
            return {**_fields(r), **_device_form(found, amax, factor, r, ref_bytes)}
        if best is None or wrong < best[0]:
            best = (wrong, r, (~same).nonzero()[0, 0], ref_m)
    wrong, r, i, ref_m = best
    how = "divided by" if found.divides else "multiplied by"
    raise NotRecognised(f"the MX block scale is no MX recipe's: at amax = {float(amax[i]):g} the elements are {how} "
                        f"{float(factor[i]):g}, where the nearest recipe ({_spec(r)}) multiplies them by "
                        f"{float(ref_m[i]):g} ({wrong} of {amax.numel()} amax values differ)")
