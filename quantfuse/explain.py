"""What the pass would fuse in a model, and why not: :func:`explain` and :func:`list_patterns`.

:func:`explain` runs Dynamo and Inductor on the model up to the post-grad passes, runs
:class:`quantfuse.FusionPass` on each graph there, and stops before code generation
(each graph then runs eagerly, so the model's own Python runs to the end and every
graph after a graph break is explained too). Nothing is compiled, cached or kept.
"""

from __future__ import annotations

import dataclasses

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from quantfuse import quant_keys
from quantfuse.passes import fusion_pass, profitability
from quantfuse.passes.config import FusionConfig
from quantfuse.passes.report import PassReport

FUSED, NEAR_MISS, KEPT_FOR_SPEED = "fused", "near miss", profitability.KEPT_FOR_SPEED

#: why a native site of a pair outside ``FusionConfig.native_fusions`` is left to Inductor
_SPEED_REASON = ("the native form of {act} -> {scheme} is not in FusionConfig.native_fusions: there "
                 "Inductor's own code for the plain-PyTorch graph was as fast as the fused kernel "
                 "(benchmarks/RESULTS.md); add the pair to native_fusions to fuse it anyway")
#: the near-miss reason of an activation that autograd saves for backward
_SAVED_OUTPUT = "has a consumer outside the pattern: output"
_GRAD_HINT = ("grad mode is on, so autograd saves the activation for backward (an extra consumer); "
              "run the model under torch.no_grad() or torch.inference_mode() to fuse it")


@dataclasses.dataclass
class Site:
    """One candidate site of :func:`explain`: fused, a near miss, or kept for speed."""

    status: str  # FUSED, NEAR_MISS or KEPT_FOR_SPEED
    source: str  # "file:line in function: code" of the model's line
    activation: str
    scheme: str
    pattern: str
    graph: int  # 1-based index of the graph (graph breaks make several)
    fused_op: str | None = None
    params: dict = dataclasses.field(default_factory=dict)
    reason: str = ""
    hint: str = ""
    #: a fused site as vLLM names it (``Rewrite.vllm_form``: pattern family and quant key)
    vllm_form: str = ""

    def __str__(self) -> str:
        head = f"{self.status:<15}{self.source}"
        if self.status == FUSED:
            params = ", ".join(f"{k}={v}" for k, v in self.params.items())
            body = f"{self.activation} -> {self.scheme} as {self.fused_op}({params})"
        else:
            body = self.reason
        lines = [head, f"{'':15}{body}  [{self.pattern}]"]
        if self.vllm_form:
            lines.append(f"{'':15}as {self.vllm_form}")
        if self.hint:
            lines.append(f"{'':15}hint: {self.hint}")
        return "\n".join(lines)


@dataclasses.dataclass
class Explanation:
    """What :func:`explain` found: every candidate site of every graph, in graph order."""

    sites: list[Site]
    graphs: int
    grad_enabled: bool

    def by_status(self, status: str) -> list[Site]:
        """The sites with ``status`` (``"fused"``, ``"near miss"`` or ``"kept for speed"``)."""
        return [s for s in self.sites if s.status == status]

    def __str__(self) -> str:
        counts = ", ".join(f"{len(self.by_status(s))} {label}" for s, label in (
            (FUSED, FUSED), (NEAR_MISS, "near miss(es)"), (KEPT_FOR_SPEED, KEPT_FOR_SPEED)))
        mode = "grad enabled" if self.grad_enabled else "no grad"
        lines = [f"quantfuse explain: {len(self.sites)} candidate site(s) in {self.graphs} graph(s) "
                 f"({mode}): {counts}"]
        if not self.sites:
            lines.append("  no activation -> quantization site in this model (quantfuse.list_patterns() "
                         "lists what is recognised)")
        for s in self.sites:
            prefix = f"  graph {s.graph}: " if self.graphs > 1 else "  "
            lines.append(prefix + str(s).replace("\n", "\n" + " " * len(prefix)))
        return "\n".join(lines)


class _Stop(Exception):
    """Raised by the explain pass: the graph is read, skip code generation."""


def _copy(graph: torch.fx.Graph) -> torch.fx.GraphModule:
    copy = torch.fx.Graph()
    copy.output(copy.graph_copy(graph, {}))
    return torch.fx.GraphModule(graph.owning_module or torch.nn.Module(), copy)


def _slow_pairs(config: FusionConfig) -> tuple[tuple[str, str], ...]:
    """Pairs the config fuses in op form only: their native sites are kept for speed."""
    if "native" not in config.forms:
        return ()
    return tuple(p for p in config.fusions if p not in set(config.native_fusions))


class _ExplainPass(CustomGraphPass):
    def __init__(self, config: FusionConfig, out: Explanation):
        self.config, self.out = config, out

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.out.graphs += 1
        slow = _slow_pairs(self.config)
        copy = _copy(graph) if slow else None
        fusion = fusion_pass.FusionPass(self.config)
        fusion(graph)
        report = fusion.report.graphs[-1]
        self._add(report)
        if copy is not None:
            wide = fusion_pass.FusionPass(dataclasses.replace(self.config, fusions=slow, native_fusions=slow,
                                                              forms=("native",)))
            wide(copy.graph)
            # a site the real config only reports (the recogniser sees its cast, the pair is
            # off) but that the pair's patterns fuse is kept for speed, not a near miss
            kept = {r.source for r in wide.report.graphs[-1].rewrites}
            self.out.sites[:] = [s for s in self.out.sites if not (
                s.graph == self.out.graphs and s.status == NEAR_MISS and s.source in kept)]
            seen = {s.source for s in self.out.sites if s.graph == self.out.graphs}
            for r in wide.report.graphs[-1].rewrites:
                if r.source not in seen:
                    self.out.sites.append(Site(KEPT_FOR_SPEED, r.source, r.activation, r.scheme, r.pattern,
                                               self.out.graphs, reason=_SPEED_REASON.format(
                                                   act=r.activation, scheme=r.scheme)))
            # a site of such a pair that would not fuse anyway: say why not, as any near miss
            self._add(dataclasses.replace(wide.report.graphs[-1], rewrites=[]), skip=seen)
        raise _Stop

    def _add(self, report: PassReport, skip: set[str] = frozenset()) -> None:
        n = self.out.graphs
        for r in report.rewrites:
            self.out.sites.append(Site(FUSED, r.source, r.activation, r.scheme, r.pattern, n,
                                       fused_op=r.fused_op, params=dict(r.params), vllm_form=r.vllm_form))
        for m in report.near_misses:
            if m.source in skip:
                continue
            act, scheme = _pair_of(m.pattern)
            hint = _GRAD_HINT if self.out.grad_enabled and _SAVED_OUTPUT in m.reason else ""
            status = KEPT_FOR_SPEED if m.reason.startswith(profitability.KEPT_FOR_SPEED) else NEAR_MISS
            self.out.sites.append(Site(status, m.source, act, scheme, m.pattern, n, reason=m.reason, hint=hint))

    def uuid(self):
        return None  # never cached: the pass must see every graph


def _pair_of(pattern: str) -> tuple[str, str]:
    """(activation, scheme) named by a pattern name (``form:act[...]+scheme[...]/...``)."""
    from quantfuse.custom_ops import ops as qops

    body = pattern.split(":", 1)[-1]
    act = body.split("[", 1)[0].split("+", 1)[0]
    rest = body.split("+", 1)[-1].split("[", 1)[0].split("/", 1)[0]
    scheme = next((name for name, s in qops.SCHEMES.items() if rest in (name, s.unfused_name)), rest)
    return act, scheme


def _stopped(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, _Stop):
            return True
        e = e.__cause__ or e.__context__
    return False


def explain(model, *example_inputs, config: FusionConfig | None = None, dynamic: bool | None = None,
            **kwargs) -> Explanation:
    """Every activation → quantization site of ``model(*example_inputs)`` and what the pass
    does with it: fused (as which op, with which parameters), a near miss (why not), or
    kept for speed (Inductor's own code is as fast there). Print the result to read it.

    Runs Dynamo and Inductor up to the post-grad passes, no code generation; the model
    runs eagerly once. Grad mode is the caller's: call it under ``torch.no_grad()`` to see
    what an inference compile fuses. ``kwargs`` go to ``model`` as keyword inputs.
    """
    from torch._inductor.compile_fx import compile_fx

    config = config or FusionConfig()
    out = Explanation(sites=[], graphs=0, grad_enabled=torch.is_grad_enabled())

    def backend(gm: torch.fx.GraphModule, inputs):
        patches = {"post_grad_custom_post_pass": _ExplainPass(config, out), "fx_graph_cache": False}
        try:
            with _autograd_cache_off():
                compile_fx(gm, inputs, config_patches=patches)
        except Exception as e:  # noqa: BLE001 - only our own stop is expected
            if not _stopped(e):
                raise
        return gm.forward

    current = list(fusion_pass._current)  # explaining must not change what last_report() shows
    try:
        torch.compile(model, backend=backend, dynamic=dynamic)(*example_inputs, **kwargs)
    finally:
        fusion_pass._current[:] = current
    out.sites.sort(key=_site_order)
    return out


def _site_order(site: Site) -> tuple:
    """Graph, then file and line: the order a reader walks the model in."""
    where = site.source.split(" in ", 1)[0]
    path, _, line = where.rpartition(":")
    return (site.graph, path, int(line) if line.isdigit() else 0)


def _autograd_cache_off():
    if hasattr(torch._functorch.config, "enable_autograd_cache"):
        return torch._functorch.config.patch(enable_autograd_cache=False)
    import contextlib

    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class PatternFamily:
    """One registered pattern family: an (activation, scheme) pair, its search graphs and its
    vLLM-style name (:class:`quantfuse.quant_keys.FamilyName`)."""

    #: names of the op-form patterns (quantfuse ops called by the model)
    op_patterns: tuple[str, ...]
    #: names of the native-form patterns (plain PyTorch spellings)
    native_patterns: tuple[str, ...]
    #: whether the default config fuses the native form too (else op form only)
    native_by_default: bool
    #: the pair under its class name, vLLM's where vLLM has one (``FusionConfig(patterns=[name])``)
    family: quant_keys.FamilyName

    @property
    def activation(self) -> str:
        return self.family.activation

    @property
    def scheme(self) -> str:
        return self.family.scheme

    @property
    def fused_op(self) -> str:
        """The fused op's name (without namespace)."""
        return self.family.fused_op

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def quant_keys(self) -> tuple[str, ...]:
        """The vLLM quant keys it fuses, by name (``FusionConfig(quant_keys=[...])``)."""
        return tuple(k.name for k in self.family.keys)

    @property
    def in_vllm(self) -> bool:
        """vLLM has a pattern class of this name (else: quantfuse's, in vLLM's style)."""
        return self.family.in_vllm

    def __str__(self) -> str:
        native = f"{len(self.native_patterns)} native spelling(s)" + ("" if self.native_by_default
                                                                     else " (off by default)")
        origin = "vLLM's name" if self.in_vllm else "vLLM-style name"
        return (f"{self.activation} -> {self.scheme}: quantfuse.{self.fused_op}; "
                f"{len(self.op_patterns)} op-form pattern(s), {native}; "
                f"{self.name} ({origin}) for {', '.join(self.quant_keys)}")


def list_patterns() -> list[PatternFamily]:
    """The pattern families the pass registers, one per (activation, scheme) pair, with their
    vLLM-style class names and quant keys (:mod:`quantfuse.quant_keys`)."""
    from quantfuse.passes.config import ALL_PAIRS, PROFITABLE_NATIVE
    from quantfuse.patterns import act_quant

    families = []
    for act, scheme in ALL_PAIRS:
        specs = act_quant.pattern_specs(act, scheme)
        families.append(PatternFamily(
            op_patterns=tuple(s.name for s in specs if s.form == "op"),
            native_patterns=tuple(s.name for s in specs if s.form == "native"),
            native_by_default=(act, scheme) in PROFITABLE_NATIVE, family=quant_keys.family(act, scheme)))
    return families
