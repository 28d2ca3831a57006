"""Calling a kernel family through the backend protocol, and its torch reference.

Both families (:mod:`quantfuse.custom_ops.cuda_backend` and
:mod:`quantfuse.custom_ops.triton_schemes`) expose ``supports(plan)`` and
``run(plan, outputs, x, up, scale)``; a call here builds the plan as the ops do
(:func:`plan.make_plan`), poisons the outputs so that unwritten elements show, runs it
and returns the outputs. The reference is :mod:`quantfuse.custom_ops.reference` for the
same plan: the activation by its catalog name on ``gate_up``'s operands, then
``quantize`` with the plan's recipe.
"""

from __future__ import annotations

import torch

from quantfuse import catalog
from quantfuse.catalog import Layout
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
    act = catalog.ACTIVATIONS[name] if name in catalog.ACTIVATIONS else catalog.IDENTITY
    if act is catalog.IDENTITY:
        return x
    if act.gated:
        gate, up_ = ref.gate_up(x, up, interleaved)
        x = torch.cat([gate, up_], dim=-1)
    return getattr(ref, act.name)(x)


def reference(name: str, x: torch.Tensor, *params, up=None, interleaved=False, scale=None, recipe=""):
    """The reference outputs of op ``name``, shaped as ``call``'s."""
    p = make(name, x, *params, up=up, interleaved=interleaved, scale=scale, recipe=recipe)
    y = activation(p.activation.name, x, up, interleaved)
    if p.recipe is None:
        return (y,)
    out = ref.quantize(y, p.recipe, scale=scale)
    return out if isinstance(out, tuple) else (out,)


def unfused(name: str) -> str:
    """The unfused quant op of a fused op's scheme."""
    return catalog.OPS[name].scheme.unfused_name
