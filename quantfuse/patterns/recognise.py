"""Recognise activation -> FP8 quantisation sites by what they compute, and fuse them.

Runs after the pattern matcher (which fuses the spellings it was traced from) on what is
left. For every cast to an FP8 dtype:

1. find the site's skeleton: a reduction of ``|y|`` (amax / max) whose scale divides ``y``
   before the cast, or ``y`` divided by a one-element input (static FP8); ``y`` must be an
   activation's output, else the cast is not an act -> quant site and is left alone silently;
2. interpret the slice between ``y`` and the outputs (:mod:`quantfuse.patterns.canonical`)
   and read the :class:`~quantfuse.catalog.Recipe` off the canonical expressions
   (:func:`derive_recipe`): grouping, floor, step dtype, apply form, clamp, UE8M0 form;
3. recognise the activation and its input layout upwards from ``y``
   (:func:`recognise_activation`): SiLU x Mul in any of the three layouts and either operand
   order, squared ReLU;
4. decide, in one named function (:func:`should_fuse`), whether the rewrite is a win where it
   runs; then replace the outputs with the fused op's (``recipe=`` carries the fields that
   differ from the op parameters' recipe), reshaped to the graph's shapes.

A site that has the skeleton but is not fused is reported with the exact reason. Nothing is
changed until the whole site is understood, so the graph stays byte-identical elsewhere.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from quantfuse import catalog
from quantfuse.catalog import ApplyForm, FloorAt, Grouping, Layout, Recipe, ScaleLayout, StepDtype, Ue8m0
from quantfuse.passes import profitability
from quantfuse.patterns import canonical
from quantfuse.patterns import site as site_mod
from quantfuse.patterns import swizzle
from quantfuse.patterns.op_call import positional_call
from quantfuse.patterns.canonical import Interpreter, Unknown, const

aten = torch.ops.aten
prims = torch.ops.prims

FP8_DTYPES = (torch.float8_e4m3fn,)
#: FP8 dtypes no catalog element encodes: a site casting to one is found and reported (never fused)
OTHER_FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
                         if hasattr(torch, n))
#: reductions of |y| no recipe scales by (an L1 / mean scale): such a site is found and reported
_NEAR_REDUCTIONS = {aten.sum.dim_IntList, aten.sum.default, aten.mean.dim, aten.mean.default}
#: ops an activation is computed with (the walk up from y passes through these only)
_ACT_OPS = {prims.convert_element_type.default, aten.neg.default, aten.exp.default, aten.add.Tensor,
            aten.div.Tensor, aten.mul.Tensor, aten.sigmoid.default, aten.relu.default, aten.pow.Tensor_Scalar,
            aten.square.default, aten.reciprocal.default, aten.silu.default, aten.clone.default}
#: ops whose presence upstream of y makes y an activation output (the skeleton's "activation")
_NONLINEAR = {aten.exp.default, aten.sigmoid.default, aten.relu.default, aten.silu.default, aten.tanh.default,
              aten.gelu.default, aten.erf.default}
_MAX_REGION = 80


@dataclasses.dataclass
class Site:
    """One recognised site: what to call and which graph nodes its outputs replace."""

    activation: str
    layout: Layout
    recipe: Recipe
    scheme: catalog.Scheme
    x: Node
    up: Node | None
    scale_input: Node | None
    y: Node
    q: Node
    #: nodes whose value is the scale (each replaced by a reshape of the fused op's scales)
    scales: list[Node]
    #: a layout copy after the scales folded into the op (column-major; the MX swizzle: swizzle.py), its
    #: last node, or None
    column_tail: Node | None
    nodes: set[Node]
    note: str = ""
    #: the activation's parameters read off the graph's literals (GPT-OSS's alpha, limit)
    act_params: dict = dataclasses.field(default_factory=dict)
    #: MX: casts of the power-of-two scale to float8_e8m0fnu (each replaced by a view of the bytes)
    e8m0_scales: list = dataclasses.field(default_factory=list)
    #: FP8: nodes holding the scale's value in a 16-bit dtype (a scale computed in the input dtype and
    #: returned so): each replaced by a cast of the fused op's float32 scales, exact as the value is
    #: the same
    cast_scales: list = dataclasses.field(default_factory=list)

    @property
    def op_name(self) -> str:
        return catalog.fused_op_name(self.activation, self.scheme.key)

    def op_args(self) -> tuple[tuple, dict]:
        """Positional and keyword arguments of the fused op (``recipe=`` only where it differs)."""
        r, scheme = self.recipe, self.scheme
        params: dict = {}
        if scheme is catalog.FP8_PER_GROUP:
            params = {"group_size": r.group_size,
                      "column_major_scales": r.scale_layout is ScaleLayout.COLUMN_MAJOR,
                      "use_ue8m0": r.ue8m0 is Ue8m0.EXACT}
        elif scheme.base.mx:
            params = {"scale_rounding": r.mx_rounding.value,
                      "is_sf_swizzled_layout": r.scale_layout is ScaleLayout.SWIZZLED}
        args = (self.x,) + ((self.scale_input,) if self.scale_input is not None else ())
        kwargs = dict(params)
        if self.up is not None:
            kwargs["up"] = self.up
        if self.layout is Layout.INTERLEAVED:
            kwargs["interleaved"] = True
        kwargs.update(self.act_params)
        spec = r.spec(scheme.recipe(**params))
        if spec:
            kwargs["recipe"] = spec
        return args, kwargs


class NotRecognised(Exception):
    """A site with the act -> quant skeleton that is not fused; the message is the reason."""


# --- finding sites ---------------------------------------------------------------------------

def _strip_up(node):
    """Through views and up-casts to the value they present (the candidate ``y``)."""
    while isinstance(node, Node) and node.op == "call_function":
        if node.target in canonical._VIEWS or node.target in (aten.clone.default, aten.contiguous.default):
            node = node.args[0]
        elif node.target in canonical._CASTS and _dtype(node) == torch.float32 \
                and _dtype(node.args[0]) in canonical.SIXTEEN_BIT + (torch.float32,):
            node = node.args[0]
        else:
            break
    return node


def _dtype(node) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def _slice(q_in: Node) -> list[Node]:
    seen, stack, out = set(), [q_in], []
    while stack and len(out) < _MAX_REGION:
        n = stack.pop()
        if not isinstance(n, Node) or n in seen or n.op != "call_function" \
                or (n.target not in canonical.REGION_OPS and n.target not in _NEAR_REDUCTIONS):
            continue
        seen.add(n)
        out.append(n)
        stack.extend(a for a in n.all_input_nodes)
    return out


def _is_activation(y: Node, depth: int = 8) -> bool:
    stack, seen = [(y, 0)], set()
    while stack:
        n, d = stack.pop()
        if not isinstance(n, Node) or n in seen or n.op != "call_function" or d > depth:
            continue
        seen.add(n)
        if n.target in _NONLINEAR:
            return True
        stack.extend((a, d + 1) for a in _value_inputs(n))
    return False


def _value_inputs(n: Node) -> list[Node]:
    """The inputs whose values ``n``'s values are computed from: integer and bool tensors (the
    indices of a gather, ``x[perm // k]`` of tokens sorted by expert; a mask) only select
    elements, so a router's softmax behind them does not make a gathered input an activation."""
    return [a for a in n.all_input_nodes if _dtype(a) is None or _dtype(a).is_floating_point]


def find_candidates(graph: torch.fx.Graph):
    """``(cast, y, static scale or None)`` for each FP8 cast with the act -> quant skeleton."""
    out = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in canonical._CASTS:
            continue
        if _dtype(node) not in FP8_DTYPES + OTHER_FP8_DTYPES:
            continue
        ys, scale = _abs_reductions(_slice(node.args[0])), None
        if not ys:
            ys, scale = _static_candidate(node.args[0])
        if not ys:
            # a scale computed through ops the canonical region does not hold (torchao's to_mx
            # derives it from the amax's bits): still the skeleton, so the site is reported
            from quantfuse.patterns import e2m1

            ys = _abs_reductions(n for n in e2m1.ancestors(node.args[0]) if n.op == "call_function")
        ys = {y for y in ys if isinstance(y, Node) and _is_activation(y)}
        if ys:
            out.append((node, ys, scale))
    return out


def _abs_reductions(nodes) -> set:
    """The ``y`` of each reduction of ``|y|`` (amax / max) among ``nodes``."""
    ys = set()
    for r in nodes:
        if r.target in canonical._REDUCTIONS or r.target in _NEAR_REDUCTIONS:
            src = _strip_up(r.args[0])
            if isinstance(src, Node) and src.target == aten.abs.default:
                ys.add(_strip_up(src.args[0]))
    return ys


def _static_candidate(q_in):
    """``y`` and the scale input of ``clamp(y / scale)`` / ``y * scale.reciprocal()``, if that is the form."""
    n = q_in
    # through the clamps and casts (a 16-bit quotient, rounded, is a site read_site reports)
    while isinstance(n, Node) and n.target in (aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default) \
            + tuple(canonical._CASTS):
        n = n.args[0]
    if not isinstance(n, Node) or n.target not in (aten.div.Tensor, aten.mul.Tensor):
        return set(), None
    for a, b in ((n.args[0], n.args[1]), (n.args[1], n.args[0])):
        s = b
        while isinstance(s, Node) and (s.target in (aten.reciprocal.default,) + tuple(canonical._CASTS)
                                       + tuple(canonical._VIEWS) or _times_one(s)):
            s = s.args[0]
        sv = s.meta.get("val") if isinstance(s, Node) else None
        # any input: one of more than one element (a per-channel scale) is reported by read_site
        if isinstance(sv, torch.Tensor) and sv.is_floating_point() and s.op in ("placeholder", "get_attr") \
                and isinstance(a, Node):
            return {_strip_up(a)}, s
    return set(), None


def _times_one(n: Node) -> bool:
    """``t * 1`` (``1 / s`` is ``reciprocal(s) * 1`` post-grad)."""
    return n.target == aten.mul.Tensor and len(n.args) == 2 and isinstance(n.args[0], Node) and n.args[1] == 1


# --- the recipe from the canonical expressions ----------------------------------------------

def _const_of(e: tuple):
    return e[1] if isinstance(e, tuple) and e and e[0] == "c" else None


def _split_const(e: tuple, name: str):
    """``(other, c)`` when ``e`` is ``name(other, c)`` with a constant, else None."""
    if isinstance(e, tuple) and len(e) == 3 and e[0] == name:
        for i in (1, 2):
            c = _const_of(e[i])
            if c is not None:
                return e[3 - i], c
    return None


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def exp2_arg(e: tuple):
    """``x`` of ``exp2(x)`` or ``2 ** x`` / ``torch.pow(2, x)``, else None. The callers take it only
    where ``x`` is an integer (a ceil or floor), and a power of two to an integer is exact in both
    spellings for E8M0's exponents, [-127, 127], but for CUDA's 2^-127 (docs/numerics.md, "CUDA's 2^-127"),
    which :func:`parse_mx` records as the spelling's ``MxByte0``."""
    if not isinstance(e, tuple) or len(e) < 2:
        return None
    if e[0] == "exp2":
        return e[1]
    if e[0] == "pow" and len(e) == 3 and _const_of(e[1]) == 2.0:
        return e[2]
    return None


def _ue8m0_inner(e: tuple):
    """The argument of ``exp2(ceil(log2(s)))`` / ``2 ** ceil(log2(s))``, else None. ``log2(|s|)``
    (DeepGEMM's ``ceil_to_ue8m0``) reads as ``log2(s)``: parse_scale takes only scales computed from
    max |y|, never negative (+0 up to +inf, or NaN), where the abs changes no value."""
    inner = exp2_arg(e)
    if inner is None:
        return None
    if isinstance(inner, tuple) and inner[0] == "ceil" and isinstance(inner[1], tuple) and inner[1][0] == "log2":
        arg = inner[1][1]
        return arg[1] if isinstance(arg, tuple) and arg[0] == "abs" else arg
    return None


Y = ("y",)
AMAX = ("amax", ("abs", Y))


def parse_scale(s: tuple, y_dtype: torch.dtype, element: catalog.Element) -> tuple[dict, bool]:
    """Recipe fields of a dynamic scale expression, and whether ``/ qmax`` was spelled as a multiply."""
    fields: dict = {}
    e = s
    inner = _ue8m0_inner(e)
    if inner is not None:
        fields["ue8m0"], e = Ue8m0.EXP2_CEIL_LOG2, inner
    floor = _split_const(e, "max")
    if floor is not None:
        e, fields["eps"] = floor
        fields["floor_at"] = FloorAt.SCALE
        inner = _ue8m0_inner(e)
        if inner is not None:
            if "ue8m0" in fields:
                raise NotRecognised("the scale is rounded to a power of two twice")
            fields["ue8m0"], fields["ue8m0_after_floor"], e = Ue8m0.EXP2_CEIL_LOG2, False, inner
    if e[0] == "round":
        want = str(y_dtype).replace("torch.", "")
        if e[1] != want or "ue8m0" in fields:
            raise NotRecognised(f"the scale is rounded to {e[1]} "
                                f"{'with a power-of-two rounding ' if 'ue8m0' in fields else ''}"
                                f"(activation in {want}): no recipe computes that")
        fields["step_dtype"], e = StepDtype.INPUT, e[2]
    mul_form = False
    div = e[2] if len(e) == 3 and e[0] == "div" else None
    if div is not None and _const_of(div) is not None:
        if _f32(_const_of(div)) != _f32(element.max):
            raise NotRecognised(f"the scale divides the amax by {_const_of(div)}, not the {element.name} "
                                f"maximum {element.max}")
        e = e[1]
    else:
        m = _split_const(e, "mul")
        if m is None:
            raise NotRecognised(f"the scale is not amax / {element.max} (it computes {_show(e)})")
        if _f32(m[1]) != _f32(1.0 / element.max):
            raise NotRecognised(f"the scale multiplies the amax by {m[1]}, not 1 / {element.max}")
        e, mul_form = m[0], True
    floor = _split_const(e, "max")
    if floor is not None:
        if fields.get("floor_at") is FloorAt.SCALE:
            raise NotRecognised("the amax and the scale are both floored: no recipe computes that")
        e, fields["eps"] = floor
        fields["floor_at"] = FloorAt.AMAX
    if "floor_at" not in fields:
        fields["floor_at"] = FloorAt.NONE
    if fields["floor_at"] is not FloorAt.SCALE:
        # before or after a floor that is not there: one recipe (the default order)
        fields.pop("ue8m0_after_floor", None)
    if e != AMAX:
        raise NotRecognised(f"the scale is not computed from max |y| of the group (it reads {_show(e)})")
    return fields, mul_form


def parse_mx(s: tuple, element: catalog.Element, multiplier: bool = False) -> tuple[dict, tuple]:
    """Recipe fields of an MX scale ``exp2(clamp(e, -127, 127))`` (or ``2 ** clamp(...)``) and the
    clamped exponent ``e``.

    The scale is the exact power of two but for a byte-0 block's ``2^-127``, which is the device's
    ``exp2`` / ``pow`` result (``MxByte0.EXP2`` / ``POW``: on CUDA not 2^-127). ``multiplier``:
    the elements are multiplied by ``exp2(-e)`` instead (parse_apply), exact but for an inf
    block's ``exp2(-127.)``, the device's (``MxInf.EXP2``).

    ``e`` is ``ceil(log2(amax / max_elem))`` (RCEIL; ``amax * (1 / max_elem)`` too) or
    ``floor(log2(amax)) - emax_elem`` (FLOOR, the OCP rule), as torchao's ``to_mx`` and the
    corpus write them.
    """
    clamped = exp2_arg(s)
    if multiplier:
        device = {"mx_inf": catalog.MxInf.EXP2}
    else:
        device = {"mx_byte0": catalog.MxByte0.EXP2 if s[0] == "exp2" else catalog.MxByte0.POW}
    lo, hi = _split_const(clamped, "min"), _split_const(clamped, "max")
    inner = None
    if lo is not None and _split_const(lo[0], "max") is not None:
        (inner, c2), c1 = _split_const(lo[0], "max"), lo[1]
    elif hi is not None and _split_const(hi[0], "min") is not None:
        (inner, c2), c1 = _split_const(hi[0], "min"), hi[1]
    bias = float(catalog.E8M0_BIAS)
    if inner is None or sorted((c1, c2)) != [-bias, bias]:
        raise NotRecognised(f"the MX exponent is not clamped to [-{catalog.E8M0_BIAS}, {catalog.E8M0_BIAS}] "
                            "(E8M0's range; without it an all-zero block divides 0 by 0)")
    if inner[0] == "ceil" and isinstance(inner[1], tuple) and inner[1][0] == "log2":
        r = inner[1][1]
        div, mul = _split_const(r, "div") if r[0] == "div" and _const_of(r[2]) is not None else None,             _split_const(r, "mul")
        if div is not None and div[0] == AMAX and _f32(div[1]) == _f32(element.max)                 or mul is not None and mul[0] == AMAX and _f32(mul[1]) == _f32(1.0 / element.max):
            return {"mx_rounding": catalog.MxRounding.RCEIL, **device}, clamped
        # a product by a constant reads as the divisor it stands for (amax * (1 / 447) -> 447.0)
        shown = f"amax * {mul[1]} (amax / {round(1.0 / mul[1], 4)})" if mul is not None and mul[0] == AMAX \
            and mul[1] else _show(r)
        raise NotRecognised(f"the MX exponent is ceil(log2({shown})), not ceil(log2(amax / {element.max}))")
    less = _split_const(inner, "sub") or _split_const(inner, "add")
    if less is not None and less[0] == ("floor", ("log2", AMAX)):
        offset = less[1] if inner[0] == "sub" else -less[1]
        if offset == element.emax:
            return {"mx_rounding": catalog.MxRounding.FLOOR, **device}, clamped
        raise NotRecognised(f"the MX exponent is floor(log2(amax)) - {offset}, not - {element.emax} "
                            f"({element.name}'s emax)")
    raise NotRecognised(f"the MX exponent is not ceil(log2(amax / {element.max})) or floor(log2(amax)) - "
                        f"{element.emax} (it computes {_show(inner)})")


def _show(e, depth: int = 3) -> str:
    if not isinstance(e, tuple):
        return repr(e)
    if e[0] == "c":
        return repr(e[1])
    if depth == 0:
        return f"{e[0]}(...)"
    return f"{e[0]}({', '.join(_show(a, depth - 1) for a in e[1:])})"


def _clamp_of(e: tuple, element: catalog.Element) -> tuple[bool, tuple]:
    """Whether the value cast to FP8 is clamped to the element's range, and what is clamped."""
    lo = _split_const(e, "max")
    hi = _split_const(e, "min")
    if lo is None and hi is None:
        return False, e
    outer_max = lo is not None
    inner, c1 = lo if outer_max else hi
    second = _split_const(inner, "min" if outer_max else "max")
    if second is None:
        raise NotRecognised(f"the values are clamped on one side only ({'min' if outer_max else 'max'}="
                            f"{c1}) before the FP8 cast")
    inner, c2 = second
    bounds = sorted((c1, c2))
    if bounds != [-element.max, element.max]:
        raise NotRecognised(f"the values are clamped to [{bounds[0]}, {bounds[1]}] where {element.name} "
                            f"spans [-{element.max}, {element.max}]")
    return True, inner


def parse_apply(e: tuple, element: catalog.Element) -> tuple[dict, tuple]:
    """Recipe fields of the value cast to FP8, and the scale expression it applies."""
    clamp, e = _clamp_of(e, element)
    fields = {"clamp": clamp}
    if e[0] == "round":
        raise NotRecognised(f"y / s is rounded to {e[1]} before the FP8 cast (compute it in float32, e.g. "
                            "y.float() / s): no recipe computes that")
    if e[0] == "div" and e[1] == Y:
        fields["apply"] = ApplyForm.DIV
        return fields, _unbcast(e[2])
    if e[0] == "mul" and Y in e[1:]:
        other = e[2] if e[1] == Y else e[1]
        other = _unbcast(other)
        if other[0] == "recip":
            fields["apply"] = ApplyForm.MUL_INV
            return fields, _unbcast(other[1])
        power = exp2_arg(other)
        if other[0] == "exp2" and isinstance(power, tuple) and power[0] == "neg":
            # y * exp2(-e): an MX multiplier, the scale exp2(e) applied as its own power of two
            # (MULTIPLIER: parse_mx reads which block's factor is then the device's)
            fields["apply"] = ApplyForm.MUL_INV
            fields[MULTIPLIER] = True
            return fields, ("exp2", power[1])
        ratio = _split_const(other, "mul")
        if ratio is not None and isinstance(ratio[0], tuple) and ratio[0][0] == "recip":
            # y * (qmax / a): torch computes qmax / t as t.reciprocal() * qmax. The scale it goes with
            # is a / qmax (what the site must store), read by parse_scale as any other
            if _f32(ratio[1]) != _f32(element.max):
                raise NotRecognised(f"the value cast to FP8 is y * ({ratio[1]} / amax), not y * ({element.max} / "
                                    f"amax) ({element.name}'s maximum)")
            fields["apply"] = ApplyForm.MUL_RATIO
            return fields, ("div", _unbcast(ratio[0][1]), const(element.max))
    raise NotRecognised(f"the value cast to FP8 is not y / scale or y * (1 / scale) (it is {_show(e)})")


#: parse_apply's field for y * exp2(-e) (an MX multiplier), which the MX parser takes and no FP8 recipe has
MULTIPLIER = "mx_multiplier"


def _multiplies_by_input(e: tuple) -> bool:
    """``e`` is ``y * scale`` (a static input multiplied in), clamped or not."""
    while (inner := _split_const(e, "max") or _split_const(e, "min")) is not None:
        e = inner[0]
    return isinstance(e, tuple) and e[0] == "mul" and sorted(e[1:], key=repr) == sorted((Y, ("scale",)), key=repr)


def _unbcast(e: tuple) -> tuple:
    while isinstance(e, tuple) and e and e[0] == "bcast":
        e = e[1]
    return e


# --- the activation upwards from y -------------------------------------------------------------

def _silu_exact(g: tuple, dtype: torch.dtype) -> tuple:
    """F.silu(g) as eager computes it (post-grad: fp32 g / (1 + exp(-g)), rounded to the dtype)."""
    inner = ("div", g, Interpreter._sorted("add", ("exp", ("neg", g)), const(1)))
    return ("round", str(dtype).replace("torch.", ""), inner) if dtype in canonical.SIXTEEN_BIT else inner


def _strip_rounds(e):
    if not isinstance(e, tuple):
        return e
    if e and e[0] == "round":
        return _strip_rounds(e[2])
    return tuple(_strip_rounds(a) for a in e)


def _rounded(e: tuple, dtype) -> tuple:
    return ("round", str(dtype).replace("torch.", ""), e) if dtype in canonical.SIXTEEN_BIT else e


def _act_leaves(y: Node, ops=_ACT_OPS) -> list[Node]:
    """The inputs of the activation: the nodes above ``y`` that are not activation ops (``ops``)."""
    leaves, seen, stack = [], set(), [y]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_function" and n.target in ops:
            stack.extend(n.all_input_nodes)
        elif n is y:
            raise NotRecognised(f"the quantised value `{y.name}` is not computed by an activation")
        else:
            leaves.append(n)
    return leaves


def recognise_activation(y: Node) -> tuple[str, list[Node], str]:
    """``(activation, [gate, up] or [x], note)`` for the activation that computes ``y``."""
    leaves = _act_leaves(y)
    names = {n: ("in", i) for i, n in enumerate(leaves)}
    dtype = _dtype(y)
    other = [n for n in leaves if n.op == "call_function" and n.target in _NONLINEAR]
    if other:
        # a non-linearity the walk does not pass through (erf, tanh, gelu): another activation
        raise NotRecognised(f"the activation uses {other[0].target.__name__.split('.')[0]} (`{other[0].name}`): "
                            f"not a fused activation ({', '.join(catalog.ACTIVATIONS)})")
    if len(leaves) > 2:
        raise NotRecognised(f"the activation reads {len(leaves)} tensors ({', '.join(n.name for n in leaves)})")
    try:
        interp = Interpreter(leaves[0], elem_leaves=names)
        expr = interp.value(y).expr
    except Unknown as e:
        raise NotRecognised(f"activation: {e}") from None
    if any(_dtype(n) != dtype for n in leaves):
        raise NotRecognised(f"the activation is computed in {dtype} from "
                            f"{', '.join(str(_dtype(n)) for n in leaves)} inputs")
    if len(leaves) == 2:
        for g, u in ((0, 1), (1, 0)):
            G, U = ("in", g), ("in", u)
            exact = _rounded(Interpreter._sorted("mul", _silu_exact(G, dtype), U), dtype)
            if expr == exact:
                # fp32 input: post-grad F.silu and x / (1 + exp(-x)) are one graph, and on the CPU
                # eager's F.silu kernel is not the formula to the last bit
                note = "float32 silu: the fused op computes F.silu (on CUDA the same bits as x / (1 + exp(-x))); " \
                    "on the CPU x / (1 + exp(-x)) written out is within an fp32 ulp of it" \
                    if dtype == torch.float32 else ""
                return "silu_and_mul", [leaves[g], leaves[u]], note
            silu_math = [("div", G, Interpreter._sorted("add", ("exp", ("neg", G)), const(1))),
                         Interpreter._sorted("mul", G, ("sigmoid", G))]
            stripped = _strip_rounds(expr)
            for s in silu_math:
                if stripped in (Interpreter._sorted("mul", s, U),
                                Interpreter._sorted("mul", *sorted((("mul", G, ("sigmoid", G)), U), key=repr))):
                    return "silu_and_mul", [leaves[g], leaves[u]], \
                        "activation rounds unlike F.silu(gate) * up (the fused op rounds as F.silu): within one step"
            # a * sigmoid(a) * b multiplies in either association
            sig = ("sigmoid", G)
            assoc = [Interpreter._sorted("mul", Interpreter._sorted("mul", G, sig), U),
                     Interpreter._sorted("mul", Interpreter._sorted("mul", G, U), sig),
                     Interpreter._sorted("mul", Interpreter._sorted("mul", sig, U), G)]
            if stripped in assoc:
                return "silu_and_mul", [leaves[g], leaves[u]], \
                    "a * sigmoid(a) * b rounds three times where the fused op rounds twice: within one step"
        raise NotRecognised(f"the activation computes {_show(expr, 5)}, not silu(gate) * up")
    X = ("in", 0)
    relu2 = _rounded(("pow", ("relu", X), const(2)), dtype)
    if expr == relu2:
        return "relu2", leaves, ""
    raise NotRecognised(f"the activation computes {_show(expr, 5)}, not a fused activation "
                        f"({', '.join(catalog.ACTIVATIONS)})")


def _slice_of(n: Node):
    """``(base, start, end, step)`` of a last-dim slice (a split piece counts), else None."""
    if n.op != "call_function":
        return None
    if n.target == aten.slice.Tensor:
        base = n.args[0]
        nd = len(base.meta["val"].shape)
        dim, start, end, step = (*n.args[1:], None, None, None, None)[:4]
        if (dim if dim is not None else 0) % nd != nd - 1:
            return None
        width = base.meta["val"].shape[-1]
        start = 0 if start is None else start
        end = width if end is None else min(end, width)
        return base, start, end, 1 if step is None else step
    if n.target is operator.getitem and isinstance(n.args[0], Node) \
            and n.args[0].target in (aten.split.Tensor, aten.split_with_sizes.default):
        sp = n.args[0]
        base = sp.args[0]
        nd = len(base.meta["val"].shape)
        dim = sp.args[2] if len(sp.args) > 2 else sp.kwargs.get("dim", 0)
        if dim % nd != nd - 1:
            return None
        width = base.meta["val"].shape[-1]
        sizes = sp.args[1]
        sizes = [sizes] * math.ceil(width / sizes) if isinstance(sizes, int) else list(sizes)
        start = sum(sizes[:n.args[1]])
        return base, start, start + sizes[n.args[1]], 1
    return None


def _same_view(a: Node, b: Node) -> Node | None:
    """The node two equal chains of views start from (``squeeze(t, 1)`` taken twice, once for
    the gate's slice and once for the up's), when it has their last dim; else None."""
    width = a.meta["val"].shape[-1]
    while a is not b:
        if not (isinstance(a, Node) and isinstance(b, Node) and a.op == b.op == "call_function"
                and a.target == b.target and a.target in canonical._VIEWS and a.args[1:] == b.args[1:]
                and a.kwargs == b.kwargs):
            return None
        a, b = a.args[0], b.args[0]
    return a if isinstance(a, Node) and a.meta["val"].shape[-1] == width else None


def read_layout(gate: Node, up: Node) -> tuple[Layout, Node, Node | None]:
    """The gated layout of ``gate`` and ``up``: ``(layout, x, up tensor or None)``."""
    sg, su = _slice_of(gate), _slice_of(up)
    if sg and su and sg[0] is not su[0]:
        base = _same_view(sg[0], su[0])
        if base is not None:
            sg, su = (base, *sg[1:]), (base, *su[1:])
    if sg and su and sg[0] is su[0]:
        base, width = sg[0], sg[0].meta["val"].shape[-1]
        d = width // 2
        if sg[3] == su[3] == 1:
            if (sg[1], sg[2], su[1], su[2]) == (0, d, d, width):
                return Layout.HALVES, base, None
            if (sg[1], sg[2], su[1], su[2]) == (d, width, 0, d):
                raise NotRecognised("gate is the second half and up the first ([up | gate]): the fused op reads "
                                    "[gate | up]; the halves are not the expected half order")
        if sg[3] == su[3] == 2 and width % 2 == 0:
            if (sg[1], su[1]) == (0, 1):
                return Layout.INTERLEAVED, base, None
            if (sg[1], su[1]) == (1, 0):
                raise NotRecognised("gate is x[..., 1::2] and up x[..., ::2]: the interleaved layout reads the "
                                    "gate from the even columns")
        raise NotRecognised(f"gate {sg[1]}:{sg[2]}:{sg[3]} and up {su[1]}:{su[2]}:{su[3]} of the input are not "
                            "its two halves or its interleaved columns")
    if sg or su:
        raise NotRecognised("one of gate / up is a slice of a tensor the other is not")
    return Layout.SEPARATE, gate, up


# --- GPT-OSS's clamped SwiGLU ----------------------------------------------------------------

#: the clamps GPT-OSS's activation adds to the ops an activation is computed with
_CLAMP_OPS = {aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default}


def _clamp_bounds(node: Node) -> tuple:
    """The number bounds of a clamp node (``None`` for a side it leaves open)."""
    t, args = node.target, node.args
    if t in (aten.clamp_min.default, aten.clamp_max.default):
        return (args[1],)
    return (args[1] if len(args) > 1 else node.kwargs.get("min"), args[2] if len(args) > 2 else node.kwargs.get("max"))


class _ClampInterpreter(Interpreter):
    """The interpreter for the activation's side: a clamp to a bound its operand's dtype cannot
    hold (a limit of 7.1 on a bf16 gate) yields a value that dtype cannot hold, so the cast
    back to it rounds (``canonical`` assumes a clamp keeps its operand's dtype, which holds for
    the FP8 bounds and floors it reads)."""

    def _clamp(self, node: Node) -> canonical.Val:
        v = super()._clamp(node)
        src = self.value(node.args[0])
        bounds = [_f32(c) for c in _clamp_bounds(node) if isinstance(c, (int, float))]
        if src.level != "const" and any(canonical._as(c, src.narrow) != c for c in bounds):
            expr, narrow = self._round(v.expr, torch.float32, v.dtype)
            return dataclasses.replace(v, expr=expr, narrow=narrow)
        return v


def _swigluoai_expr(G: tuple, U: tuple, alpha: float, limit: float, dtype: torch.dtype,
                    up_min_first: bool) -> tuple:
    """transformers' ``GptOssExperts._apply_gate`` (``gate.clamp(max=limit)``,
    ``up.clamp(-limit, limit)``, ``(up + 1) * (gate * sigmoid(gate * alpha))``) as the
    interpreter reads eager's op-by-op execution: each op in fp32, rounded to ``dtype``; a
    clamp rounds only where the limit does not fit ``dtype``."""
    sort = Interpreter._sorted
    L = _f32(limit)
    fits = canonical._as(L, dtype) == L

    def clamp_round(e):
        return e if fits else _rounded(e, dtype)

    lo, hi = const(-limit), const(limit)
    gate = clamp_round(sort("min", G, hi))
    up = sort("max", sort("min", U, hi), lo) if up_min_first else sort("min", sort("max", U, lo), hi)
    up = clamp_round(up)
    sig = _rounded(("sigmoid", _rounded(sort("mul", gate, const(alpha)), dtype)), dtype)
    glu = _rounded(sort("mul", gate, sig), dtype)
    return _rounded(sort("mul", _rounded(sort("add", up, const(1)), dtype), glu), dtype)


def _subexprs(e):
    if isinstance(e, tuple) and e and e[0] != "c":
        yield e
        for a in e[1:]:
            yield from _subexprs(a)


def _swigluoai_difference(expr: tuple, G: tuple, U: tuple, dtype: torch.dtype) -> str:
    """What a clamped-sigmoid gated activation does unlike GPT-OSS's (``G`` is the leaf under
    the sigmoid): the near miss's reason."""
    e = _strip_rounds(expr)
    subs = list(_subexprs(e))
    consts = lambda s, name: [_const_of(a) for a in s[1:] if _const_of(a) is not None] if s[0] == name else []  # noqa: E731
    up_clamps = [s for s in subs if s[0] in ("max", "min") and U in s[1:] or
                 s[0] in ("max", "min") and any(isinstance(a, tuple) and a[0] in ("max", "min") and U in a[1:]
                                                for a in s[1:])]
    gate_clamped = any(s[0] == "min" and G in s[1:] and consts(s, "min") for s in subs)
    if not gate_clamped:
        return "the gate is not clamped from above (gate.clamp(max=limit))"
    limit = next(consts(s, "min")[0] for s in subs if s[0] == "min" and G in s[1:] and consts(s, "min"))
    bounds = sorted(c for s in up_clamps for c in consts(s, s[0]))
    if not bounds:
        return "up is not clamped (up.clamp(-limit, limit))"
    if bounds != [-limit, limit]:
        return f"up is clamped to {bounds} where GPT-OSS clamps it to [-limit, limit] with the gate's limit {limit}"
    if not any(s[0] == "add" and 1.0 in consts(s, "add") for s in subs):
        return "the clamped up is not offset by one ((up + 1) * ...)"
    if not any(s[0] == "sigmoid" and s[1][0] == "mul" and consts(s[1], "mul") for s in subs):
        return "the sigmoid does not take the gate times a constant (sigmoid(gate * alpha))"
    rounds = "each op rounded to " + str(dtype).replace("torch.", "") if dtype in canonical.SIXTEEN_BIT else "in fp32"
    return f"the activation computes {_show(expr, 6)}, not GPT-OSS's (up + 1) * (gate * sigmoid(gate * alpha)) " \
           f"in that order ({rounds}, as eager runs transformers' GptOssExperts._apply_gate)"


def recognise_swigluoai(y: Node) -> tuple[list[Node], dict[str, float]] | None:
    """``([gate, up], {"alpha": a, "limit": l})`` when ``y`` is GPT-OSS's clamped SwiGLU as eager
    runs it (``catalog.ActRounding.EACH_OP``), its parameters read off the graph's literals.

    None when ``y`` has no clamp and sigmoid of two tensors (not close: another activation's
    reading applies); NotRecognised names what differs when it has them (a near miss)."""
    leaves = _act_leaves(y, _ACT_OPS | _CLAMP_OPS)
    dtype = _dtype(y)
    if len(leaves) != 2 or any(_dtype(n) != dtype for n in leaves) \
            or any(n.op == "call_function" and n.target in _NONLINEAR for n in leaves):
        return None
    try:
        expr = _ClampInterpreter(leaves[0], elem_leaves={n: ("in", i) for i, n in enumerate(leaves)}).value(y).expr
    except Unknown:
        return None
    subs = list(_subexprs(expr))
    sigmoids = [s for s in subs if s[0] == "sigmoid"]
    if not sigmoids or not any(s[0] in ("min", "max") and any(_const_of(a) is not None for a in s[1:]) for s in subs):
        return None
    consts = sorted({_const_of(a) for s in subs for a in s[1:] if _const_of(a) is not None})
    for g, u in ((0, 1), (1, 0)):
        G, U = ("in", g), ("in", u)
        for alpha, limit, up_min_first in itertools.product(consts, consts, (False, True)):
            if limit > 0 and expr == _swigluoai_expr(G, U, alpha, limit, dtype, up_min_first):
                return [leaves[g], leaves[u]], {"alpha": alpha, "limit": limit}
    gate = 0 if ("in", 0) in set(_subexprs(_strip_rounds(sigmoids[0]))) else 1
    raise NotRecognised(_swigluoai_difference(expr, ("in", gate), ("in", 1 - gate), dtype))


def read_activation(y: Node) -> tuple[str, list[Node], str, dict[str, float]]:
    """``(activation, inputs, note, parameters)``: GPT-OSS's clamped SwiGLU with the alpha and
    limit it is written with, else :func:`recognise_activation`'s reading (no parameters)."""
    swiglu = recognise_swigluoai(y)
    if swiglu is not None:
        inputs, params = swiglu
        return catalog.SWIGLUOAI_AND_MUL.name, inputs, "", params
    return (*recognise_activation(y), {})


# --- the site ---------------------------------------------------------------------------------

def _outside_users(nodes: set[Node], node: Node) -> list[Node]:
    return [u for u in node.users if u not in nodes]


def _grad_hint(users: list[Node]) -> str:
    """Why a value may have an extra consumer: a training graph (AOT names its inputs
    ``primals_*``) keeps what backward needs as extra outputs."""
    graph = users[0].graph if users else None
    training = graph is not None and any(n.op == "placeholder" and str(n.target).startswith("primals")
                                         for n in graph.nodes)
    if training:
        return (" (this graph is compiled for training: backward needs the value; run inference under "
                "torch.no_grad() / torch.inference_mode() to fuse)")
    return ""


class _Unreadable(NotRecognised):
    """The canonical interpreter cannot read the site's quantisation (an op it does not model)."""


def read_site(q: Node, y: Node, scale_input: Node | None, config) -> Site:
    """Read one candidate site; NotRecognised names the first thing that does not fit.

    An MXFP8 scale the canonical interpreter cannot read, or reads as no recipe, is read by
    evaluating it (:mod:`quantfuse.patterns.mx_scale`); when that fails too, the reason is the
    interpreter's, unless it could not read the site at all."""
    try:
        return read_for_every_count(y, lambda: _read_site(q, y, scale_input, config))
    except NotRecognised as e:
        if scale_input is not None or _dtype(q) not in FP8_DTYPES:
            raise
        try:
            site = read_for_every_count(y, lambda: read_evaluated_mx(q, q.args[0], y, catalog.MXFP8, config))
        except NotRecognised as e2:
            raise (e2 if isinstance(e, _Unreadable) else e) from None
        if site is None:
            raise
        return site


def read_for_every_count(y: Node, read, across_rows: frozenset = frozenset()) -> Site | None:
    """``read()``'s site (or its None: no site to read), read under canonical.symbolic_rows; when
    ``y``'s token count is symbolic, only if it holds for every count (check_symbolic;
    ``across_rows``: nodes that may view whole rows as one, see there)."""
    with canonical.symbolic_rows() as rows:
        site = read()
        if site is not None and canonical.is_symbolic(y):
            check_symbolic(site, rows, across_rows)
    return site


def check_symbolic(site: Site, rows: canonical.Rows, across_rows: frozenset = frozenset()) -> None:
    """A site read with a symbolic token count (canonical.symbolic_rows) holds for every count
    only if every value it read has ``y``'s rows, but for ``across_rows``: nodes whose reading
    holds whatever the row boundaries (MXFP4's packing of consecutive code pairs over a flattened
    view: a row's even element count keeps every pair inside its row); the rewrite restores at
    most one symbolic dim of an output that is not the input's leading dim at the same position
    (as -1)."""
    if across_rows:
        rows = canonical.Rows(rows.symbols, {n: v for n, v in rows.products.items() if n not in across_rows})
    if not canonical.check_rows(rows, site.y):
        raise NotRecognised("a value of the site does not keep the activation's rows (a view or reduction "
                            "across the symbolic token dims)")
    for n in site.nodes:
        v = n.meta.get("val")
        if isinstance(v, torch.Tensor) and not canonical.is_symbolic(n) and v.numel() != 1 \
                and n.target != aten.full.default and n is not site.scale_input:
            raise NotRecognised(f"`{n.name}` has a static shape {tuple(v.shape)} in a site whose token count is "
                                "symbolic")
    lead = tuple(site.x.meta["val"].shape)[:-1]
    for n in [site.q, *site.scales, *site.e8m0_scales, *site.cast_scales]:
        if len(_unmatched_dims(tuple(n.meta["val"].shape), lead)) > 1:
            raise NotRecognised(f"`{n.name}` has more than one symbolic dim {tuple(n.meta['val'].shape)} that is "
                                "not one of the input's leading dims")


def _unmatched_dims(shape: tuple, lead: tuple) -> list[int]:
    """The positions of ``shape``'s symbolic dims that are not the input's leading dim at the same
    position (the rewrite reshapes to the others as -1)."""
    return [i for i, d in enumerate(shape) if not isinstance(d, int)
            and not (i < len(lead) and statically_known_true(lead[i] == d))]


def _same_shape(a: Node, b: Node) -> bool:
    """Whether the two values' shapes are the same for every token count."""
    sa, sb = tuple(a.meta["val"].shape), tuple(b.meta["val"].shape)
    return len(sa) == len(sb) and all(statically_known_true(x == y) for x, y in zip(sa, sb))


def read_evaluated_mx(anchor: Node, top: Node, y: Node, scheme: catalog.Scheme, config,
                      encode=None) -> Site | None:
    """An MX site whose block scale is read by evaluation (:mod:`quantfuse.patterns.mx_scale`):
    ``top`` is what the anchor stores (MXFP8: the value cast to E4M3, ``anchor`` the cast;
    MXFP4: the E2M1 codes, ``anchor`` the packing, ``encode(scaled)`` the encoding's nodes,
    checked, and the packing's). None when the site has no MX skeleton."""
    from quantfuse.patterns import e2m1, mx_scale

    order = {n: i for i, n in enumerate(anchor.graph.nodes)}
    found = mx_scale.find(y, sorted(e2m1.ancestors(top), key=order.__getitem__))
    if found is None:
        return None
    mx_scale.check(y, found)
    element = scheme.base.element
    x_dtype = _dtype(y)
    if x_dtype not in config.torch_dtypes:
        raise NotRecognised(f"input dtype {x_dtype} is not supported (supported: {', '.join(config.dtypes)})")
    interp = mx_scale.interpreter(y, found)
    try:
        sv = interp.value(found.scaled)
        if encode is None:
            qv = interp.value(top)
    except Unknown as e:
        raise NotRecognised(str(e)) from None
    if encode is None:
        if qv.level != "elem" or not qv.ordered or math.prod(qv.shape) != interp.numel:
            raise NotRecognised(f"the FP8 values `{anchor.name}` are not the activation's elements in order")
        clamped, core = _clamp_of(qv.expr, element)
        if core != sv.expr:
            raise NotRecognised(f"the value cast to FP8 is {_show(core)}, not the activation scaled by its block "
                                f"(`{found.scaled.name}`)")
        if not clamped and not catalog.E4M3_CAST_SATURATES:
            raise NotRecognised(f"the MX elements are not clamped to [-{element.max}, {element.max}] before "
                                f"the FP8 cast (torch {torch.__version__}'s cast does not saturate)")
        extra = set()
    else:
        extra = set(encode(found.scaled))
    inside = set(found.region) | interp.visited | extra | {found.scaled, anchor}
    fields, byte_nodes = mx_scale.read(y, found, element, inside)
    recipe = dataclasses.replace(scheme.base, **fields)
    return finish_site(interp, anchor, y, scheme, recipe, mx_scale.FACTOR, (None, None), element=element,
                       extra=frozenset(set(found.region) | extra), scales=tuple(byte_nodes))


def _read_site(q: Node, y: Node, scale_input: Node | None, config) -> Site:
    element = catalog.E4M3
    x_dtype = _dtype(y)
    if _dtype(q) not in FP8_DTYPES:
        raise NotRecognised(f"the values are cast to {_dtype(q)}: the catalog's FP8 element is E4M3 "
                            "(torch.float8_e4m3fn)")
    for r in _slice(q.args[0]):
        if r.target in _NEAR_REDUCTIONS:
            raise NotRecognised(f"the scale reduces |y| by {r.target.__name__.split('.')[0]} (`{r.name}`), not by "
                                "max: no recipe scales by that")
    if x_dtype not in config.torch_dtypes:
        raise NotRecognised(f"input dtype {x_dtype} is not supported (supported: {', '.join(config.dtypes)})")
    if scale_input is not None:
        sv = scale_input.meta["val"]
        if sv.numel() != 1:
            raise NotRecognised(f"the static scale `{scale_input.name}` has {sv.numel()} elements (shape "
                                f"{tuple(sv.shape)}): a static FP8 scale is one value for the tensor")
        if sv.dtype != torch.float32:
            raise NotRecognised(f"the static scale is {sv.dtype}; the fused op takes a float32 scale")
    leaves = {scale_input: ("scale",)} if scale_input is not None else {}
    interp = Interpreter(y, leaves)
    try:
        qv = interp.value(q.args[0])
    except Unknown as e:
        raise _Unreadable(str(e)) from None
    if qv.level != "elem" or not qv.ordered or math.prod(qv.shape) != interp.numel:
        raise NotRecognised(f"the FP8 values `{q.name}` are not the activation's elements in order")
    try:
        fields, s_expr = parse_apply(qv.expr, element)
        multiplier = fields.pop(MULTIPLIER, False)
    except NotRecognised:
        if scale_input is not None and _multiplies_by_input(qv.expr):
            raise NotRecognised(f"the activation is multiplied by the input `{scale_input.name}` (a reciprocal "
                                "computed outside the graph?): the static op takes the scale s and computes "
                                "y / s or y * (1 / s), which round unlike y times a given 1 / s") from None
        raise
    groups = {v.group for v in interp.memo.values() if v.level == "group"}
    scale_out = (s_expr, torch.float32)  # what a scale output holds, and its dtype
    mul_form, mx_exponent = False, None
    if scale_input is None and exp2_arg(s_expr) is not None and groups == {catalog.MX_BLOCK}:
        # a power-of-two scale over blocks of 32: MX (an FP8 UE8M0 scale has groups of 64 / 128)
        if not fields["clamp"] and not catalog.E4M3_CAST_SATURATES:
            raise NotRecognised(f"the MX elements are not clamped to [-{element.max}, {element.max}] before "
                                f"the FP8 cast (torch {torch.__version__}'s cast does not saturate)")
        if x_dtype == torch.float32:
            # a 16-bit amax is never within an fp32 ulp of a power of two (times 448) unless it is one,
            # so torch.log2 gives the exact exponent there; an fp32 amax can be, and log2 rounds
            raise NotRecognised(site_mod.FP32_MX_REASON)
        more, exponent = parse_mx(s_expr, element, multiplier)
        mx_exponent = exponent
        scheme = catalog.MXFP8
        recipe = dataclasses.replace(scheme.base, **more)
        scale_out = (("to_uint8", Interpreter._sorted("add", exponent, const(catalog.E8M0_BIAS))), torch.uint8)
        _forward_bytes(interp, exponent)
    elif multiplier:
        raise NotRecognised(f"the values are multiplied by exp2(-e) over groups of {sorted(groups)}: an MX "
                            f"multiplier scales blocks of {catalog.MX_BLOCK} (FP8 recipes divide by the scale)")
    elif scale_input is not None:
        if s_expr != ("scale",):
            raise NotRecognised(f"the static scale is used as {_show(s_expr)}")
        scheme = catalog.FP8_STATIC
        recipe = dataclasses.replace(scheme.base, **fields)
    else:
        if len(groups) != 1:
            raise NotRecognised(f"the site reduces over groups of {sorted(groups)} elements")
        (group,) = groups
        if exp2_arg(s_expr) is not None and _ue8m0_inner(s_expr) is None:
            raise NotRecognised(f"the scale is a power of two 2^e over groups of {group}: MX scales blocks of "
                                f"{catalog.MX_BLOCK}, and an FP8 UE8M0 scale is exp2(ceil(log2(amax / "
                                f"{element.max})))")
        more, mul_form = parse_scale(s_expr, x_dtype, element)
        fields.update(more)
        if group == interp.numel and interp.numel != interp.hidden:
            scheme = catalog.FP8_PER_TENSOR
            recipe = dataclasses.replace(scheme.base, **fields)
        elif group == interp.hidden:
            scheme = catalog.FP8_PER_TOKEN
            recipe = dataclasses.replace(scheme.base, **fields)
        else:
            if group not in config.group_sizes:
                raise NotRecognised(f"group size {group} is not supported "
                                    f"(supported: {', '.join(map(str, config.group_sizes))})")
            scheme = catalog.FP8_PER_GROUP
            recipe = dataclasses.replace(scheme.base, group_size=group, **fields)
        if recipe.apply is ApplyForm.MUL_RATIO:
            _read_ratio_scales(interp, s_expr, scale_out)
    return finish_site(interp, q, y, scheme, recipe, s_expr, scale_out, scale_input=scale_input,
                       mul_form=mul_form, mx_exponent=mx_exponent, element=element)


def _read_ratio_scales(interp: Interpreter, s_expr: tuple, scale_out: tuple) -> None:
    """``apply=mul_ratio``: the values are multiplied by ``qmax / a``, so the scale ``a / qmax`` the site
    stores is computed beside q's path, from the floored amax ``a``: read each reader of ``a`` that
    computes it (then a scale output for :func:`finish_site`); any other reader stays unread (an
    outside consumer, reported)."""
    amax = s_expr[1]
    for n in sorted(interp.visited, key=lambda n: n.name):
        v = interp.memo.get(n)
        if v is None or _unbcast(v.expr) != amax:
            continue
        for u in list(n.users):
            if u in interp.memo:
                continue
            visited, memo = set(interp.visited), dict(interp.memo)
            try:
                got = interp.value(u)
            except Unknown:
                got = None
            if got is None or got.level != "group" or (_unbcast(got.expr), got.dtype) != scale_out:
                interp.visited, interp.memo = visited, memo


def finish_site(interp: Interpreter, q: Node, y: Node, scheme: catalog.Scheme, recipe: Recipe, s_expr: tuple,
                scale_out: tuple, *, element: catalog.Element, scale_input: Node | None = None,
                mul_form: bool = False, mx_exponent: tuple | None = None, extra: frozenset = frozenset(),
                scales: tuple = ()) -> Site:
    """The site once its quantisation is read (``interp`` has read it from ``y``): its activation
    and layout, and the scale nodes it replaces; NotRecognised when a value inside it has a
    consumer outside it. ``extra``: site nodes the interpreter does not read (MXFP4's E2M1
    encoding and packing, an evaluated MX scale), whose outside consumers are reported as well,
    but for ``scales``, nodes of them that hold the scale bytes (the fused op's replace them)."""
    scale_nodes = scales
    act, inputs, note, act_params = read_activation(y)
    if catalog.ACTIVATIONS[act].gated:
        layout, x, up = read_layout(*inputs)
    else:
        layout, x, up = Layout.HALVES, inputs[0], None
    for t in (x, up):
        if t is not None and not t.meta["val"].is_contiguous():
            raise NotRecognised(f"input is not contiguous (strides {tuple(t.meta['val'].stride())}); "
                                "the fused op reads contiguous rows")
    if mul_form and x.meta["val"].device.type == "cpu":
        raise NotRecognised(f"on the CPU `amax * (1 / {element.max})` rounds unlike the fused op's "
                            f"`amax / {element.max}` (the two agree on CUDA); write the division")
    # every node between the inputs and the outputs, and who else reads them
    act_nodes = _between(y, {x, up} - {None})
    site_nodes = set(interp.visited) | act_nodes | set(extra) | {y, q}
    scales, e8m0_scales, cast_scales = [], [], []
    order = {n: i for i, n in enumerate(q.graph.nodes)}
    for n in sorted(interp.visited | {y}, key=order.__getitem__):
        outside = _outside_users(site_nodes, n)
        if not outside:
            continue
        v = interp.memo.get(n)
        if v is not None and v.level == "group" and (_unbcast(v.expr), v.dtype) == scale_out and v.ordered \
                and scale_input is None:
            scales.append(n)
            continue
        if v is not None and v.level == "group" and _unbcast(v.expr) == s_expr and scale_input is None:
            casts = _e8m0_casts(outside) if scheme.base.mx else None
            if casts is not None:
                e8m0_views, e8m0_casts = casts
                site_nodes |= e8m0_views | set(e8m0_casts)
                e8m0_scales += e8m0_casts
                continue
            if not scheme.base.mx and v.ordered and v.dtype in (torch.bfloat16, torch.float16):
                cast_scales.append(n)
                continue
            raise NotRecognised(f"the scale `{n.name}` is used as {str(v.dtype).replace('torch.', '')} outside the pattern "
                                f"({', '.join(u.name for u in outside)}); the fused op returns float32 scales "
                                "(use the float32 scale, e.g. s.float())")
        if mx_exponent is not None and v is not None and v.expr == mx_exponent:
            raise NotRecognised(f"the MX exponent `{n.name}` is used outside the pattern "
                                f"({', '.join(u.name for u in outside)}); the fused op returns q and the E8M0 "
                                "scale bytes (e + 127) only")
        role = "activation output" if n is y else "intermediate value"
        raise NotRecognised(f"{role} `{n.name}` has a consumer outside the pattern: "
                            f"{', '.join(u.name for u in outside)}{_grad_hint(outside)}")
    scales += list(scale_nodes)
    for n in sorted(extra, key=order.__getitem__):
        outside = _outside_users(site_nodes, n)
        if outside and n not in scale_nodes:
            raise NotRecognised(f"intermediate value `{n.name}` has a consumer outside the pattern: "
                                f"{', '.join(u.name for u in outside)}{_grad_hint(outside)}")
    for n in act_nodes:
        outside = _outside_users(site_nodes, n)
        if outside:
            raise NotRecognised(f"activation value `{n.name}` has a consumer outside the pattern: "
                                f"{', '.join(u.name for u in outside)}{_grad_hint(outside)}")
    site = Site(act, layout, recipe, scheme, x, up, scale_input, y, q, scales, None, site_nodes, note,
                act_params=act_params, e8m0_scales=e8m0_scales, cast_scales=cast_scales)
    _column_major(site)
    return site


E8M0 = getattr(torch, "float8_e8m0fnu", None)


def _e8m0_casts(readers: list[Node]) -> tuple[set[Node], list[Node]] | None:
    """``(views, casts)`` when every one of ``readers`` of the MX power-of-two scale reaches, through
    order-keeping views only, a cast to ``float8_e8m0fnu``: that cast of ``2^e`` (``e`` in
    [-127, 127]) is exact, its bytes are ``e + 127``, the fused op's scale bytes viewed as E8M0.
    None when any reader is something else."""
    views, casts, stack = set(), [], list(readers)
    while stack:
        u = stack.pop()
        if u in views or u in casts:
            continue
        if u.op == "call_function" and u.target in canonical._VIEWS:
            views.add(u)
            stack.extend(u.users)
        elif E8M0 is not None and u.op == "call_function" and u.target in canonical._CASTS and _dtype(u) == E8M0 \
                and set(u.kwargs) <= {"dtype", "layout", "device"}:
            casts.append(u)
        else:
            return None
    return (views, casts) if casts else None


def _forward_bytes(interp: Interpreter, exponent: tuple, depth: int = 4) -> None:
    """Interpret the nodes after the MX exponent that turn it into scale bytes (``+ 127``, the
    uint8 cast, views on either side), so that they join the site; others are left out."""
    frontier = [n for n, v in list(interp.memo.items()) if v.expr == exponent and n in interp.visited]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for u in n.users:
                bytes_ = _dtype(n) == torch.uint8  # past the bytes only views: a cast back reads the op's bytes
                if u in interp.memo or u.op != "call_function" or not (u.target in canonical._VIEWS or not bytes_ and (
                        u.target in canonical._CASTS or u.target == aten.add.Tensor)):
                    continue
                try:
                    interp.value(u)
                except Unknown:
                    interp.visited.discard(u)  # not part of the site: an outside consumer, reported as such
                    continue
                nxt.append(u)
        frontier = nxt


def _between(y: Node, inputs: set[Node]) -> set[Node]:
    out, stack = set(), [y]
    while stack:
        n = stack.pop()
        if n in out or n in inputs:
            continue
        out.add(n)
        stack.extend(n.all_input_nodes)
    return out - {y}


def _column_major(site: Site) -> None:
    """A ``s.t().contiguous().t()``-like copy after the scales whose result is the column-major
    ``[..., G]`` the fused op can write directly: fold it (``column_major_scales=True``)."""
    if site.scheme is not catalog.FP8_PER_GROUP or len(site.scales) != 1:
        return
    s = site.scales[0]
    chain, node, copied = [], s, False
    while True:
        users = [u for u in node.users if u not in site.nodes] if node is s else list(node.users)
        if len(users) != 1:
            break
        nxt = users[0]
        if nxt.target in canonical._VIEWS or nxt.target in canonical._PERMUTES:
            pass
        elif nxt.target in (aten.clone.default, aten.contiguous.default):
            copied = True
        else:
            break
        chain.append(nxt)
        node = nxt
        if copied and _is_column_major_scales(site, node):
            for n in chain:
                site.nodes.add(n)
            site.recipe = dataclasses.replace(site.recipe, scale_layout=ScaleLayout.COLUMN_MAJOR)
            site.column_tail = node
            site.scales = []
            return


def _is_column_major_scales(site: Site, node: Node) -> bool:
    if canonical.is_symbolic(node):  # the layout test below builds a static tensor
        return False
    interp = Interpreter(site.scales[0])
    interp.memo[site.scales[0]] = dataclasses.replace(interp.memo[site.scales[0]], level="group",
                                                      group=site.recipe.group_size)
    try:
        v = interp.value(node)
    except Unknown:
        return False
    val = node.meta["val"]
    lead = tuple(site.x.meta["val"].shape[:-1])
    want = (*lead, site.recipe.groups(site.y.meta["val"].shape[-1]))
    if not v.ordered or tuple(val.shape) != want:
        return False
    strides = torch.empty((want[-1], *want[:-1]), device="meta").movedim(0, -1).stride()
    return tuple(val.stride()) == tuple(strides)


# --- profitability ------------------------------------------------------------------------------

def should_fuse(site: Site, config) -> str | None:
    """None when the rewrite is a win where the graph runs, else why not (a near miss).

    On a GPU graph only recipes a CUDA / Triton kernel implements are rewritten: a recipe
    only the torch reference computes would run eager code against Inductor's fused code.
    On a CPU graph every op runs the torch reference (which computes every recipe exactly),
    slower than Inductor's C++: kept unless the config asks for CPU rewrites. On every device a
    site whose quantized output only pointwise code reads (a dequantisation) is kept
    (:mod:`quantfuse.passes.profitability`).
    """
    from quantfuse.custom_ops import plan as qplan

    entry = catalog.OPS[site.op_name]
    args, kwargs = site.op_args()
    xv = site.x.meta["val"]
    upv = site.up.meta["val"] if site.up is not None else None
    sv = site.scale_input.meta["val"] if site.scale_input is not None else None
    params = {k: v for k, v in kwargs.items() if k not in ("up", "interleaved", "recipe") and k not in site.act_params}
    try:
        plan = qplan.make_plan(entry, xv, (), params, up=upv, interleaved=kwargs.get("interleaved", False),
                               scale=sv, recipe=kwargs.get("recipe", ""), act_params=site.act_params)
    except (TypeError, ValueError) as e:
        return str(e)
    kept = profitability.native_site_reason(xv.device.type, site.q, site.op_name, site.scheme.key, kwargs,
                                            site.y.meta.get("val"), config)
    if kept or xv.device.type == "cpu":
        return kept
    return profitability.kernel_reason(plan)


# --- the rewrite --------------------------------------------------------------------------------

def rewrite(site: Site) -> None:
    """Replace the site's outputs with the fused op's and erase what is left unused."""
    graph = site.q.graph
    fused = getattr(torch.ops.quantfuse, site.op_name).default
    args, kwargs = site.op_args()
    inputs = [n for n in (site.x, site.up, site.scale_input) if n is not None]
    order = {n: i for i, n in enumerate(graph.nodes)}
    last = max(inputs, key=order.__getitem__)
    xv = site.x.meta["val"]
    fake = getattr(xv, "fake_mode", None)

    def val_of(fn):
        if fake is None:
            return None
        with fake:
            return fn()
    vals = val_of(lambda: fused(*[a.meta["val"] for a in args],
                                **{k: (v.meta["val"] if isinstance(v, Node) else v) for k, v in kwargs.items()}))
    outs = vals if isinstance(vals, tuple) else (vals,)
    anchor = last.next
    while anchor.op == "placeholder":
        anchor = anchor.next
    with graph.inserting_before(anchor):
        call = graph.call_function(fused, *positional_call(fused, args, kwargs))
        call.meta.update(val=vals, stack_trace=site.y.meta.get("stack_trace"))
        if site.scheme.returns_scale:
            q_out = graph.call_function(operator.getitem, (call, 0))
            s_out = graph.call_function(operator.getitem, (call, 1))
            q_out.meta["val"], s_out.meta["val"] = outs[0], outs[1]
        else:
            q_out, s_out = call, None

        def shaped(src, like: Node):
            if _same_shape(src, like):
                return src
            shape = list(like.meta["val"].shape)
            src_shape = tuple(src.meta["val"].shape)
            # the fused op's outputs lead with the input's leading dims: a symbolic one at the same
            # position is read from the output (sym_size); another symbolic dim (at most one here:
            # check_symbolic) is what the others leave
            free = _unmatched_dims(tuple(shape), src_shape[:-1])
            arg = []
            for i, d in enumerate(shape):
                if isinstance(d, int):
                    arg.append(d)
                elif i in free:
                    arg.append(-1)
                else:
                    size = graph.call_function(aten.sym_size.int, (src, i))
                    size.meta["val"] = src_shape[i]
                    arg.append(size)
            out = graph.call_function(aten.reshape.default, (src, arg))
            out.meta["val"] = val_of(lambda: src.meta["val"].reshape(shape))
            return out
        replacements = [(site.q, shaped(q_out, site.q))]
        replacements += [(s, shaped(s_out, s)) for s in site.scales]
        if site.e8m0_scales:
            as_e8m0 = graph.call_function(aten.view.dtype, (s_out, E8M0))
            as_e8m0.meta["val"] = val_of(lambda: s_out.meta["val"].view(E8M0))
            replacements += [(c, shaped(as_e8m0, c)) for c in site.e8m0_scales]
        for c in site.cast_scales:
            want = c.meta["val"].dtype
            cast = graph.call_function(torch.ops.prims.convert_element_type.default, (s_out, want))
            cast.meta["val"] = val_of(lambda: s_out.meta["val"].to(want))
            replacements.append((c, shaped(cast, c)))
        if site.column_tail is not None:  # a folded layout chain: its last node is the op's scales
            tail, want = s_out, site.column_tail.meta["val"].dtype
            if s_out.meta["val"].dtype != want:
                tail = graph.call_function(aten.view.dtype, (s_out, want))
                tail.meta["val"] = val_of(lambda: s_out.meta["val"].view(want))
            replacements.append((site.column_tail, shaped(tail, site.column_tail)))
    for old, new in replacements:
        old.replace_all_uses_with(new)
    for node in sorted(site.nodes, key=order.__getitem__, reverse=True):
        if not node.users and node.op == "call_function":
            graph.erase_node(node)


def run(graph: torch.fx.Graph, config, recorder) -> None:
    """Recognise and fuse every native FP8 and MX site (MXFP4: :mod:`.e2m1`);
    report the rest to ``recorder`` (``recorder.rewrite(site)`` / ``recorder.near_miss(cast, y, reason)``)."""
    if "native" not in config.forms:
        return
    from quantfuse.patterns import e2m1  # it reads sites with this module's parsers

    enabled = set(config.native_fusions) & set(config.fusions)
    fp8 = [(q, ys, lambda q=q, y=None, scale=scale: read_site(q, y, scale, config), lambda q=q: _slice(q.args[0]))
           for q, ys, scale in find_candidates(graph)]
    run_candidates(graph, fp8, config, recorder, enabled)
    mx4 = [(pack, ys, lambda pack=pack, y=None, codes=codes: e2m1.read_site(pack, codes, y, config),
            lambda codes=codes: e2m1.ancestors(codes, 60)) for pack, codes, ys in e2m1.find_candidates(graph)]
    run_candidates(graph, mx4, config, recorder, enabled)


def run_candidates(graph: torch.fx.Graph, candidates, config, recorder, enabled: set) -> None:
    """Read, decide and rewrite each ``(anchor, ys, read(y=...), region())`` candidate; a site
    not fused is reported as a near miss of its anchor with the reason."""
    for q, ys, read, region_of in candidates:
        if q.graph is not graph or q not in set(graph.nodes):
            continue
        y = next(iter(ys)) if len(ys) == 1 else None
        try:
            if y is None:
                raise NotRecognised(f"the scale reads {len(ys)} different values ({', '.join(n.name for n in ys)})")
            site = read(y=y)
            layout_miss = swizzle.apply(site)
            if (site.activation, site.scheme.key) not in enabled:
                raise NotRecognised(f"({site.activation}, {site.scheme.key}) is not enabled in "
                                    "FusionConfig.native_fusions")
            reason = should_fuse(site, config)
            if reason:
                raise NotRecognised(reason)
        except (NotRecognised, Unknown) as e:  # Unknown: a value the interpreter met before any reader caught it
            region = {q, *ys, *region_of()}
            recorder.near_miss(q, y if y is not None else q, str(e), {n.name for n in region})
            continue
        recorder.rewrite(site)
        if layout_miss is not None:
            recorder.near_miss(layout_miss.node, layout_miss.source, layout_miss.reason, set())
        rewrite(site)


class Reporter:
    """Turns the recogniser's decisions into the pass report's :class:`Rewrite` / :class:`NearMiss`.

    The op form's patterns run before it and the native form's after it (fusion_pass.FusionPass):
    a near miss of the op form's keeps its reason and a site it fused is gone; a native pattern
    that fuses or reports a site the recogniser reported replaces that entry."""

    PATTERN = "recognised"

    def __init__(self, report):
        self.report = report

    def rewrite(self, site: Site) -> None:
        from quantfuse.passes.report import make_rewrite
        from quantfuse.patterns import site as site_mod

        names = {n.name for n in site.nodes}
        self.report.near_misses[:] = [m for m in self.report.near_misses if m.node not in names]
        xv = site.x.meta["val"]
        _, kwargs = site.op_args()
        params = {k: v for k, v in kwargs.items() if k not in ("up",)}
        if site.up is not None:
            params["up"] = site.up.name
        if site.note:
            params["note"] = site.note
        self.report.rewrites.append(make_rewrite(
            pattern=f"{self.PATTERN}:{site.activation}[{site.layout.value}]+{site.scheme.key}",
            activation=site.activation, scheme=site.scheme.key, fused_op=f"quantfuse.{site.op_name}",
            source=site_mod.source_line(site.y, site.q), input_shape=tuple(xv.shape),
            input_dtype=str(xv.dtype).replace("torch.", ""), params=params))

    def near_miss(self, q: Node, y: Node, reason: str, region: set[str]) -> None:
        from quantfuse.passes.report import NearMiss
        from quantfuse.patterns import site as site_mod

        if any(m.node in region for m in self.report.near_misses):
            return
        self.report.near_misses.append(NearMiss(pattern=self.PATTERN, reason=reason,
                                                source=site_mod.source_line(y, q), node=q.name))
