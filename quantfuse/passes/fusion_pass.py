"""The pass users hand to Inductor: ``post_grad_custom_post_pass=FusionPass()``."""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from quantfuse.custom_ops import ops as qops
from quantfuse.passes import debug
from quantfuse.passes.config import FusionConfig
from quantfuse.passes.report import NearMiss, PassReport, Rewrite, configure_logging_from_env, log

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_last_report: list[PassReport] = []


def last_report() -> PassReport | None:
    """The report of the most recent :class:`FusionPass` run in this process."""
    return _last_report[-1] if _last_report else None


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    """Hash of every source file of the package (kernels included), read once per process."""
    digest = hashlib.sha256()
    roots = [_PACKAGE_ROOT, _PACKAGE_ROOT.parent / "csrc"]
    for path in sorted(p for root in roots if root.is_dir() for p in root.rglob("*")
                       if p.suffix in (".py", ".cu", ".cuh", ".cpp", ".h")):
        digest.update(str(path.relative_to(path.parents[1])).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class _ReportRecorder:
    """Turns the pattern handlers' decisions into report entries (see ``act_quant.Recorder``)."""

    def __init__(self, report: PassReport):
        self.report = report
        self._seen: set[tuple[str, str]] = set()

    def rewrite(self, spec, match, params) -> None:
        from quantfuse.patterns import site

        xv = params.x.meta["val"]
        self.report.rewrites.append(Rewrite(
            pattern=spec.name, activation=spec.activation, scheme=spec.scheme,
            fused_op=f"quantfuse.{qops.fused_op_name(spec.activation, spec.scheme)}",
            source=site.source_line(params.activation, *match.nodes),
            input_shape=tuple(xv.shape), input_dtype=str(xv.dtype).replace("torch.", ""),
            params=dict(params.params)))

    def near_miss(self, spec, match, reason, activation) -> None:
        from quantfuse.patterns import site

        anchor = match.output_nodes()[0] if match.output_nodes() else match.nodes[-1]
        if (anchor.name, reason) in self._seen:
            return
        self._seen.add((anchor.name, reason))
        self.report.near_misses.append(NearMiss(pattern=spec.name, reason=reason,
                                                source=site.source_line(activation, *match.nodes),
                                                node=anchor.name))


class FusionPass(CustomGraphPass):
    """Replaces activation → quantisation subgraphs with one fused quantfuse op.

    Use as ``torch.compile(model, options={"post_grad_custom_post_pass": FusionPass()})``
    or through :func:`quantfuse.inductor_options`.  Sites that are not supported or
    not safe (extra consumers, unsupported group size or dtype, non-contiguous input)
    are left as they are and listed in :attr:`report` as near misses.
    """

    def __init__(self, config: FusionConfig | None = None):
        configure_logging_from_env()
        self.config = config or FusionConfig()
        self.report: PassReport | None = None
        self._runs = 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        # imported here: the pattern matcher costs ~1 s of import time nobody needs before compiling
        from quantfuse.patterns import act_quant, recognise

        start = time.perf_counter()
        pm_pass = act_quant.build_pass(self.config.pattern_key())
        report = PassReport(nodes_before=len(graph.nodes))
        dump_dir = debug.dump_dir(self.config)
        before = str(graph) if dump_dir else None
        act_quant._recorder.append(_ReportRecorder(report))
        try:
            pm_pass.apply(graph)
        finally:
            act_quant._recorder.pop()
        # what the patterns did not match, recognised by what it computes
        recognise.run(graph, self.config, recognise.Reporter(report))
        graph.lint()
        report.nodes_after = len(graph.nodes)
        report.seconds = time.perf_counter() - start
        self.report = report
        _last_report.append(report)
        del _last_report[:-1]
        self._runs += 1
        if report.rewrites or report.near_misses:
            log.info("%s", report)
        else:
            log.debug("%s", report)
        if dump_dir:
            debug.dump_graphs(dump_dir, before, str(graph), report)

    def uuid(self) -> str:
        """Changes with the config and with any file of the package (Inductor's FX cache key)."""
        key = f"{self.config.pattern_key()!r}|{_source_hash()}|{torch.__version__}"
        return hashlib.sha256(key.encode()).hexdigest()


class ComposedPass(CustomGraphPass):
    """Runs a user's existing post-grad pass, then quantfuse's."""

    def __init__(self, first, second: FusionPass):
        self.first, self.second = first, second

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.first(graph)
        self.second(graph)

    def uuid(self):
        first = self.first.uuid() if hasattr(self.first, "uuid") else None
        if first is None:
            return None  # an uncacheable pass makes the composition uncacheable too
        return hashlib.sha256(f"{first}|{self.second.uuid()}".encode()).hexdigest()


def inductor_options(config: FusionConfig | None = None, existing=None) -> dict:
    """Options for ``torch.compile(..., options=...)`` that run :class:`FusionPass`.

    ``existing`` (default: ``torch._inductor.config.post_grad_custom_post_pass``) is a
    post-grad pass the user already has; it runs first and quantfuse's after it.
    """
    fusion = FusionPass(config)
    if existing is None:
        existing = torch._inductor.config.post_grad_custom_post_pass
    return {"post_grad_custom_post_pass": fusion if existing is None else ComposedPass(existing, fusion)}
