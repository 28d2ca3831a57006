"""Calling a kernel family through the backend protocol, and its torch reference.

Both families (:mod:`quantfuse.custom_ops.cuda_backend` and
:mod:`quantfuse.custom_ops.triton_schemes`) expose ``supports(plan)`` and
``run(plan, outputs, x, up, scale)``; a call here builds the plan as the ops do
(:func:`plan.make_plan`), poisons the outputs so that unwritten elements show, runs it
and returns the outputs. The reference is the ops' torch backend for the same plan
(``ops.run_reference``: ``reference.activate``, then ``reference.quantize``).
"""

from __future__ import annotations

import torch

from quantfuse import catalog
from quantfuse.catalog import Layout
from quantfuse.custom_ops import ops
from quantfuse.custom_ops import plan as plans
from quantfuse.custom_ops import reference as ref

FP8 = torch.float8_e4m3fn
POISON_BYTE = 0xAB


def poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() and t.dtype != FP8:
        return t.fill_(float("nan"))
    t.view(torch.uint8).fill_(POISON_BYTE)
    return t


def layout_kwargs(layout: Layout, x: torch.Tensor, up: torch.Tensor | None = None) -> dict:
    """make_plan's keyword arguments for a gated layout (SEPARATE: ``up``, a second tensor)."""
    if layout is Layout.SEPARATE:
        return {"up": up if up is not None else torch.randn_like(x)}
    return {"interleaved": layout is Layout.INTERLEAVED}


def make(name: str, x: torch.Tensor, *params, up=None, interleaved=False, scale=None, recipe=""):
    return plans.make_plan(catalog.OPS[name], x, params, up=up, interleaved=interleaved, scale=scale,
                           recipe=recipe)


def runnable(mod, names) -> list[str]:
    """The ops of ``names`` kernel family ``mod`` runs: the CUDA kernels only those they implement
    (``cuda_backend.implements``: the activation has a CUDA unit, the scheme a kernel)."""
    return [n for n in names if mod.NAME != "cuda" or mod.implements(catalog.OPS[n])]


def call(mod, name: str, x: torch.Tensor, *params, up=None, interleaved=False, scale=None, recipe=""):
    """The op ``name``'s outputs from kernel family ``mod`` (asserting it supports the call)."""
    p = make(name, x, *params, up=up, interleaved=interleaved, scale=scale, recipe=recipe)
    why = mod.supports(p)
    assert why is None, f"{mod.NAME} does not run {name}: {why}"
    outs = tuple(poison(t) for t in p.empty_outputs(x.device))
    mod.run(p, outs, x, up, scale)
    return outs


def activation(name: str, x: torch.Tensor, up=None, interleaved=False) -> torch.Tensor:
    """The reference of activation ``name`` (catalog), any layout."""
    return ref.activate(name, x, up, interleaved)


def reference(name: str, x: torch.Tensor, *params, up=None, interleaved=False, scale=None, recipe=""):
    """The reference outputs of op ``name``, shaped as ``call``'s (the ops' torch backend)."""
    p = make(name, x, *params, up=up, interleaved=interleaved, scale=scale, recipe=recipe)
    out = ops.run_reference(p, x, up, interleaved, scale)
    return out if isinstance(out, tuple) else (out,)


def unfused(name: str) -> str:
    """The unfused quant op of a fused op's scheme."""
    return catalog.OPS[name].scheme.unfused_name
