"""The rewrite report: what one pass run fused, where, and what it left alone and why."""

from __future__ import annotations

import dataclasses
import logging
import os

log = logging.getLogger("quantfuse")

LOG_ENV = "QUANTFUSE_LOG"


@dataclasses.dataclass
class Rewrite:
    """One fused site."""

    pattern: str
    activation: str
    scheme: str
    fused_op: str
    source: str
    input_shape: tuple
    input_dtype: str
    params: dict
    #: the pattern family's class name, vLLM's where vLLM has one (quantfuse.quant_keys)
    vllm_pattern: str = ""
    #: the vLLM quant key the site is quantised as (``kFp8Dynamic128Sym``)
    quant_key: str = ""
    #: the family as vLLM constructs it for this site (``SiluMulBlockQuantPattern(kFp8Dynamic128Sym,
    #: is_scale_transposed=False, is_e8m0=False)``), shown in the report
    vllm_form: str = ""


def make_rewrite(pattern: str, activation: str, scheme: str, fused_op: str, source: str, input_shape: tuple,
                 input_dtype: str, params: dict) -> Rewrite:
    """A :class:`Rewrite` with its vLLM names filled in from the pair and the op parameters."""
    from quantfuse import quant_keys

    fam, key, form = quant_keys.names_for(activation, scheme, params)
    return Rewrite(pattern, activation, scheme, fused_op, source, input_shape, input_dtype, params,
                   vllm_pattern=fam, quant_key=key, vllm_form=form)


@dataclasses.dataclass
class NearMiss:
    """A site that matched a pattern's structure but was not rewritten."""

    pattern: str
    reason: str
    source: str
    node: str


@dataclasses.dataclass
class PassReport:
    """Everything one run of :class:`quantfuse.FusionPass` decided."""

    rewrites: list[Rewrite] = dataclasses.field(default_factory=list)
    near_misses: list[NearMiss] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    #: of ``seconds``: tracing and registering the pattern groups this graph needed for the first time
    setup_seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    #: quantfuse calls turned into their ``out`` overload on buffers Inductor plans
    #: (quantfuse.passes.planned_outputs)
    planned_outputs: int = 0

    #: False for a graph Inductor served from its FX graph cache (the pass did not run)
    ran: bool = True

    def summary(self) -> str:
        """One line: counts, time and node counts, or why the pass did not run."""
        if not self.ran:
            return CACHE_HIT
        planned = f", {self.planned_outputs} call(s) on planned outputs" if self.planned_outputs else ""
        return (f"{len(self.rewrites)} rewrite(s), {len(self.near_misses)} near miss(es){planned}, "
                f"{self.seconds * 1e3:.1f} ms, graph {self.nodes_before} -> {self.nodes_after} nodes")

    def entries(self, indent: str = "  ") -> list[str]:
        """The report's rewrites (three lines each: the third names the vLLM pattern and key) and near misses (two)."""
        lines = []
        for r in self.rewrites:
            params = ", ".join(f"{k}={v}" for k, v in r.params.items())
            lines.append(f"{indent}fused  {r.source}\n{indent}       {r.activation} -> {r.scheme} as "
                         f"{r.fused_op}({params}) on {r.input_dtype}{list(r.input_shape)}  [{r.pattern}]"
                         + (f"\n{indent}       as {r.vllm_form}" if r.vllm_form else ""))
        for m in self.near_misses:
            lines.append(f"{indent}kept   {m.source}\n{indent}       {m.reason}  [{m.pattern}, node {m.node}]")
        return lines

    def __str__(self) -> str:
        return "\n".join([f"quantfuse: {self.summary()}"] + self.entries())


#: what a report says for a graph Inductor loaded from its cache: custom passes do not run then
CACHE_HIT = ("not run: graph served from Inductor's FX graph cache "
             "(no rewrite or near miss recorded for it)")


@dataclasses.dataclass
class CompileReport:
    """Everything one ``torch.compile`` call's pass decided, over all of its graphs.

    A compile produces one graph per Dynamo frame (graph breaks make several) and one
    more per recompile; each appears in :attr:`graphs` in compile order, as a
    :class:`PassReport` (``ran=False`` for a graph served from Inductor's FX graph
    cache). The list attributes and counts sum over the graphs.
    """

    graphs: list[PassReport] = dataclasses.field(default_factory=list)

    @property
    def rewrites(self) -> list[Rewrite]:
        """Every rewrite of every graph, in compile order."""
        return [r for g in self.graphs for r in g.rewrites]

    @property
    def near_misses(self) -> list[NearMiss]:
        """Every near miss of every graph, in compile order."""
        return [m for g in self.graphs for m in g.near_misses]

    @property
    def seconds(self) -> float:
        """Time the pass took, summed over the graphs it ran on."""
        return sum(g.seconds for g in self.graphs)

    @property
    def nodes_before(self) -> int:
        """Node count before the pass, summed over the graphs it ran on."""
        return sum(g.nodes_before for g in self.graphs)

    @property
    def nodes_after(self) -> int:
        """Node count after the pass, summed over the graphs it ran on."""
        return sum(g.nodes_after for g in self.graphs)

    @property
    def cache_hits(self) -> int:
        """Graphs Inductor served from its FX graph cache (the pass did not see them)."""
        return sum(1 for g in self.graphs if not g.ran)

    def __str__(self) -> str:
        if len(self.graphs) == 1:
            return str(self.graphs[0])
        if not self.graphs:
            return "quantfuse: no graph compiled yet"
        cached = f", {self.cache_hits} from Inductor's FX graph cache" if self.cache_hits else ""
        lines = [f"quantfuse: {len(self.rewrites)} rewrite(s), {len(self.near_misses)} near miss(es) "
                 f"in {len(self.graphs)} graphs{cached}, {self.seconds * 1e3:.1f} ms"]
        for i, g in enumerate(self.graphs, 1):
            lines.append(f"  graph {i}: {g.summary()}")
            lines.extend(g.entries("    "))
        return "\n".join(lines)


def configure_logging_from_env() -> None:
    """``QUANTFUSE_LOG=info|debug`` prints reports on the ``quantfuse`` logger (quiet otherwise)."""
    level = os.environ.get(LOG_ENV, "").strip().upper()
    if not level:
        return
    log.setLevel(getattr(logging, level, logging.INFO))
    if not any(getattr(h, "_quantfuse", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        handler._quantfuse = True
        log.addHandler(handler)
