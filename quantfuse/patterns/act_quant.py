"""Activation → quantisation patterns, generated from the activation and scheme tables.

For each (activation, scheme) pair two forms are registered:

* op form: ``quantfuse.<activation>`` followed by ``quantfuse.<scheme op>``, one search
  graph per call arity (graphs drop trailing default arguments);
* native form: every activation spelling composed with every scheme spelling of
  :mod:`quantfuse.patterns.native`, for 16-bit and for fp32 input (the traces differ by
  their ``convert_element_type`` nodes).

Each spelling is traced once with Inductor's own ``fwd_only`` and put through the same
normalisation the post-grad graph has had (``view`` → ``reshape``); the activation and
scheme traces are then joined into one FX graph per pair and turned into a pattern.
:func:`widen` folds same-arity alternatives into that pattern and lets every node have
extra users: a site whose intermediate value has an outside consumer is matched, then
refused with a reason, so the report can name it instead of silently skipping it.

The matcher compares structure only (literals are ignored).  Each matched node is
paired with the traced node it matched, so :mod:`site` can check every literal of the
site against the spelling's own (eps, 448, clamp bounds, dims, dtypes) and read the
shape-dependent ones (group size, gate/up halves) itself.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import operator
import time
from typing import Callable

import torch
from torch._inductor.fx_passes.post_grad import view_to_reshape
from torch._inductor.pattern_matcher import (
    MULTIPLE,
    CallFunction,
    Match,
    MultiOutputPattern,
    PatternExpr,
    PatternMatcherPass,
    fwd_only,
    fx_to_pattern,
    register_graph_pattern,
)
from torch.fx import Node
from torch.utils._pytree import tree_leaves

from quantfuse import catalog
from quantfuse.custom_ops import ops as qops
from quantfuse.passes import profitability
from quantfuse.patterns import native, scale_layout, site
from quantfuse.patterns.op_call import positional_call

log = logging.getLogger("quantfuse.patterns")
aten = torch.ops.aten

# Constants, shapes and dtypes vary per site; site.py checks them.
#: literal types the search graphs leave open (the site reader checks them: native forms
#: against the traced spelling, op forms by reading the call's parameters); str covers
#: an op-form ``scale_rounding`` that cannot be dropped as a default because a later
#: argument is given
_IGNORED = (int, float, str, list, torch.device, torch.dtype)
_WIDTHS = {"16bit": torch.bfloat16, "fp32": torch.float32}
_EXAMPLE_HIDDEN = 256  # activation output width of the traces: 2 groups of 128, 8 MX blocks


@dataclasses.dataclass(frozen=True)
class PatternSpec:
    """One search graph: a name for the report and what the site reader needs."""

    name: str
    form: str  # "op" or "native"
    activation: str
    scheme: str
    spelling: str  # the scheme spelling (native) or "" (op form)
    width: str  # the native traces' input width ("16bit" / "fp32"), "" for the op form
    build: Callable[[], tuple[torch.fx.GraphModule, list[str]]]  # traced graph, node parts
    #: the scheme's experts variant (op form: the activation op, then ``{scheme}_experts_quant``)
    experts: bool = False

    @property
    def fused_op(self) -> str:
        """Name (without namespace) of the op the site is rewritten to."""
        return qops.fused_op_name(self.activation, self.scheme, self.experts)

    @property
    def tensor_inputs(self) -> tuple[str, ...]:
        """The search graph's inputs besides ``x`` (the experts ops' offsets)."""
        return catalog.OPS[self.fused_op].tensor_inputs


# --- tracing and joining ---------------------------------------------------------------

def _trace(fn: Callable, example: torch.Tensor, *more: torch.Tensor) -> torch.fx.GraphModule:
    gm = fwd_only(fn, [example, *more])
    view_to_reshape(gm)
    return gm


def _example_input(activation: str, dtype: torch.dtype) -> torch.Tensor:
    """An input whose activation output is _EXAMPLE_HIDDEN wide (gated activations take 2x)."""
    for hidden in (_EXAMPLE_HIDDEN, 2 * _EXAMPLE_HIDDEN):
        try:
            if qops.ACTIVATIONS[activation].out_width(hidden) == _EXAMPLE_HIDDEN:
                return torch.empty(4, hidden, dtype=dtype)
        except ValueError:
            pass
    raise AssertionError(f"no example width for {activation}")


@functools.lru_cache(maxsize=None)
def _traced_activation(activation: str, spelling: str, width: str) -> torch.fx.GraphModule:
    fn = native.ACTIVATION_SPELLINGS[activation][spelling]
    return _trace(fn, _example_input(activation, _WIDTHS[width]))


@functools.lru_cache(maxsize=None)
def _traced_scheme(scheme: str, spelling: str, width: str) -> torch.fx.GraphModule:
    fn = native.SCHEME_SPELLINGS[scheme][spelling]
    return _trace(fn, torch.empty(4, _EXAMPLE_HIDDEN, dtype=_WIDTHS[width]))


def _join(first: torch.fx.GraphModule, second: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[str]]:
    """``second(first(x))`` as one graph, and for each call node which half it came from."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    (p_first,) = [n for n in first.graph.nodes if n.op == "placeholder"]
    y = graph.graph_copy(first.graph, {p_first: x})
    (p_second,) = [n for n in second.graph.nodes if n.op == "placeholder"]
    n_first = sum(1 for n in graph.nodes if n.op == "call_function")
    out = graph.graph_copy(second.graph, {p_second: y})
    graph.output(out)
    calls = [n for n in graph.nodes if n.op == "call_function"]
    parts = ["activation"] * n_first + ["scheme"] * (len(calls) - n_first)
    return torch.fx.GraphModule(torch.nn.Module(), graph), parts


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
            stack.extend(a for a in tree_leaves((p.args, p.kwargs)) if isinstance(a, PatternExpr))


def _pair(pattern: PatternExpr, gm: torch.fx.GraphModule) -> dict[int, Node]:
    """Map each CallFunction of ``fx_to_pattern(gm)`` to the traced node it came from."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = pattern.outputs if isinstance(pattern, MultiOutputPattern) else [pattern]
    pairs: dict[int, Node] = {}
    stack = list(zip(outputs, tree_leaves(out_node.args[0])))
    while stack:
        p, n = stack.pop()
        if not isinstance(p, CallFunction) or id(p) in pairs:
            continue
        pairs[id(p)] = n
        stack.extend(zip(tree_leaves((p.args, p.kwargs)), tree_leaves((n.args, n.kwargs))))
    return pairs


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
    nodes = list(_walk(pattern))
    for p in nodes:
        p.users = MULTIPLE
        if p.fns[0] in _ALTERNATIVES:
            _set_targets(p, _ALTERNATIVES[p.fns[0]])
    for p in nodes:
        first = p.args[0] if p.args else None
        if p.fns == [aten.clamp_min.default] and isinstance(first, CallFunction) \
                and first.fns == [aten.amax.default]:
            _set_targets(p, [aten.clamp_min.default, aten.maximum.default])
            for q in nodes:
                if q.fns == [aten.div.Tensor] and q.args and q.args[0] is p:
                    _set_targets(q, [aten.div.Tensor, aten.mul.Tensor])
    return pattern


# --- the pattern table -----------------------------------------------------------------

def _op_graph(activation: str, quant_name: str, n_params: int):
    act_op = getattr(torch.ops.quantfuse, activation)
    entry = catalog.OPS[quant_name]
    quant_op = getattr(torch.ops.quantfuse, quant_name)
    params = tuple(p.example for p in entry.params[:n_params])
    x = _example_input(activation, torch.bfloat16)
    offsets = []
    if entry.experts:
        # the offsets are graph inputs of the pattern, like x; the trace runs the op, so they
        # are valid ones: every token in expert 0, whose scales take the first tile
        experts = params[0]
        offsets = [torch.tensor([0] + [end] * experts, dtype=torch.int32)
                   for end in (x.shape[0], catalog.SWIZZLE_ROWS)]
    gm = _trace(lambda x, *t: quant_op(act_op(x), *t, *params), x, *offsets)
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    return gm, ["activation"] + ["scheme"] * (len(calls) - 1)


def _op_specs(activation: str, scheme: str, quant_name: str, experts: bool) -> list[PatternSpec]:
    entry = catalog.OPS[quant_name]
    required = sum(not p.has_default for p in entry.params)
    return [PatternSpec(f"op:{activation}+{quant_name}/{n}args", "op", activation, scheme, "", "",
                        functools.partial(_op_graph, activation, quant_name, n), experts)
            for n in range(required, len(entry.params) + 1)]


def pattern_specs(activation: str, scheme: str) -> list[PatternSpec]:
    """Every search graph for one (activation, scheme) pair, op form first (the scheme's
    experts variant, where it has one, after the plain op: op form only).

    A scheme with tensor inputs (static FP8's scale) has no patterns yet: its sites are
    found by the recogniser (docs/catalog.md)."""
    quant = qops.SCHEMES[scheme]
    if quant.tensor_inputs:
        return []
    specs = _op_specs(activation, scheme, quant.unfused_name, False)
    if quant.experts_name:
        specs += _op_specs(activation, scheme, quant.experts_name, True)
    # an activation without native spellings here (GPT-OSS's swigluoai_and_mul: its native form
    # is the recogniser's) has op-form patterns only
    for act_spelling, scheme_spelling, width in itertools.product(
            native.ACTIVATION_SPELLINGS.get(activation, {}), native.SCHEME_SPELLINGS.get(scheme, {}), _WIDTHS):
        def build(a=act_spelling, s=scheme_spelling, w=width):
            return _join(_traced_activation(activation, a, w), _traced_scheme(scheme, s, w))
        specs.append(PatternSpec(f"native:{activation}[{act_spelling}]+{scheme}[{scheme_spelling}]/{width}",
                                 "native", activation, scheme, scheme_spelling, width, build))
    return specs


# --- registration ------------------------------------------------------------------------

class Recorder:
    """Receives what the handlers decide; the pass installs its report here."""

    def rewrite(self, spec: PatternSpec, match: Match, params: site.SiteParams) -> None: ...

    def near_miss(self, spec: PatternSpec, match: Match, reason: str, activation: Node) -> None: ...


_recorder: list[Recorder] = [Recorder()]


def _fused_op(spec: PatternSpec):
    return getattr(torch.ops.quantfuse, spec.fused_op).default


def _replace_traced(spec: PatternSpec, params: site.SiteParams, match: Match) -> None:
    """Replace by tracing (handles symbolic shapes; ~10 ms a site)."""
    fused, kwargs = _fused_op(spec), dict(params.params)
    shapes = [tuple(n.meta["val"].shape) for n in match.output_nodes()]
    names = list(params.inputs)

    def outputs(x, *tensors):
        # the fused op's outputs in the shapes the model's own graph had (grouped, keep-dim)
        a, k = positional_call(fused, (x,), {**kwargs, **dict(zip(names, tensors))})
        outs = fused(*a, **k)
        return tuple(t.reshape(shape) for t, shape in zip(outs, shapes))
    match.replace_by_example(outputs, [params.x, *params.inputs.values()])


def _replace_static(spec: PatternSpec, params: site.SiteParams, match: Match) -> None:
    """Insert the fused op directly (static shapes): the same graph as tracing, ~30x faster."""
    graph, fused, kwargs = match.graph, _fused_op(spec), dict(params.params)
    x_val = params.x.meta["val"]
    with x_val.fake_mode:
        vals = fused(x_val, **kwargs, **{k: n.meta["val"] for k, n in params.inputs.items()})
    with graph.inserting_before(min(match.nodes)):
        call = graph.call_function(fused, *positional_call(fused, (params.x,), {**kwargs, **params.inputs}))
        call.meta.update(val=vals, stack_trace=params.activation.meta.get("stack_trace"))
        new = []
        for i, (old, val) in enumerate(zip(match.output_nodes(), vals)):
            node = graph.call_function(operator.getitem, (call, i))
            node.meta["val"] = val
            shape = tuple(old.meta["val"].shape)
            if tuple(val.shape) != shape:
                node = graph.call_function(aten.reshape.default, (node, list(shape)))
                with x_val.fake_mode:
                    node.meta["val"] = val.reshape(shape)
            new.append(node)
    for old, node in zip(match.output_nodes(), new):
        old.replace_all_uses_with(node)
    match.erase_nodes()


def _static(match: Match) -> bool:
    return all(isinstance(d, int) for n in match.output_nodes() for d in n.meta["val"].shape)


def _register(spec: PatternSpec, config, pm_pass: PatternMatcherPass) -> None:
    gm, parts = spec.build()
    pattern = fx_to_pattern(gm, ignore_types=_IGNORED, argnames=["x", *spec.tensor_inputs])
    traced_of = _pair(pattern, gm)
    part_of = {n: part for n, part in zip([n for n in gm.graph.nodes if n.op == "call_function"], parts)}
    widen(pattern)
    decided: dict[int, tuple] = {}

    def extra_check(match: Match) -> bool:
        traced = {match.ctx.pattern_to_node[p]: traced_of[id(p)] for p in _walk(pattern)
                  if match.ctx.pattern_to_node.get(p) is not None}
        try:
            params, roles = site.read(spec, match, traced, part_of, config)
            site.check_external_users(match, match.output_nodes(), roles)
            tail = None
            if spec.form == "native" and "column_major_scales" in params.params:
                tail = scale_layout.column_major_tail(match.output_nodes()[1], set(match.nodes))
                params.params["column_major_scales"] = tail is not None
            if spec.form == "native":
                why = profitability.native_site_reason(
                    params.x.meta["val"].device.type, match.output_nodes()[0],
                    catalog.fused_op_name(spec.activation, spec.scheme), spec.scheme, params.params,
                    params.activation.meta.get("val"), config)
                if why:
                    raise site.NotFusable(why)
                site.check_kernel(spec.activation, spec.scheme, params.params, params.x.meta["val"])
        except site.NotFusable as e:
            _recorder[-1].near_miss(spec, match, str(e), site.activation_output(traced, part_of))
            return False
        decided[id(match)] = (params, tail)
        return True

    def handler(match: Match, *args, **kwargs) -> None:
        params, tail = decided.pop(id(match))
        _recorder[-1].rewrite(spec, match, params)
        (_replace_static if _static(match) else _replace_traced)(spec, params, match)
        if tail:
            scale_layout.fold(tail)

    register_graph_pattern(pattern, extra_check=extra_check, pass_dict=pm_pass)(handler)


def _group(spec: PatternSpec) -> tuple[str, str, str, str]:
    return spec.form, spec.activation, spec.scheme, spec.width


def enabled_specs(config) -> list[PatternSpec]:
    """Every search graph the config enables (nothing traced yet)."""
    native = set(config.native_fusions)
    return [s for pair in config.fusions for s in pattern_specs(*pair)
            if s.form in config.forms and (s.form == "op" or pair in native)]


@dataclasses.dataclass(frozen=True)
class GraphOps:
    """What a graph holds that a pattern group needs: call targets, cast dtypes, and the dtypes
    each target computes in (a native trace's activation ops run in its width's dtype)."""

    targets: frozenset
    casts: frozenset
    typed: frozenset  # (target, output dtype)

    @classmethod
    def of(cls, graph: torch.fx.Graph) -> "GraphOps":
        calls = [n for n in graph.nodes if n.op == "call_function"]
        vals = [(n.target, n.meta.get("val")) for n in calls]
        return cls(frozenset(n.target for n in calls),
                   frozenset(n.args[1] for n in calls if n.target == native.CAST and len(n.args) > 1),
                   frozenset((t, v.dtype) for t, v in vals if isinstance(v, torch.Tensor)))


def may_match(spec: PatternSpec, ops: GraphOps) -> bool:
    """False when the graph lacks an op every graph the spec matches has (so none can match)."""
    if spec.form == "op":
        quant = qops.SCHEMES[spec.scheme]
        quant_name = quant.experts_name if spec.experts else quant.unfused_name
        return {getattr(torch.ops.quantfuse, spec.activation).default,
                getattr(torch.ops.quantfuse, quant_name).default} <= ops.targets
    targets, casts = native.SCHEME_SIGNATURES[spec.scheme]
    if not targets <= ops.targets or not casts <= ops.casts:
        return False
    act = native.ACTIVATION_SIGNATURES[spec.activation]
    if spec.width == "fp32":  # the activation computes in fp32
        return any((t, torch.float32) in ops.typed for t in act)
    # a 16-bit trace casts the activation up (y.float()); the matcher ignores dtypes, so the cast
    # is what counts (a float64 site matches it too, and is reported with the site reader's reason)
    return torch.float32 in ops.casts and bool(act & ops.targets)


@functools.lru_cache(maxsize=256)
def _group_pass(config, group: tuple[str, str, str, str]) -> PatternMatcherPass:
    """The patterns of one (form, activation, scheme, width) group, traced and registered once."""
    start = time.perf_counter()
    pm_pass = PatternMatcherPass(pass_name=f"quantfuse:{'/'.join(g for g in group if g)}")
    specs = [s for s in enabled_specs(config) if _group(s) == group]
    for spec in specs:
        _register(spec, config, pm_pass)
    log.debug("registered %d quantfuse patterns for %s in %.3f s", len(specs), group, time.perf_counter() - start)
    return pm_pass


def passes_for(config, graph: torch.fx.Graph, form: str | None = None) -> list[PatternMatcherPass]:
    """The pattern passes that can match in ``graph`` (``form``: of that form only), registered on
    first use: a graph's first compile traces only the groups whose ops it holds (op form first,
    as registered)."""
    ops = GraphOps.of(graph)
    groups = dict.fromkeys(_group(s) for s in enabled_specs(config)
                           if (form is None or s.form == form) and may_match(s, ops))
    return [_group_pass(config, g) for g in groups]


@functools.lru_cache(maxsize=8)
def build_pass(config) -> PatternMatcherPass:
    """Trace and register every enabled pattern in one pass (cached): the benchmarks' count; the
    fusion pass registers per group with :func:`passes_for`."""
    start = time.perf_counter()
    pm_pass = PatternMatcherPass(pass_name="quantfuse")
    specs = enabled_specs(config)
    for spec in specs:
        _register(spec, config, pm_pass)
    log.debug("registered %d quantfuse patterns in %.3f s", len(specs), time.perf_counter() - start)
    return pm_pass
