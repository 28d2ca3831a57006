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
    nodes_before: int = 0
    nodes_after: int = 0

    def __str__(self) -> str:
        lines = [f"quantfuse: {len(self.rewrites)} rewrite(s), {len(self.near_misses)} near miss(es), "
                 f"{self.seconds * 1e3:.1f} ms, graph {self.nodes_before} -> {self.nodes_after} nodes"]
        for r in self.rewrites:
            params = ", ".join(f"{k}={v}" for k, v in r.params.items())
            lines.append(f"  fused  {r.source}\n         {r.activation} -> {r.scheme} as {r.fused_op}"
                         f"({params}) on {r.input_dtype}{list(r.input_shape)}  [{r.pattern}]")
        for m in self.near_misses:
            lines.append(f"  kept   {m.source}\n         {m.reason}  [{m.pattern}, node {m.node}]")
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
