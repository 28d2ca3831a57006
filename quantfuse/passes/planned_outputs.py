"""The last step of the pass: quantfuse calls write into buffers Inductor plans.

A call of an op's default overload allocates its outputs inside the op, and Inductor's wrapper
code, which sees a multi-output fallback kernel, indexes the returned tuple and asserts each
output's size and stride on every call. Rewritten as ``aten.empty_strided`` buffers and a call
of the op's ``out`` overload writing them, Inductor allocates the buffers as its own (reusing
freed ones) and emits the call alone (docs/decisions/030-planned-outputs.md).

The call is left in its mutating form, not under ``auto_functionalized``: Inductor's
``decompose_auto_functionalized`` would hand the op every argument by keyword, which costs
more per call than the rest saves (decision 023). A mutation in the post-grad graph is safe
here because the buffers are new: nothing reads them before the call, every later reader is
a user of the buffer node, and Inductor's lowering orders reads after the mutation of the
buffer they read (vLLM's ``FixFunctionalizationPass`` leaves its ops the same way, as the
last of its post-grad passes).

Where it applies (:func:`reason_kept`, the safety rules) and where it pays (:func:`pays_on`,
the profitability rule) are decided apart, as in Inductor's ``pad_mm.py``.
"""

from __future__ import annotations

import operator

import sympy
import torch
from torch.fx import Graph, Node
from torch.utils._sympy.functions import FloorDiv, Max, Min

from quantfuse import catalog
from quantfuse.passes.report import log

_EMPTY_STRIDED = torch.ops.aten.empty_strided.default


def _entry(node: Node) -> catalog.OpEntry | None:
    """The catalog entry of a call of a quantfuse op's default overload, else None."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return None
    if target.namespace != catalog.NAMESPACE or target._overloadname != "default":
        return None
    return catalog.OPS.get(target._opname)


def _outputs(node: Node) -> tuple | None:
    """The call's output fake tensors, in the order of the op's outputs."""
    val = node.meta.get("val")
    vals = val if isinstance(val, (tuple, list)) else (val,)
    return tuple(vals) if all(isinstance(v, torch.Tensor) for v in vals) else None


def _input_symbols(node: Node) -> dict | None:
    """The symbols of the call's input ``x``'s sizes, each with its dim (None: no input metadata)."""
    x = node.args[0] if node.args else None
    xv = x.meta.get("val") if isinstance(x, Node) else None
    if not isinstance(xv, torch.Tensor):
        return None
    return {d.node.expr: i for i, d in enumerate(xv.shape)
            if isinstance(d, torch.SymInt) and isinstance(d.node.expr, sympy.Symbol)}


def _values(outs: tuple):
    """Every size and stride of the outputs, as ints or sympy expressions."""
    for t in outs:
        for v in (*t.shape, *t.stride()):
            yield v if isinstance(v, int) else v.node.expr


# the sympy forms output sizes take (the swizzled scale rows -128*((-T)//128), the experts ops'
# 128*((T + 127*Min(E, T))//128)), each as the Python operator an FX node applies to SymInts
_OPERATORS = {sympy.Add: operator.add, sympy.Mul: operator.mul, FloorDiv: operator.floordiv,
              Min: torch.sym_min, Max: torch.sym_max, sympy.Min: torch.sym_min, sympy.Max: torch.sym_max}


def _expressible(expr, symbols: dict) -> bool:
    """Whether ``expr`` is built from ints, the input's size symbols and :data:`_OPERATORS`."""
    if isinstance(expr, (int, sympy.Integer)):
        return True
    if isinstance(expr, sympy.Symbol):
        return expr in symbols
    return expr.func in _OPERATORS and all(_expressible(a, symbols) for a in expr.args)


def reason_kept(node: Node, entry: catalog.OpEntry) -> str | None:
    """None when ``node`` can be rewritten into its ``out`` form, else why not."""
    outs = _outputs(node)
    if outs is None or len(outs) != len(entry.out_names):
        return "its outputs' metadata is missing"
    symbols = _input_symbols(node)
    if symbols is None or not all(_expressible(v, symbols) for v in _values(outs)):
        return "an output size or stride is not an expression of the input's sizes"
    for user in node.users:
        if len(outs) > 1 and not (user.target is operator.getitem and isinstance(user.args[1], int)):
            return f"its output tuple is used whole by {user.name}"
    return None


class _SymNodes:
    """FX nodes computing output sizes from ``sym_size`` nodes of the input (one node per
    distinct expression), each with its SymInt as ``meta["val"]``, as Inductor reads them."""

    def __init__(self, graph: Graph, x: Node, symbols: dict):
        self.graph, self.x, self.symbols, self.nodes = graph, x, symbols, {}

    def __call__(self, v):
        if isinstance(v, int):
            return v
        return self._build(v.node.expr)

    def _build(self, expr):
        if isinstance(expr, (int, sympy.Integer)):
            return int(expr)
        if expr in self.nodes:
            return self.nodes[expr]
        if isinstance(expr, sympy.Symbol):
            node = self.graph.call_function(torch.ops.aten.sym_size.int, (self.x, self.symbols[expr]))
            node.meta["val"] = self.x.meta["val"].shape[self.symbols[expr]]
        else:
            fn, (first, *rest) = _OPERATORS[expr.func], [self._build(a) for a in expr.args]
            node = first
            for arg in rest:
                node = self._apply(fn, node, arg)
        self.nodes[expr] = node
        return node

    def _apply(self, fn, a, b):
        if isinstance(a, int) and isinstance(b, int):
            return fn(a, b)
        node = self.graph.call_function(fn, (a, b))
        node.meta["val"] = fn(*(v.meta["val"] if isinstance(v, Node) else v for v in (a, b)))
        return node


def pays_on(device: torch.device) -> bool:
    """Whether the ``out`` form is cheaper than the op's own allocation on ``device``: on CUDA when
    the C++ dispatcher path (csrc/dispatch.cpp) serves the ``out`` overloads; the Python kernel
    would check the given outputs on every call, which costs what Inductor's planning saves."""
    if device.type != "cuda":
        return False
    from quantfuse.custom_ops import cuda_backend

    return cuda_backend.dispatch_serves_out()


def rewrite(graph: Graph, node: Node, entry: catalog.OpEntry) -> None:
    """Replace the call ``node`` by empty buffers and a call of its ``out`` overload on them."""
    from quantfuse.patterns.op_call import positional_call

    outs = _outputs(node)
    op = getattr(getattr(torch.ops, catalog.NAMESPACE), entry.name).out
    with graph.inserting_before(node):
        value = _SymNodes(graph, node.args[0], _input_symbols(node))
        buffers = []
        for t in outs:
            b = graph.call_function(_EMPTY_STRIDED, ([value(v) for v in t.shape], [value(v) for v in t.stride()]),
                                    {"dtype": t.dtype, "device": t.device})
            b.meta["val"] = t
            buffers.append(b)
        args, kwargs = positional_call(op, node.args, {**node.kwargs, **dict(zip(entry.out_names, buffers))})
        call = graph.call_function(op, args, kwargs)
        call.meta["val"] = None
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in node.meta:
            call.meta[key] = node.meta[key]
    if len(outs) == 1:
        node.replace_all_uses_with(buffers[0])
    else:
        for user in list(node.users):
            user.replace_all_uses_with(buffers[user.args[1]])
            graph.erase_node(user)
    graph.erase_node(node)


def run(graph: Graph, pays=None) -> int:
    """Rewrite every quantfuse call of ``graph`` that :func:`reason_kept` allows and ``pays``
    (a device -> bool rule, default :func:`pays_on`) favours into its ``out`` form; returns how
    many were rewritten."""
    pays = pays or pays_on
    done = 0
    for node in list(graph.nodes):
        entry = _entry(node)
        if entry is None:
            continue
        why = reason_kept(node, entry)
        if why is not None:
            log.debug("quantfuse: %s keeps its default call: %s", node.name, why)
            continue
        if not pays(_outputs(node)[0].device):
            continue
        rewrite(graph, node, entry)
        done += 1
    return done
