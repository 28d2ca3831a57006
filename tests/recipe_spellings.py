"""Every dynamic FP8 recipe written the way model code writes it, step by step (not the reference's
code): the torch reference is compared with these on the CPU (tests/test_catalog.py), the CUDA and
Triton kernels on the GPU, where eager runs them (tests/gpu/test_recipes_gpu.py).

Plain torch only (no hypothesis), so the GPU tests can import it.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from quantfuse import catalog
from quantfuse.catalog import ApplyForm, FloorAt, Grouping, StepDtype, Ue8m0


def _pow2(s: torch.Tensor, form: Ue8m0) -> torch.Tensor:
    if form is Ue8m0.EXACT:
        # the smallest power of two >= s from frexp; 0, inf and NaN stay
        m, e = torch.frexp(s)
        keep = (m == 0.5) | (s <= 0) | ~torch.isfinite(s)
        return torch.where(keep, s, torch.ldexp(torch.ones_like(s), e))
    if form is Ue8m0.EXP2_CEIL_LOG2:
        return torch.exp2(torch.ceil(torch.log2(s)))
    return s


def spelled(y: torch.Tensor, r: catalog.Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q [T, H], s [T, G])`` of a dynamic FP8 recipe for ``y [T, H]``, as model code writes it:
    ``StepDtype.INPUT`` keeps the amax, its floor and ``amax / 448`` in the input dtype (torchao),
    then ``.float()``; a scale floor and the power-of-two rounding come after, in fp32."""
    t, h = y.shape
    if r.grouping is Grouping.PER_TENSOR:
        # one amax over the whole tensor (torchao's PerTensor, vLLM's dynamic_scaled_fp8_quant): a
        # [1] scale, as vLLM's
        q, s = spelled(y.reshape(1, t * h), dataclasses.replace(r, grouping=Grouping.PER_TOKEN))
        return q.reshape(t, h), s.reshape(1)
    g = h if r.grouping is Grouping.PER_TOKEN else r.group_size
    work = y.reshape(t, h // g, g)
    if r.step_dtype is StepDtype.FP32:
        work = work.to(torch.float32)
    amax = torch.max(torch.abs(work), dim=-1, keepdim=True).values
    if r.floor_at is FloorAt.AMAX:
        amax = torch.maximum(amax, torch.tensor(r.eps, dtype=amax.dtype, device=y.device))
    # on CUDA torch multiplies by fp32(1 / 448), on the CPU it divides: eager on each
    scale = (amax / r.element.max).float()
    if not r.ue8m0_after_floor:
        scale = _pow2(scale, r.ue8m0)
    if r.floor_at is FloorAt.SCALE:
        scale = torch.where(scale < r.eps, torch.tensor(r.eps, dtype=scale.dtype, device=y.device), scale)
    if r.ue8m0_after_floor:
        scale = _pow2(scale, r.ue8m0)
    v = y.reshape(t, h // g, g).float()
    if r.apply is ApplyForm.MUL_RATIO:
        v = v * (r.element.max / amax)  # the floored amax (fp32 steps: recipe validity)
    else:
        v = v / scale if r.apply is ApplyForm.DIV else v * (1.0 / scale)
    if r.clamp:
        v = torch.clamp(v, -r.element.max, r.element.max)
    return v.to(r.element.dtype).reshape(t, h), scale.reshape(t, h // g)


def spelled_static(y: torch.Tensor, scale: torch.Tensor, r: catalog.Recipe) -> torch.Tensor:
    """``q`` of a static FP8 recipe (a given one-element fp32 scale): ``y.float() / scale`` or
    ``y.float() * scale.reciprocal()``, clamped or not."""
    v = y.float()
    v = v / scale if r.apply is ApplyForm.DIV else v * scale.reciprocal()
    if r.clamp:
        v = v.clamp(-r.element.max, r.element.max)
    return v.to(r.element.dtype)


#: every value of each dynamic FP8 recipe field (eps: the default; other values in the GPU tests)
FP8_FIELDS = dict(floor_at=tuple(FloorAt), step_dtype=tuple(StepDtype), apply=tuple(ApplyForm),
                  clamp=(True, False), ue8m0=tuple(Ue8m0), ue8m0_after_floor=(True, False))


def fp8_recipes(bases=None):
    """Every combination of the dynamic FP8 recipe fields over ``bases`` (default: per token, per
    tensor and per group of each kernel group size), one recipe per set of bits (``ue8m0_after_floor`` only
    matters with a UE8M0 form)."""
    if bases is None:
        bases = [catalog.FP8_PER_TOKEN.base, catalog.FP8_PER_TENSOR.base] + [
            dataclasses.replace(catalog.FP8_PER_GROUP.base, group_size=g) for g in catalog.FP8_GROUP_SIZES]
    for base, values in itertools.product(bases, itertools.product(*FP8_FIELDS.values())):
        try:
            r = dataclasses.replace(base, **dict(zip(FP8_FIELDS, values)))
        except ValueError:
            continue  # a combination no recipe is (catalog.Recipe: apply=mul_ratio's conditions)
        if r.ue8m0 is Ue8m0.NONE and not r.ue8m0_after_floor:
            continue  # the same recipe as ue8m0_after_floor=True
        yield r


def scheme_of(r: catalog.Recipe) -> tuple[catalog.Scheme, tuple]:
    """The dynamic FP8 scheme of a recipe (by its grouping) and the op parameters that select it."""
    (scheme,) = (s for s in catalog.SCHEMES.values()
                 if s.base.grouping is r.grouping and not s.base.static and not s.base.mx)
    return scheme, ((r.group_size,) if r.grouping is Grouping.PER_GROUP else ())


def covering(recipes: list) -> list:
    """A few of ``recipes`` holding every pair of values of any two fields that vary among them
    (:data:`FP8_FIELDS`, the grouping, the group size): for backends that compile a kernel per
    recipe (Triton), every field value against every other's."""
    fields = list(FP8_FIELDS) + ["grouping", "group_size"]

    def pairs(r):
        return set(itertools.combinations([(f, getattr(r, f)) for f in fields], 2))
    want = set().union(*(pairs(r) for r in recipes))
    chosen = []
    while want:
        best = max(recipes, key=lambda r: len(pairs(r) & want))
        chosen.append(best)
        want -= pairs(best)
    return chosen
