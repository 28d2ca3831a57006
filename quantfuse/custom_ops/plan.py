"""The call plan: what one op call computes, checked once.

Every op of :mod:`quantfuse.custom_ops.ops` builds a :class:`CallPlan` from its
arguments with :func:`make_plan`, which is the only place a call is validated (the real
and the fake impls share it, so a bad call fails at trace time too, with the same
message). The oracle asks each backend module whether it supports the plan (its
:attr:`CallPlan.key` is the cache key of that answer) and the chosen backend runs it.

A backend module exposes:

* ``NAME``: ``"cuda"`` or ``"triton"``;
* ``is_available() -> bool``;
* ``supports(plan) -> str | None``: None when it can run every call with this plan's key,
  else a short reason (logged once); it depends only on ``plan.key``;
* ``run(plan, outputs, x, up, scale) -> None``: writes the outputs
  (:meth:`CallPlan.empty_outputs`); ``up`` is the SEPARATE layout's second tensor,
  ``scale`` the static scheme's scale tensor, or for the experts ops the pair
  ``(expert_offsets, blockscale_offsets)`` (checked by :func:`check_expert_offsets`), else None.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch._subclasses.fake_tensor import FakeTensor

from quantfuse import catalog
from quantfuse.catalog import Activation, FloorAt, Grouping, Layout, OpEntry, Recipe, ScaleLayout, StepDtype


@dataclasses.dataclass(frozen=True)
class CallPlan:
    """One op call, validated: the entry, its recipe and input layout, dtype and shapes."""

    entry: OpEntry
    #: the quantisation (None for the activation ops)
    recipe: Recipe | None
    layout: Layout
    dtype: torch.dtype
    device_type: str
    #: leading dims of the input (may be symbolic in a fake impl)
    lead: tuple
    #: width of the activation's output (the quantised row)
    hidden: int
    #: input base pointers (x, and up where given) are 16-byte aligned (False in fake impls)
    aligned: bool
    #: the activation's parameter values, in ``Activation.params`` order (GPT-OSS's alpha, limit)
    act_params: tuple[float, ...] = ()
    #: the experts ops' expert count (0 for every other op)
    num_experts: int = 0

    @property
    def activation(self) -> Activation:
        return self.entry.activation

    @property
    def act_kwargs(self) -> dict[str, float]:
        """The activation's parameters by name (the reference's and the kernels' arguments)."""
        return {p.name: v for p, v in zip(self.activation.params, self.act_params)}

    @property
    def tokens(self):
        """Rows: the leading dims flattened."""
        return math.prod(self.lead)

    @functools.cached_property
    def key(self) -> tuple:
        """What a backend's :func:`supports` answer may depend on: everything but the token count."""
        return (self.entry.name, self.recipe, self.layout.value, self.dtype, self.device_type, self.hidden,
                self.aligned, self.act_params, self.num_experts)

    def kernel_reason(self) -> str | None:
        """None when the recipe is one the kernels implement (the scheme's, for any op
        parameters and any value of its :attr:`~catalog.Scheme.kernel_fields`), else which
        recipe field they do not (a reason for the oracle)."""
        if self.recipe is None:
            return None
        free = self.entry.scheme.kernel_fields
        kernel_values = {p.field: {p.convert(v) if p.convert else v for v in p.kernel_values}
                         for p in self.entry.params if p.field and p.field not in free}
        expected = dataclasses.replace(self.entry.base, **{f: getattr(self.recipe, f) for f in (*kernel_values, *free)})
        diff = expected.differences(self.recipe)
        if diff:
            return "recipe " + ", ".join(f"{k}={_show(v)}" for k, (_, v) in diff.items()) + " is not a kernel recipe"
        for field, values in kernel_values.items():
            if getattr(self.recipe, field) not in values:
                return (f"{field}={_show(getattr(self.recipe, field))} is not one the kernels implement "
                        f"({', '.join(sorted(_show(v) for v in values))})")
        return None

    @property
    def clamps(self) -> bool:
        """Whether the kernels clamp to the E4M3 range before the cast: the recipe's clamp, or the
        running torch's cast saturating by itself (:data:`catalog.E4M3_CAST_SATURATES`), where
        the clamp changes no bit; else they cast as torch did before 2.12 (NaN past
        :attr:`catalog.Element.overflow`)."""
        return self.recipe.clamp or catalog.E4M3_CAST_SATURATES

    @functools.cached_property
    def fp8_floors(self) -> tuple[float, float, float]:
        """The floors of a dynamic FP8 recipe as the kernels apply them, fp32 values:
        ``(amax_floor, scale_floor, pow2_floor)`` for ``s = max(amax, amax_floor) / qmax``
        (rounded to the input dtype for ``StepDtype.INPUT``), then ``max(s, scale_floor)``, the
        UE8M0 rounding, ``max(s, pow2_floor)``; 0.0 where a recipe has no floor (every amax and
        scale is +0 or more, or NaN, which max keeps). The amax floor is the eps as stored in the
        step dtype (torch's clamp_min of a 16-bit tensor stores max(amax, eps) in it, and for a
        16-bit amax that is max(amax, eps rounded to the dtype)); the scale floors are fp32."""
        r = self.recipe
        eps = torch.tensor(r.eps, dtype=torch.float32)
        if r.floor_at is FloorAt.AMAX:
            step = self.dtype if r.step_dtype is StepDtype.INPUT else torch.float32
            return (float(eps.to(step)), 0.0, 0.0)
        if r.floor_at is FloorAt.SCALE:
            return (0.0, float(eps), 0.0) if r.ue8m0_after_floor else (0.0, 0.0, float(eps))
        return (0.0, 0.0, 0.0)

    def scale_shape(self) -> tuple:
        """Shape of the scale output (dynamic schemes)."""
        r = self.recipe
        groups = r.groups(self.hidden)
        if self.entry.experts:
            return experts_scale_shape(self.tokens, groups, self.num_experts)
        if r.scale_layout is ScaleLayout.SWIZZLED:
            return swizzled_scale_shape(self.tokens, groups)
        if r.grouping is Grouping.PER_TENSOR:
            return (1,)  # vLLM's and SGLang's one-element scale, whatever the input's rank
        return (*self.lead, groups)

    @functools.cached_property
    def _output_specs(self) -> tuple:
        """(shape, strides, dtype) of each output, worked out once per plan."""
        if self.recipe is None:
            shape = (*self.lead, self.hidden)
            return ((shape, _contiguous(shape), self.dtype),)
        r = self.recipe
        q_shape = (*self.lead, r.q_width(self.hidden))
        specs = [(q_shape, _contiguous(q_shape), r.element.dtype)]
        if self.entry.scheme.returns_scale:
            shape = self.scale_shape()
            if r.scale_layout is ScaleLayout.COLUMN_MAJOR:
                # [..., G] view of contiguous [G, ...] storage: what a TMA-fed GEMM reads
                lead = _contiguous(self.lead)
                strides = (*lead, math.prod(self.lead))
            else:
                strides = _contiguous(shape)
            specs.append((shape, strides, r.scale_dtype))
        return tuple(specs)

    def empty_outputs(self, device) -> tuple[torch.Tensor, ...]:
        """The op's outputs, allocated: ``(out,)``, ``(q,)`` (static) or ``(q, s)``."""
        return tuple(torch.empty_strided(shape, strides, dtype=dtype, device=device)
                     for shape, strides, dtype in self._output_specs)


def check_outputs(op: str, plan: CallPlan, outs: tuple, device) -> None:
    """The ``out`` overload's outputs are tensors on ``device`` of exactly the dtype, shape and
    strides the op would allocate (:attr:`CallPlan._output_specs`; a size-1 dim's stride is
    free); ValueError / TypeError name the first that is not."""
    for name, t, (shape, strides, dtype) in zip(plan.entry.out_names, outs, plan._output_specs):
        if not isinstance(t, torch.Tensor):
            _fail(op, TypeError, f"{name} must be a tensor, got {type(t).__name__}")
        if t.device != torch.device(device):
            _fail(op, ValueError, f"{name} is on {t.device}, x on {device}")
        if t.dtype != dtype:
            _fail(op, ValueError, f"{name} must be {dtype}, got {t.dtype}")
        if tuple(t.shape) != tuple(shape):
            _fail(op, ValueError, f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        if any(n != 1 and a != b for n, a, b in zip(shape, t.stride(), strides)):
            _fail(op, ValueError, f"{name} must have strides {tuple(strides)}, got {tuple(t.stride())}")


def _contiguous(shape) -> tuple:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _show(v) -> str:
    return v.value if hasattr(v, "value") else repr(v)


def swizzled_scale_shape(tokens, groups) -> tuple:
    """Shape of MX scales in the 128x4 tiled layout: tokens padded to a multiple of 128,
    groups to a multiple of 4 (symbolic sizes work too)."""
    rows, cols = catalog.SWIZZLE_ROWS, catalog.SWIZZLE_COLS
    return (-(-tokens // rows) * rows, -(-groups // cols) * cols)


def experts_scale_rows(tokens, num_experts):
    """Scale rows of an experts op: room for every expert's rows padded to a multiple of 128
    (:data:`catalog.SWIZZLE_ROWS`), whatever the split of ``tokens`` over ``num_experts``.

    An expert with n > 0 tokens takes ceil(n / 128) tiles, at most n + 127 rows, and at most
    min(E, T) experts have tokens, so the tiles fit in ``floor((T + 127 min(E, T)) / 128)``
    (a multiple of 128 rows; one tile for a decode step's single token). The scale buffer's
    shape must not depend on the offsets' values (the fake impl has none), and vLLM's fixed
    ``MAX_TOKENS_PER_EXPERT * topk`` rows would be megabytes of zeros to write each step."""
    rows = catalog.SWIZZLE_ROWS
    busy = torch.sym_min(tokens, num_experts) if isinstance(tokens, torch.SymInt) else min(tokens, num_experts)
    return (tokens + (rows - 1) * busy) // rows * rows


def expert_offsets(counts, dtype=torch.int32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's ``(expert_offsets, blockscale_offsets)`` ([E + 1] each) of ``counts`` tokens per
    expert, sorted by expert: expert e owns rows ``[eo[e], eo[e + 1])`` and its scales start at
    row ``bo[e]``, each expert's rows padded to a multiple of :data:`catalog.SWIZZLE_ROWS`."""
    rows = catalog.SWIZZLE_ROWS
    eo, bo = [0], [0]
    for n in counts:
        eo.append(eo[-1] + n)
        bo.append(bo[-1] + -(-n // rows) * rows)
    return torch.tensor(eo, dtype=dtype, device=device), torch.tensor(bo, dtype=dtype, device=device)


def experts_scale_shape(tokens, groups, num_experts) -> tuple:
    """Shape of an experts op's scales: :func:`experts_scale_rows` by the groups padded to 4."""
    return (experts_scale_rows(tokens, num_experts), swizzled_scale_shape(0, groups)[1])


def _fail(op: str, exc, msg: str):
    raise exc(f"quantfuse.{op}: {msg}")


def check_tensor(op: str, name: str, t, like: torch.Tensor | None = None) -> None:
    """An input tensor of a supported dtype, at least 1-d, contiguous (on ``like``'s device)."""
    if not isinstance(t, torch.Tensor):
        _fail(op, TypeError, f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in catalog.INPUT_DTYPES:
        _fail(op, TypeError, f"{name} has dtype {t.dtype}; expected one of bfloat16, float16, float32")
    if t.dim() < 1:
        _fail(op, ValueError, f"{name} must have at least one dimension")
    if not t.is_contiguous():
        _fail(op, ValueError, f"{name} must be contiguous (shape {tuple(t.shape)}, strides {t.stride()}); "
                              "call .contiguous() first")
    if like is not None:
        if t.device != like.device:
            _fail(op, ValueError, f"{name} is on {t.device}, x on {like.device}")
        if t.dtype != like.dtype:
            _fail(op, TypeError, f"{name} has dtype {t.dtype}, x {like.dtype}")
        if tuple(t.shape) != tuple(like.shape):
            _fail(op, ValueError, f"{name} has shape {tuple(t.shape)}, x {tuple(like.shape)}")


def _aligned(*tensors) -> bool:
    if any(isinstance(t, FakeTensor) or (t is not None and t.device.type == "meta") for t in tensors):
        return False  # no pointer at trace time; the real call plans again
    return all(t is None or t.numel() == 0 or t.data_ptr() % 16 == 0 for t in tensors)


def _act_params(op: str, act: Activation, given: dict | None) -> tuple[float, ...]:
    given = dict(given or {})
    values = []
    for p in act.params:
        try:
            values.append(p.check(given.pop(p.name, p.default)))
        except ValueError as e:
            _fail(op, ValueError, str(e))
    if given:
        _fail(op, TypeError, f"unexpected activation parameters {sorted(given)}; "
                             f"{act.name} takes {[p.name for p in act.params]}")
    return tuple(values)


_OFFSET_DTYPES = (torch.int32, torch.int64)


def _check_experts(op: str, x, offsets, params: tuple, kwargs: dict | None) -> int:
    """The experts ops' shapes and dtypes (values: :func:`check_expert_offsets`); the expert count."""
    if x.dim() != 2:
        _fail(op, ValueError, f"x must be 2-d [tokens sorted by expert, hidden], got shape {tuple(x.shape)}")
    values = dict(zip([p.name for p in catalog.EXPERTS_PARAMS], params))
    values.update({k: v for k, v in (kwargs or {}).items() if k in values})
    for name in ("num_experts", "topk"):
        v = values.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            _fail(op, ValueError, f"{name} must be a positive int, got {v!r}")
    e = values["num_experts"]
    if not isinstance(offsets, tuple) or len(offsets) != len(catalog.EXPERTS_TENSORS):
        _fail(op, TypeError, f"expected the tensors {', '.join(catalog.EXPERTS_TENSORS)}")
    for name, t in zip(catalog.EXPERTS_TENSORS, offsets):
        if not isinstance(t, torch.Tensor):
            _fail(op, TypeError, f"{name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in _OFFSET_DTYPES:
            _fail(op, TypeError, f"{name} has dtype {t.dtype}; expected int32 or int64")
        if tuple(t.shape) != (e + 1,):
            _fail(op, ValueError, f"{name} has shape {tuple(t.shape)}; expected [num_experts + 1] = [{e + 1}] "
                                  "(vLLM's boundaries: expert e owns [offsets[e], offsets[e + 1]))")
        if t.device != x.device:
            _fail(op, ValueError, f"{name} is on {t.device}, x on {x.device}")
        if not t.is_contiguous():
            _fail(op, ValueError, f"{name} must be contiguous")
    return e


def check_expert_offsets(op: str, expert_offsets: torch.Tensor, blockscale_offsets: torch.Tensor,
                         tokens: int, scale_rows: int) -> None:
    """The offsets' values (one device-to-host copy): expert_offsets from 0, non-decreasing, to
    ``tokens``; blockscale_offsets non-decreasing multiples of 128, each expert's padded rows
    before the next expert's first row and inside the ``scale_rows`` of the output."""
    tile = catalog.SWIZZLE_ROWS
    eo, bo = torch.stack([expert_offsets.long(), blockscale_offsets.long()]).cpu().tolist()
    if eo[0] != 0 or eo[-1] != tokens:
        _fail(op, ValueError, f"expert_offsets must run from 0 to the token count {tokens}, "
                              f"got {eo[0]} ... {eo[-1]}")
    for e, (a, b) in enumerate(zip(eo, eo[1:])):
        if b < a:
            _fail(op, ValueError, f"expert_offsets must be non-decreasing: expert {e} has [{a}, {b})")
    for e, row in enumerate(bo):
        if row < 0 or row % tile:
            _fail(op, ValueError, f"blockscale_offsets[{e}] = {row} is not a non-negative multiple of {tile} "
                                  "(each expert's scales start a swizzle tile)")
    for e in range(len(eo) - 1):
        n = eo[e + 1] - eo[e]
        end = bo[e] + -(-n // tile) * tile
        if end > bo[e + 1]:
            _fail(op, ValueError, f"blockscale_offsets: expert {e}'s {n} rows padded to {end - bo[e]} from row "
                                  f"{bo[e]} overlap the next expert's, which starts at {bo[e + 1]}")
    if bo[-1] > scale_rows:
        _fail(op, ValueError, f"blockscale_offsets end at row {bo[-1]}, beyond the {scale_rows} scale rows of "
                              f"{tokens} tokens (quantfuse.custom_ops.plan.experts_scale_rows)")


def make_plan(entry: OpEntry, x, params: tuple = (), kwargs: dict | None = None, *, up=None,
              interleaved: bool = False, scale=None, recipe: str = "", act_params: dict | None = None) -> CallPlan:
    """Validate one call and return its plan; TypeError / ValueError name the problem.

    ``params`` and ``kwargs`` are the op's non-tensor parameters (``group_size`` ...; the
    experts ops': ``num_experts, topk, scale_rounding``), ``up`` / ``interleaved`` the gated
    layouts, ``scale`` the static scheme's scale or the experts ops' ``(expert_offsets,
    blockscale_offsets)``, ``recipe`` the override of :data:`catalog.RECIPE_SCHEMA`,
    ``act_params`` the activation's parameters by name (``Activation.params``; missing ones
    take their defaults).
    """
    op = entry.name
    check_tensor(op, "x", x)
    act = entry.activation
    act_values = _act_params(op, act, act_params)
    width = x.shape[-1]
    if act.gated:
        if up is not None and interleaved:
            _fail(op, ValueError, "up and interleaved=True exclude each other (two tensors, or one interleaved)")
        if up is not None:
            check_tensor(op, "up", up, like=x)
            layout, hidden = Layout.SEPARATE, width
        else:
            layout = Layout.INTERLEAVED if interleaved else Layout.HALVES
            if width % 2:
                _fail(op, ValueError, f"last dim {width} must be even "
                                      f"({'interleaved gate/up pairs' if interleaved else '[gate | up] halves'})")
            hidden = width // 2
    else:
        layout, hidden = Layout.HALVES, width
    r = None
    experts = _check_experts(op, x, scale, params, kwargs) if entry.experts else 0
    if entry.scheme is not None:
        try:
            r = entry.recipe(*params, **(kwargs or {})).with_spec(recipe)
        except ValueError as e:
            _fail(op, ValueError, str(e))
        if r.grouping in (catalog.Grouping.PER_GROUP, catalog.Grouping.MX_BLOCK) and hidden % r.group_size:
            what = "the MX block size" if r.mx else "group_size"
            _fail(op, ValueError, f"hidden size {hidden} is not divisible by {what} {r.group_size}")
        if r.static:
            if not isinstance(scale, torch.Tensor):
                _fail(op, TypeError, f"scale must be a tensor, got {type(scale).__name__}")
            if scale.dtype != torch.float32 or scale.numel() != 1:
                _fail(op, ValueError, f"scale must be one float32 element, got {scale.dtype} "
                                      f"of shape {tuple(scale.shape)}")
            if scale.device != x.device:
                _fail(op, ValueError, f"scale is on {scale.device}, x on {x.device}")
    return CallPlan(entry=entry, recipe=r, layout=layout, dtype=x.dtype, device_type=x.device.type,
                    lead=tuple(x.shape[:-1]), hidden=hidden, aligned=_aligned(x, up), act_params=act_values,
                    num_experts=experts)


#: the plans of real (not fake) calls, by everything make_plan reads: a repeated call
#: (decode steps: the same shapes every step) skips the checks it already passed
_PLANS: dict[tuple, CallPlan] = {}
_MAX_PLANS = 4096


def _signature(t):
    return None if t is None else (t.shape, t.dtype, t.device, t.is_contiguous(), t.data_ptr() % 16 == 0)


def cached_plan(entry: OpEntry, x, params: tuple = (), *, up=None, interleaved: bool = False, scale=None,
                recipe: str = "", act_params: dict | None = None) -> CallPlan:
    """:func:`make_plan` for a real call, from a cache keyed by the call's signature (shapes,
    dtypes, devices, contiguity, alignment, parameters); errors are raised as make_plan's."""
    if not isinstance(x, torch.Tensor) or (up is not None and not isinstance(up, torch.Tensor)):
        return make_plan(entry, x, params, up=up, interleaved=interleaved, scale=scale, recipe=recipe,
                         act_params=act_params)
    if isinstance(scale, tuple):  # the experts ops' offsets
        scale_sig = tuple(_signature(t) if isinstance(t, torch.Tensor) else type(t) for t in scale)
    elif isinstance(scale, torch.Tensor):
        scale_sig = (scale.dtype, scale.numel(), scale.device)
    else:
        scale_sig = type(scale)
    key = (entry.name, _signature(x), params, _signature(up), interleaved, scale_sig, recipe,
           tuple(sorted(act_params.items())) if act_params else ())
    plan = _PLANS.get(key)
    if plan is None:
        plan = make_plan(entry, x, params, up=up, interleaved=interleaved, scale=scale, recipe=recipe,
                         act_params=act_params)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan
