"""``torch.library`` ops of the ``quantfuse`` namespace, one per :data:`catalog.OPS` entry.

Every op builds a :class:`~quantfuse.custom_ops.plan.CallPlan` from its arguments (the one
place a call is checked, shared by the real and the fake impl, so a bad call fails with
the same message at trace time), asks the oracle which backend runs that plan (cached per
plan key) and runs it: a compiled kernel, or the torch reference maths.
"""

from __future__ import annotations

import torch

from quantfuse import catalog
from quantfuse.catalog import OpEntry
from quantfuse.custom_ops import oracle, reference
from quantfuse.custom_ops.plan import CallPlan, cached_plan, check_expert_offsets, check_outputs, make_plan

#: the catalog's tables, re-exported for the passes and the patterns
ACTIVATIONS = catalog.ACTIVATIONS
SCHEMES = catalog.SCHEMES
fused_op_name = catalog.fused_op_name

def run_reference(plan: CallPlan, x, up=None, interleaved: bool = False, scale=None):
    """The torch backend: the reference maths of one planned call, in the op's output form
    (``scale``: the static scale, or the experts ops' ``(expert_offsets, blockscale_offsets)``)."""
    y = reference.activate(plan.activation.name, x, up, interleaved, **plan.act_kwargs)
    if plan.recipe is None:
        return y
    if plan.entry.experts:
        return reference.experts_quantize(y, *scale, plan.recipe, plan.scale_shape()[0])
    return reference.quantize(y, plan.recipe, scale)


def _split(entry: OpEntry, args: tuple, up):
    """(tensor inputs after x, non-tensor parameters, up) of a call's positional args (``up``
    follows the parameters; torch.library passes it positionally). The tensor inputs are the
    static scale (or None), or the experts ops' ``(expert_offsets, blockscale_offsets)``."""
    n_tensors = len(entry.tensor_inputs)
    tensors, args = args[:n_tensors], args[n_tensors:]
    scale = tensors if entry.experts else (tensors[0] if tensors else None)
    n = len(entry.params)
    if entry.activation.gated and len(args) > n:
        up, args = args[n], args[:n]
    return scale, args, up


def _plan(entry: OpEntry, x, args, up, interleaved, recipe, act_params, make=make_plan
          ) -> tuple[CallPlan, object, object]:
    scale, params, up = _split(entry, args, up)
    return make(entry, x, params, up=up, interleaved=interleaved, scale=scale, recipe=recipe,
                act_params=act_params), scale, up


def _capturing(x: torch.Tensor) -> bool:
    # the offsets' values are read on the host (one sync): not while a CUDA graph is captured,
    # where a copy to the host is an error (warm-up runs before a capture are eager, and checked);
    # the CUDA kernel checks them itself, so the C++ dispatcher path reads none on the host
    # (docs/decisions/021-experts-kernel-checks-offsets.md)
    return x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _single(outs: tuple):
    return outs[0] if len(outs) == 1 else outs


def _run(plan: CallPlan, outs, x, up, interleaved, scale):
    """Run one planned call into ``outs`` (None: allocated here); returns the outputs."""
    if plan.entry.experts and not _capturing(x):
        check_expert_offsets(plan.entry.name, *scale, plan.tokens, plan.scale_shape()[0])
    mod = oracle.choose(plan)
    if mod is None:
        result = run_reference(plan, x, up, interleaved, scale)
        if outs is None:
            return result
        for out, r in zip(outs, result if isinstance(result, tuple) else (result,)):
            out.copy_(r)
        return outs
    if outs is None:
        outs = plan.empty_outputs(x.device)
    mod.run(plan, outs, x, up, scale)
    return _single(outs)


def _make_impl(entry: OpEntry):
    # act_params: the activation's keyword parameters (catalog Activation.params), by name
    def impl(x, *args, up=None, interleaved=False, recipe="", **act_params):
        plan, scale, up = _plan(entry, x, args, up, interleaved, recipe, act_params, cached_plan)
        return _run(plan, None, x, up, interleaved, scale)

    def fake(x, *args, up=None, interleaved=False, recipe="", **act_params):
        plan = _plan(entry, x, args, up, interleaved, recipe, act_params)[0]
        return _single(plan.empty_outputs(x.device))

    return impl, fake


def _make_out_impl(entry: OpEntry):
    """The ``out`` overload's kernels: the op's call, written into the given outputs
    (:attr:`catalog.OpEntry.out_names`), which must be exactly what the op would allocate."""
    def split(kwargs):
        outs = tuple(kwargs.pop(name) for name in entry.out_names)
        return outs, kwargs

    def impl(x, *args, up=None, interleaved=False, recipe="", **kwargs):
        outs, act_params = split(kwargs)
        plan, scale, up = _plan(entry, x, args, up, interleaved, recipe, act_params, cached_plan)
        check_outputs(entry.name, plan, outs, x.device)
        _run(plan, outs, x, up, interleaved, scale)

    def fake(x, *args, up=None, interleaved=False, recipe="", **kwargs):
        outs, act_params = split(kwargs)
        plan = _plan(entry, x, args, up, interleaved, recipe, act_params)[0]
        check_outputs(entry.name, plan, outs, x.device)

    return impl, fake


def fast_path_decision(name: str, args: tuple, kwargs: dict) -> dict | None:
    """What the C++ dispatcher path (csrc/dispatch.cpp) does with calls of this signature (of
    the op's default or ``out`` overload):
    the CUDA backend's launch arguments when the oracle picks it, else None (the Python
    kernel runs them). It plans exactly as the Python kernel does, so both agree; a bad call
    raises here and the Python kernel raises the same error to the caller."""
    entry = catalog.OPS[name]
    x, rest = args[0], args[1:]
    act_params = {p.name: kwargs[p.name] for p in entry.activation.params if p.name in kwargs}
    # ``up`` is positional in the schema, so it is in ``rest``, as in the Python kernel's call
    plan = _plan(entry, x, rest, None, kwargs.get("interleaved", False), kwargs.get("recipe", ""),
                 act_params, cached_plan)[0]
    if entry.out_names[0] in kwargs:  # the out overload: its outputs' dtype and device, once per signature
        check_outputs(entry.name, plan, tuple(kwargs[n] for n in entry.out_names), x.device)
    if oracle.backend_name(plan) != "cuda":
        return None
    from quantfuse.custom_ops import cuda_backend

    return cuda_backend.launch_args(plan, [a.name for a in OPS[name].default._schema.arguments])


#: the namespace's library; the ops are defined here rather than with ``torch.library.custom_op``,
#: whose Python wrappers (autograd, ADInplaceOrView, backend dispatch) cost tens of µs per
#: call on the host, more than the kernel at decode sizes; a plain CompositeExplicitAutograd
#: kernel is called by the dispatcher directly (vLLM registers its ops the same way)
_LIB = torch.library.Library(catalog.NAMESPACE, "FRAGMENT")


#: op name -> its Python kernel (the CompositeExplicitAutograd one; on CUDA tensors the C++
#: dispatcher path of csrc/dispatch.cpp runs first and hands over to it), for tests and benchmarks
PYTHON_KERNELS: dict[str, object] = {}


def _register_all() -> dict[str, object]:
    ops = {}
    for entry in catalog.OPS.values():
        impl, fake = _make_impl(entry)
        PYTHON_KERNELS[entry.name] = impl
        _LIB.define(entry.name + entry.schema)
        _LIB.impl(entry.name, impl, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{catalog.NAMESPACE}::{entry.name}", fake, lib=_LIB)
        out_impl, out_fake = _make_out_impl(entry)
        _LIB.define(f"{entry.name}.out{entry.out_schema}")
        _LIB.impl(f"{entry.name}.out", out_impl, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{catalog.NAMESPACE}::{entry.name}.out", out_fake, lib=_LIB)
        op = getattr(getattr(torch.ops, catalog.NAMESPACE), entry.name)
        op.__doc__ = entry.doc
        ops[entry.name] = op
    return ops


OPS = _register_all()
