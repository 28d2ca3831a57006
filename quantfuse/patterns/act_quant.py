"""Activation → quantisation patterns, generated from the activation and scheme tables.

For each (activation, scheme) pair two forms are registered:

* op form: ``quantfuse.<activation>`` followed by ``quantfuse.<scheme op>``;
* native form: every combination of the plain-torch spellings in
  :mod:`quantfuse.patterns.native`, traced once for 16-bit and once for fp32 input
  (the traces differ by the ``convert_element_type`` nodes).

Search graphs are traced with Inductor's own ``fwd_only`` and then put through the
same normalisation the post-grad graph has had (``view`` → ``reshape``), so they
match real graphs.  :func:`widen` then folds same-arity alternatives into one
pattern and lets every node have extra users: a site whose intermediate value has
an outside consumer is matched, then refused by the site reader with a reason, so
the report can name it instead of silently skipping it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from typing import Callable

import torch
from torch._inductor.fx_passes.post_grad import view_to_reshape
from torch._inductor.pattern_matcher import (
    MULTIPLE,
    CallFunction,
    KeywordArg,
    Match,
    MultiOutputPattern,
    PatternExpr,
    PatternMatcherPass,
    fwd_only,
    fx_to_pattern,
    register_graph_pattern,
)

from quantfuse.custom_ops import ops as qops
from quantfuse.patterns import native, scale_layout, site

log = logging.getLogger("quantfuse.patterns")
aten = torch.ops.aten

# Constants, shapes and dtypes vary per site; site.py checks them.
_IGNORED = (int, float, list, torch.device, torch.dtype)
_WIDTHS = {"16bit": torch.bfloat16, "fp32": torch.float32}


@dataclasses.dataclass(frozen=True)
class PatternSpec:
    """One search graph and how to read a site it matched."""

    name: str
    form: str  # "op" or "native"
    activation: str
    scheme: str
    search_fn: Callable
    example_input: Callable[[], torch.Tensor]
    reader: Callable  # (match, config) -> (SiteParams, roles)


# --- pattern construction --------------------------------------------------------------

def _walk(pattern: PatternExpr):
    seen, stack = set(), [pattern]
    while stack:
        p = stack.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        if isinstance(p, MultiOutputPattern):
            stack.extend(p.outputs)
        elif isinstance(p, CallFunction):
            yield p
            stack.extend(a for a in torch.utils._pytree.tree_leaves((p.args, p.kwargs))
                         if isinstance(a, PatternExpr))


def _set_targets(p: CallFunction, targets: list) -> None:
    p.fns = list(targets)
    p.fns_set = type(p.fns_set)(targets)


#: same-arity alternatives: a pattern node calling the key also matches the others
_ALTERNATIVES = {
    aten.reshape.default: [aten.reshape.default, aten.view.default],
    aten.split.Tensor: [aten.split.Tensor, aten.split_with_sizes.default],
}


def widen(pattern: PatternExpr) -> PatternExpr:
    """Fold spelling alternatives into ``pattern`` and allow extra users everywhere.

    ``clamp_min(amax, eps)`` also matches ``maximum(amax, full(eps))`` and the scale's
    ``div(., 448)`` also matches ``mul(., 1/448)``; :mod:`site` checks the constants.
    """
    for p in _walk(pattern):
        p.users = MULTIPLE
        if p.fns[0] in _ALTERNATIVES:
            _set_targets(p, _ALTERNATIVES[p.fns[0]])
        first = p.args[0] if p.args else None
        if p.fns == [aten.clamp_min.default] and isinstance(first, CallFunction) \
                and first.fns == [aten.amax.default]:
            _set_targets(p, [aten.clamp_min.default, aten.maximum.default])
            for q in _walk(pattern):
                if q.fns == [aten.div.Tensor] and q.args[0] is p:
                    _set_targets(q, [aten.div.Tensor, aten.mul.Tensor])
    return pattern


def trace_pattern(spec: PatternSpec) -> PatternExpr:
    """Trace ``spec.search_fn`` as Inductor's post-grad graph would show it."""
    gm = fwd_only(spec.search_fn, [spec.example_input()])
    view_to_reshape(gm)
    return widen(fx_to_pattern(gm, ignore_types=_IGNORED, argnames=["x"]))


# --- the pattern table -----------------------------------------------------------------

def _example(dtype: torch.dtype, hidden: int = 512) -> Callable[[], torch.Tensor]:
    return lambda: torch.empty(4, hidden, dtype=dtype)


def _native_fp8_group_reader(match, config):
    return site.read_native_fp8_group(match, config.torch_dtypes, config.group_sizes)


def _op_fp8_group_reader(match, config):
    quant_op = getattr(torch.ops.quantfuse, qops.SCHEMES["fp8_per_group"].unfused_name).default
    return site.read_op_fp8_group(match, quant_op, config.torch_dtypes, config.group_sizes)


def _op_search_fn(activation: str, scheme: str, n_params: int) -> Callable:
    act_op = getattr(torch.ops.quantfuse, activation)
    quant_op = getattr(torch.ops.quantfuse, qops.SCHEMES[scheme].unfused_name)
    params = qops.SCHEMES[scheme].example_params[:n_params]
    return lambda x: quant_op(act_op(x), *params)


def _native_search_fn(split_fn, mul_fn, rnd_fn) -> Callable:
    return lambda x: native.fp8_group_quant(mul_fn(*split_fn(x)), 128, rnd_fn)


def pattern_specs(activation: str = "silu_and_mul", scheme: str = "fp8_per_group") -> list[PatternSpec]:
    """Every search graph for one (activation, scheme) pair, op form first."""
    quant = qops.SCHEMES[scheme]
    specs = [PatternSpec(f"op:{activation}+{quant.unfused_name}/{n}args", "op", activation, scheme,
                         _op_search_fn(activation, scheme, n), _example(torch.bfloat16), _op_fp8_group_reader)
             for n in range(1, len(quant.example_params) + 1)]
    for (split, split_fn), (mul, mul_fn), (rnd, rnd_fn), (width, dtype) in itertools.product(
            native.GATE_UP_SPLITS.items(), native.SILU_MULS.items(),
            native.SCALE_ROUNDINGS.items(), _WIDTHS.items()):
        specs.append(PatternSpec(f"native:{activation}[{split},{mul}]+fp8_group[scale={rnd}]/{width}",
                                 "native", activation, scheme, _native_search_fn(split_fn, mul_fn, rnd_fn),
                                 _example(dtype), _native_fp8_group_reader))
    return specs


# --- registration ------------------------------------------------------------------------

class Recorder:
    """Receives what the handlers decide; the pass installs its report here."""

    def rewrite(self, spec: PatternSpec, match: Match, params: site.SiteParams) -> None: ...

    def near_miss(self, spec: PatternSpec, match: Match, reason: str) -> None: ...


_recorder: list[Recorder] = [Recorder()]


def _replacement(spec: PatternSpec, params: site.SiteParams, match: Match) -> Callable:
    fused = getattr(torch.ops.quantfuse, qops.fused_op_name(spec.activation, spec.scheme))
    args = (params.group_size, params.column_major_scales, params.use_ue8m0)
    if spec.form == "op":
        return lambda x: fused(x, *args)
    q_shape = tuple(match.output_nodes()[0].meta["val"].shape[-2:])

    def native_outputs(x):
        q, s = fused(x, *args)
        return q.unflatten(-1, q_shape), s.unsqueeze(-1)
    return native_outputs


def _register(spec: PatternSpec, config, pm_pass: PatternMatcherPass) -> None:
    pattern = trace_pattern(spec)
    decided: dict[int, site.SiteParams] = {}

    def extra_check(match: Match) -> bool:
        try:
            params, roles = spec.reader(match, config)
            site.check_external_users(match, match.output_nodes(), roles)
        except site.NotFusable as e:
            _recorder[-1].near_miss(spec, match, str(e))
            return False
        tail = None
        if spec.form == "native":
            tail = scale_layout.column_major_tail(match.output_nodes()[1], set(match.nodes))
            params.column_major_scales = tail is not None
        decided[id(match)] = (params, tail)
        return True

    def handler(match: Match, *args, **kwargs) -> None:
        params, tail = decided.pop(id(match))
        _recorder[-1].rewrite(spec, match, params)
        match.replace_by_example(_replacement(spec, params, match), [params.x])
        if tail:
            scale_layout.fold(tail)

    register_graph_pattern(pattern, extra_check=extra_check, pass_dict=pm_pass)(handler)


@functools.lru_cache(maxsize=8)
def build_pass(config) -> PatternMatcherPass:
    """Trace and register every enabled pattern once per config (cached)."""
    start = time.perf_counter()
    pm_pass = PatternMatcherPass(pass_name="quantfuse")
    specs = [s for pair in config.fusions for s in pattern_specs(*pair) if s.form in config.forms]
    for spec in specs:
        _register(spec, config, pm_pass)
    log.debug("registered %d quantfuse patterns in %.3f s", len(specs), time.perf_counter() - start)
    return pm_pass
