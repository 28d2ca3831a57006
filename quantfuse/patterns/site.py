"""Reading and checking one matched site before it is rewritten.

The Inductor pattern matcher compares graph structure only: the patterns it
builds ignore ints, floats, shapes and dtypes.  Everything a rewrite depends on is
therefore read back off the matched nodes here and checked against what the fused
op computes: which half is the gate, the group size, eps, 448, the clamp bounds,
the dtypes, contiguity, and that no intermediate value is used outside the site.
A failed check returns a human-readable reason, which becomes a near miss in the
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

aten = torch.ops.aten
prims = torch.ops.prims

FP8_MAX = 448.0
EPS = 1e-10


class NotFusable(Exception):
    """Raised while reading a site; the message is the near-miss reason."""


@dataclasses.dataclass
class SiteParams:
    """What the fused op needs, read off a matched site."""

    x: Node
    group_size: int
    column_major_scales: bool
    use_ue8m0: bool
    #: the activation's output node: its stack trace is the user's line
    activation: Node


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def _val(node: Any):
    return node.meta.get("val") if isinstance(node, Node) else None


def _last_dim(dim: Any, ndim: int) -> bool:
    return isinstance(dim, int) and dim % ndim == ndim - 1


def _int(v: Any, what: str) -> int:
    if isinstance(v, torch.SymInt):
        raise NotFusable(f"{what} is dynamic ({v}); only static hidden sizes are fused")
    return int(v)


def _require(cond: bool, reason: str) -> None:
    if not cond:
        raise NotFusable(reason)


def _nodes(match, *targets) -> list[Node]:
    return [n for n in match.nodes if n.op == "call_function" and n.target in targets]


def _one(match, *targets) -> Node:
    found = _nodes(match, *targets)
    _require(len(found) == 1, f"expected one {targets[0]} in the site, found {len(found)}")
    return found[0]


def check_external_users(match, outputs: list[Node], roles: dict[Node, str]) -> None:
    """Reject the site if a value inside it is consumed outside it (LoRA branch, debug hook)."""
    inside = set(match.nodes)
    for node in match.nodes:
        if node in outputs:
            continue
        outside = [u.name for u in node.users if u not in inside]
        if outside:
            role = roles.get(node, "intermediate value")
            raise NotFusable(f"{role} `{node.name}` has a consumer outside the pattern: "
                             f"{', '.join(outside)}")


def check_input(x: Node, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    """The activation input must be a contiguous tensor of a supported dtype."""
    xv = _val(x)
    _require(isinstance(xv, torch.Tensor), "input has no tensor metadata")
    _require(xv.dtype in dtypes, f"input dtype {xv.dtype} is not supported "
             f"(supported: {', '.join(str(d).replace('torch.', '') for d in dtypes)})")
    _require(xv.is_contiguous(), f"input is not contiguous (strides {tuple(xv.stride())}); "
             "the fused op reads contiguous rows")
    return xv


def check_group_size(group_size: int, supported: tuple[int, ...]) -> None:
    _require(group_size in supported,
             f"group size {group_size} is not supported (supported: {', '.join(map(str, supported))})")


# --- native form ---------------------------------------------------------------------

def _read_gate_up(match, x: Node, y: Node, hidden: int) -> None:
    """Check that ``y = act(gate) * up`` with gate = x[..., :d] and up = x[..., d:]."""
    ndim = _val(x).dim()
    d = hidden // 2
    _require(hidden % 2 == 0, f"input hidden size {hidden} is odd")
    up = y.args[1]
    split = _nodes(match, aten.split.Tensor, aten.split_with_sizes.default)
    if split:
        (sp,) = split
        dim = sp.args[2] if len(sp.args) > 2 else sp.kwargs.get("dim", 0)
        sizes = sp.args[1]
        _require(_last_dim(dim, ndim), "gate/up split is not along the last dim")
        _require(sizes == d or list(sizes) == [d, d], f"gate/up split sizes {sizes} are not two halves of {hidden}")
        _require(up.target is operator.getitem and up.args[1] == 1, "the multiplier is not the second half (up)")
        return
    slices = [n for n in _nodes(match, aten.slice.Tensor) if n.args[0] is x]
    _require(len(slices) == 2, "gate/up are not two slices of the input")
    for node in slices:
        dim, start, end, *rest = (*node.args[1:], None, None, None)[:4]
        start = 0 if start is None else start
        end = hidden if end is None else min(end, hidden)
        step = rest[0] if rest and rest[0] is not None else 1
        _require(_last_dim(dim, ndim) and step == 1, "gate/up slices are not along the last dim")
        want = (d, hidden) if node is up else (0, d)
        _require((start, end) == want, f"slice {start}:{end} is not the expected half "
                 f"{want[0]}:{want[1]} ({'up' if node is up else 'gate'})")


def _read_constants(match) -> None:
    """Every literal in the silu and the quantisation must be the contract's."""
    for add in _nodes(match, aten.add.Tensor):
        _require(add.args[1] == 1 and add.kwargs.get("alpha", 1) == 1, f"`{add.name}` adds {add.args[1]}, not 1")
    for node in _nodes(match, aten.pow.Scalar):
        _require(node.args[0] == 2, f"power-of-two scale uses base {node.args[0]}")


def read_native_fp8_group(match, dtypes, group_sizes) -> tuple[SiteParams, dict[Node, str]]:
    """Read a native-torch SiLU×Mul → FP8 per-group site; raises NotFusable."""
    x = match.kwargs["x"]
    xv = check_input(x, dtypes)
    hidden = _int(xv.shape[-1], "hidden size")

    reshape = _one(match, aten.reshape.default, aten.view.default)
    y = reshape.args[0]
    yv, gv = _val(y), _val(reshape)
    roles = {y: "activation output"}
    _require(yv.dtype == xv.dtype, f"activation is computed in {yv.dtype} from {xv.dtype} input; "
             "the fused op rounds it to the input dtype")
    _read_gate_up(match, x, y, hidden)

    # groups: [..., H/2] -> [..., G, g]
    _require(gv.dim() == yv.dim() + 1 and tuple(gv.shape[:-2]) == tuple(yv.shape[:-1]),
             f"reshape {tuple(yv.shape)} -> {tuple(gv.shape)} does not split the last dim into groups")
    group = _int(gv.shape[-1], "group size")
    _require(_int(gv.shape[-2], "group count") * group == hidden // 2, "groups do not tile the hidden dim")
    check_group_size(group, group_sizes)

    amax = _one(match, aten.amax.default)
    dims = amax.args[1] if len(amax.args) > 1 else amax.kwargs.get("dim")
    keep = amax.args[2] if len(amax.args) > 2 else amax.kwargs.get("keepdim", False)
    _require(len(dims) == 1 and _last_dim(dims[0], gv.dim()) and keep, "amax is not over the group dim with keepdim")

    floor = next(n for n in match.nodes if n.target in (aten.clamp_min.default, aten.maximum.default)
                 and n.args[0] is amax)
    eps = floor.args[1]
    if isinstance(eps, Node):
        _require(eps.target == aten.full.default and not eps.args[0], f"amax floor `{eps.name}` is not a scalar")
        eps = eps.args[1]
    _require(_f32(eps) == _f32(EPS), f"amax floor (eps) is {eps}, the fused op uses {EPS}")

    (to_scale,) = [n for n in match.nodes if n.args and n.args[0] is floor]
    c = to_scale.args[1]
    ok = c == FP8_MAX if to_scale.target == aten.div.Tensor else _f32(c) == _f32(1 / FP8_MAX)
    _require(ok, f"scale is amax {'/' if to_scale.target == aten.div.Tensor else '*'} {c}, not amax / 448")

    (lo,) = [n for n in _nodes(match, aten.clamp_min.default) if n is not floor]
    hi = _one(match, aten.clamp_max.default)
    _require(lo.args[1] == -FP8_MAX and hi.args[1] == FP8_MAX,
             f"quantised values are clamped to [{lo.args[1]}, {hi.args[1]}], not [-448, 448]")
    (to_fp8,) = [n for n in match.nodes if n.args and n.args[0] is hi]
    _require(to_fp8.args[1] == torch.float8_e4m3fn, f"output dtype is {to_fp8.args[1]}, not float8_e4m3fn")
    _read_constants(match)
    for cvt in _nodes(match, prims.convert_element_type.default):
        _require(cvt.args[1] in (torch.float32, xv.dtype, torch.float8_e4m3fn),
                 f"`{cvt.name}` casts to {cvt.args[1]}")
    use_ue8m0 = bool(_nodes(match, aten.log2.default))
    roles.update({amax: "group amax", floor: "clamped amax"})
    return SiteParams(x, group, False, use_ue8m0, y), roles


# --- op form -------------------------------------------------------------------------

def bind_args(node: Node) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled in."""
    schema = node.target._schema
    out = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value
    return out


def read_op_fp8_group(match, quant_op, dtypes, group_sizes) -> tuple[SiteParams, dict[Node, str]]:
    """Read a ``quantfuse.silu_and_mul`` → ``quantfuse.per_token_group_quant_fp8`` site."""
    quant = _one(match, quant_op)
    act = quant.args[0]
    x = match.kwargs["x"]
    check_input(x, dtypes)
    args = bind_args(quant)
    check_group_size(args["group_size"], group_sizes)
    params = SiteParams(x, args["group_size"], bool(args["column_major_scales"]), bool(args["use_ue8m0"]), act)
    return params, {act: "activation output"}


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
