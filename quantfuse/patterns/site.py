"""Reading and checking one matched site before it is rewritten.

The Inductor pattern matcher compares graph structure only: the patterns it builds
ignore ints, floats, shapes and dtypes.  Everything a rewrite depends on is therefore
read back off the matched nodes here:

* every literal (eps, 448, clamp bounds, reduction dims, dtypes, exponents) must equal
  the one in the traced spelling it matched (:func:`check_literals`);
* the shape-dependent ones are read per activation and scheme (which half is the gate,
  the group size);
* the input must be contiguous and of a supported dtype, the activation computed in the
  input dtype, and no intermediate value used outside the site.

A failed check raises :class:`NotFusable`, whose message becomes a near miss in the
report; the pass never rewrites a site it has not fully read.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import re
from typing import Any

import torch
from torch.fx import Node

from quantfuse import catalog
from quantfuse.catalog import Ue8m0

aten = torch.ops.aten
prims = torch.ops.prims

#: ops whose int/list arguments depend on the traced example's shape
_SHAPE_OPS = {aten.reshape.default, aten.view.default, aten.slice.Tensor, aten.split.Tensor,
              aten.split_with_sizes.default, operator.getitem}
_SIXTEEN_BIT = (torch.bfloat16, torch.float16)
_TRACE_16BIT = torch.bfloat16  # the dtype 16-bit spellings were traced with


class NotFusable(Exception):
    """Raised while reading a site; the message is the near-miss reason."""


@dataclasses.dataclass
class SiteParams:
    """What the fused op needs, read off a matched site."""

    x: Node
    #: the activation's output node: its stack trace is the user's line
    activation: Node
    #: keyword arguments of the fused op besides x
    params: dict[str, Any]
    #: tensor arguments besides x (the experts ops' offsets), by name: graph nodes
    inputs: dict[str, Node] = dataclasses.field(default_factory=dict)


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def _val(node: Any):
    return node.meta.get("val") if isinstance(node, Node) else None


def _int(v: Any, what: str) -> int:
    if isinstance(v, torch.SymInt):
        raise NotFusable(f"{what} is dynamic ({v}); only static hidden sizes are fused")
    return int(v)


def _require(cond: bool, reason: str) -> None:
    if not cond:
        raise NotFusable(reason)


def _last_dim(dim: Any, ndim: int) -> bool:
    return isinstance(dim, int) and dim % ndim == ndim - 1


# --- checks shared by every site ----------------------------------------------------------

def check_input(x: Node, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    """The activation input must be a contiguous tensor of a supported dtype."""
    xv = _val(x)
    _require(isinstance(xv, torch.Tensor), "input has no tensor metadata")
    _require(xv.dtype in dtypes, f"input dtype {xv.dtype} is not supported "
             f"(supported: {', '.join(str(d).replace('torch.', '') for d in dtypes)})")
    _require(xv.is_contiguous(), f"input is not contiguous (strides {tuple(xv.stride())}); "
             "the fused op reads contiguous rows")
    return xv


def check_external_users(match, outputs: list[Node], roles: dict[Node, str]) -> None:
    """Reject the site if a value inside it is consumed outside it (LoRA branch, debug hook)."""
    inside = set(match.nodes)
    for node in match.nodes:
        if node in outputs:
            continue
        outside = [u.name for u in node.users if u not in inside]
        if outside:
            role = roles.get(node, "intermediate value")
            raise NotFusable(f"{role} `{node.name}` has a consumer outside the pattern: {', '.join(outside)}")


def _literal(node: Node, i: int, arg: Any) -> Any:
    """A literal argument; a scalar ``full`` (how ``torch.tensor(eps)`` reaches the graph) counts."""
    if isinstance(arg, Node):
        if arg.target == aten.full.default and not arg.args[0]:
            return arg.args[1]
        raise NotFusable(f"`{node.name}` takes `{arg.name}` where the pattern has a constant")
    return arg


def _same(node: Node, ref: Node, i: int, arg: Any, want: Any, in_dtype: torch.dtype) -> bool:
    if isinstance(want, torch.dtype):
        return arg == (in_dtype if want == _TRACE_16BIT and in_dtype in _SIXTEEN_BIT else want)
    if isinstance(want, (list, tuple)):
        if not isinstance(arg, (list, tuple)) or len(arg) != len(want):
            return False
        names = [a.name for a in node.target._schema.arguments] if hasattr(node.target, "_schema") else []
        if i < len(names) and names[i] == "dim":  # reduction dims: compare counted from the end
            nd, nd_ref = _val(node.args[0]).dim(), _val(ref.args[0]).dim()
            return [d % nd - nd for d in arg] == [d % nd_ref - nd_ref for d in want]
        return all(_same(node, ref, i, a, w, in_dtype) for a, w in zip(arg, want))
    if isinstance(want, bool) or isinstance(arg, bool):
        return arg is want
    if isinstance(want, (int, float)):
        if not isinstance(arg, (int, float)):
            return False
        if node.target == aten.mul.Tensor and ref.target == aten.div.Tensor:  # x * (1/c) for x / c
            return _f32(arg) == _f32(1.0 / want)
        return _f32(arg) == _f32(want)
    return arg == want


def check_literals(traced: dict[Node, Node], in_dtype: torch.dtype) -> None:
    """Every literal of the site equals the traced spelling's (shape-dependent ones aside)."""
    for node, ref in traced.items():
        if node.target in _SHAPE_OPS:
            continue
        _require(len(node.args) == len(ref.args), f"`{node.name}` has {len(node.args)} arguments, "
                 f"the pattern {len(ref.args)}")
        for i, (arg, want) in enumerate(zip(node.args, ref.args)):
            if isinstance(want, Node):
                continue
            got = _literal(node, i, arg)
            _require(_same(node, ref, i, got, want, in_dtype),
                     f"`{node.name}` ({node.target}) has {got!r} where the fused op needs {want!r}")
        alpha = node.kwargs.get("alpha", 1)
        _require(alpha == ref.kwargs.get("alpha", 1), f"`{node.name}` has alpha={alpha}")


# --- activations: shape-dependent arguments ----------------------------------------------

def _read_silu_and_mul(nodes: list[Node], x: Node, y: Node) -> None:
    """``y = silu(gate) * up`` with gate = x[..., :d] and up = x[..., d:]."""
    xv = _val(x)
    ndim, hidden = xv.dim(), _int(xv.shape[-1], "hidden size")
    d = hidden // 2
    _require(hidden % 2 == 0, f"input hidden size {hidden} is odd")
    up = y.args[1]
    split = [n for n in nodes if n.target in (aten.split.Tensor, aten.split_with_sizes.default)]
    if split:
        (sp,) = split
        dim = sp.args[2] if len(sp.args) > 2 else sp.kwargs.get("dim", 0)
        sizes = sp.args[1]
        _require(_last_dim(dim, ndim), "gate/up split is not along the last dim")
        _require(sizes == d or list(sizes) == [d, d], f"gate/up split sizes {sizes} are not two halves of {hidden}")
        _require(up.target is operator.getitem and up.args[1] == 1, "the multiplier is not the second half (up)")
        return
    slices = [n for n in nodes if n.target == aten.slice.Tensor and n.args[0] is x]
    _require(len(slices) == 2, "gate/up are not two slices of the input")
    for node in slices:
        dim, start, end, step = (*node.args[1:], None, None, None, None)[:4]
        start = 0 if start is None else start
        end = hidden if end is None else min(end, hidden)
        _require(_last_dim(dim, ndim) and step in (None, 1), "gate/up slices are not along the last dim")
        want = (d, hidden) if node is up else (0, d)
        _require((start, end) == want, f"slice {start}:{end} is not the expected half "
                 f"{want[0]}:{want[1]} ({'up' if node is up else 'gate'})")


ACTIVATION_READERS = {
    "silu_and_mul": _read_silu_and_mul,
    "relu2": lambda nodes, x, y: None,  # relu(x) then pow 2 / mul: all literals, checked generically
}


# --- schemes: shape-dependent arguments -----------------------------------------------------

def check_group_size(group_size: int, supported: tuple[int, ...]) -> None:
    _require(group_size in supported,
             f"group size {group_size} is not supported (supported: {', '.join(map(str, supported))})")


def _groups_of(nodes: list[Node], y: Node) -> int:
    """The group size of the site's ``reshape(y, [..., G, g])``."""
    (reshape,) = [n for n in nodes if n.target in (aten.reshape.default, aten.view.default) and n.args[0] is y]
    yv, gv = _val(y), _val(reshape)
    _require(gv.dim() == yv.dim() + 1 and tuple(gv.shape[:-2]) == tuple(yv.shape[:-1]),
             f"reshape {tuple(yv.shape)} -> {tuple(gv.shape)} does not split the last dim into groups")
    group = _int(gv.shape[-1], "group size")
    _require(_int(gv.shape[-2], "group count") * group == _int(yv.shape[-1], "hidden size"),
             "groups do not tile the hidden dim")
    return group


def _read_fp8_group(nodes, y, spelling, config) -> dict:
    group = _groups_of(nodes, y)
    check_group_size(group, config.group_sizes)
    params = {"group_size": group, "column_major_scales": False, "use_ue8m0": False}
    if spelling != "scale=fp32":
        # exp2(ceil(log2(s))) / 2 ** ceil(log2(s)): float32 log2 rounds a scale just above a
        # power of two down onto it, so this is Ue8m0.EXP2_CEIL_LOG2, not the op's exact
        # use_ue8m0 rounding (catalog.Ue8m0); the recipe override says so
        params["recipe"] = f"ue8m0={Ue8m0.EXP2_CEIL_LOG2.value}"
    return params


#: why an MX site of a float32 activation is not fused (the pattern matcher and the recogniser)
FP32_MX_REASON = ("MX of a float32 activation: torch.log2 rounds near powers of two, so the exponent this "
                  "code computes is not always the exact one the fused op computes")


def _read_mx(nodes, y, spelling, config) -> dict:
    # a 16-bit amax is never within an fp32 ulp of a power of two (times 448 or 6) unless it is
    # one, so torch.log2 gives the exact exponent there; an fp32 amax can be, and log2 rounds
    _require(_val(y).dtype in _SIXTEEN_BIT, FP32_MX_REASON)
    block = _groups_of(nodes, y)
    _require(block == 32, f"block size {block} is not the MX block size 32")
    # the spellings divide by torch.exp2 of the clamped exponent: a byte-0 block's divisor is the
    # device's exp2(-127) (catalog.MxByte0.EXP2)
    return {"scale_rounding": spelling, "recipe": f"mx_byte0={catalog.MxByte0.EXP2.value}"}


SCHEME_READERS = {
    "fp8_per_group": _read_fp8_group,
    "fp8_per_token": lambda nodes, y, spelling, config: {},
    "mxfp8": _read_mx,
    "mxfp4": _read_mx,
}


def check_kernel(activation: str, scheme: str, params: dict, xv: torch.Tensor) -> None:
    """A native site on a GPU graph is rewritten only where a CUDA / Triton kernel computes its
    recipe (a recipe only the torch reference computes would run eager code against Inductor's
    fused code), and not where only a Triton kernel slower than Inductor's code would
    (``profitability.kernel_reason``); on the CPU every op runs the reference, which computes
    every recipe."""
    if xv.device.type == "cpu":
        return
    from quantfuse.custom_ops import plan as qplan
    from quantfuse.passes import profitability

    entry = catalog.OPS[catalog.fused_op_name(activation, scheme)]
    op_params = {k: v for k, v in params.items() if k != "recipe"}
    reason = profitability.kernel_reason(qplan.make_plan(entry, xv, (), op_params, recipe=params.get("recipe", "")))
    _require(reason is None, reason)


def _check_op_params(scheme: str, params: dict, config) -> None:
    if scheme == "fp8_per_group":
        check_group_size(params["group_size"], config.group_sizes)


# --- one site ---------------------------------------------------------------------------------

def bind_args(node: Node) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled in."""
    out = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value
    return out


def _activation_op_params(act_nodes: list[Node]) -> dict[str, Any]:
    """The activation op's own arguments the fused op must get (``interleaved``, GPT-OSS's
    ``alpha`` / ``limit``), those that differ from their defaults: without them the fused op
    would read another layout or use other parameters."""
    (act,) = act_nodes
    defaults = {a.name: a.default_value for a in act.target._schema.arguments}
    args = bind_args(act)
    _require(args.get("up") is None, f"`{act.name}` takes up as a second tensor, which the op-form "
             "pattern does not carry to the fused op")
    return {k: v for k, v in args.items() if k not in ("x", "up") and v != defaults[k]}


def activation_output(traced: dict[Node, Node], part_of: dict[Node, str]) -> Node:
    """The site's activation output: the activation node the quantisation consumes."""
    scheme_nodes = {n for n, ref in traced.items() if part_of[ref] == "scheme"}
    (y,) = [n for n, ref in traced.items() if part_of[ref] == "activation" and scheme_nodes & set(n.users)]
    return y


def read(spec, match, traced: dict[Node, Node], part_of: dict[Node, str], config) -> tuple[SiteParams, dict]:
    """Read and check one site; returns the fused op's parameters and names for its nodes."""
    x = match.kwargs["x"]
    xv = check_input(x, config.torch_dtypes)
    act_nodes = [n for n, ref in traced.items() if part_of[ref] == "activation"]
    scheme_nodes = [n for n, ref in traced.items() if part_of[ref] == "scheme"]
    y = activation_output(traced, part_of)
    if spec.form == "op":
        (quant,) = [n for n in scheme_nodes if n.target is not operator.getitem]
        # a recipe override travels to the fused op; the default ("") is left out of the report
        params = {k: v for k, v in bind_args(quant).items() if k != "x" and not (k == "recipe" and not v)}
        inputs = {k: params.pop(k) for k in list(params) if isinstance(params[k], Node)}
        _check_op_params(spec.scheme, params, config)
        params.update(_activation_op_params(act_nodes))
        return SiteParams(x, y, params, inputs), {y: "activation output"}
    yv = _val(y)
    _require(yv.dtype == xv.dtype, f"activation is computed in {yv.dtype} from {xv.dtype} input; "
             "the fused op rounds it to the input dtype")
    check_literals(traced, xv.dtype)
    ACTIVATION_READERS[spec.activation](act_nodes, x, y)
    params = SCHEME_READERS[spec.scheme](scheme_nodes, y, spec.spelling, config)
    roles = {y: "activation output"}
    roles.update({n: "group amax" for n in scheme_nodes if n.target == aten.amax.default})
    return SiteParams(x, y, params), roles


# --- where in the user's code ----------------------------------------------------------

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')
# frames inside torch or quantfuse are not the user's line
_OWN = (os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)


def source_line(*nodes: Node) -> str:
    """``file:line in fn: code`` of the innermost user frame in the nodes' stack traces."""
    for node in nodes:
        trace = node.meta.get("stack_trace") if isinstance(node, Node) else None
        if not trace:
            continue
        frames = [f for f in _FRAME.findall(trace) if not os.path.abspath(f[0]).startswith(_OWN)]
        if frames:
            path, line, fn, code = frames[-1]
            return f"{os.path.basename(path)}:{line} in {fn}: {code.strip()}"
    return "<unknown source>"
