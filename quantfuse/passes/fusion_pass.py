"""The pass users hand to Inductor: ``post_grad_custom_post_pass=FusionPass()``."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from quantfuse.custom_ops import oracle
from quantfuse.passes import debug, planned_outputs
from quantfuse.passes.config import FusionConfig
from quantfuse.passes.report import (CACHE_HIT, CompileReport, NearMiss, PassReport, configure_logging_from_env,
                                     log, make_rewrite)

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: the pass of the most recent compile (or direct run) in this process
_current: list["FusionPass"] = []


def last_report() -> CompileReport | None:
    """The report of the most recent ``torch.compile`` call that used a :class:`FusionPass`.

    It sums every graph that compile produced (graph breaks, recompiles) and lists each
    graph's part; a graph Inductor served from its FX graph cache appears as "not run:
    graph served from Inductor's FX graph cache". None before any compile with the pass.
    """
    if not _current:
        return None
    _current[-1]._settle()
    return _current[-1].report


def _cache_hits() -> tuple[int, int]:
    """Inductor's FX graph cache hits and AOTAutograd cache hits so far in this process."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["fxgraph_cache_hit"], counters["aot_autograd"]["autograd_cache_hit"]


def _installed(fusion: "FusionPass") -> bool:
    """Whether Inductor's config (patched by ``torch.compile``'s options) holds ``fusion``."""
    stack = [torch._inductor.config.post_grad_custom_post_pass]
    while stack:
        p = stack.pop()
        if p is fusion:
            return True
        if isinstance(p, ComposedPass):
            stack.extend((p.first, p.second))
    return False


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

        names = {n.name for n in match.nodes}
        self.report.near_misses[:] = [m for m in self.report.near_misses if m.node not in names]
        xv = params.x.meta["val"]
        self.report.rewrites.append(make_rewrite(
            pattern=spec.name, activation=spec.activation, scheme=spec.scheme,
            fused_op=f"quantfuse.{spec.fused_op}",
            source=site.source_line(params.activation, *match.nodes),
            input_shape=tuple(xv.shape), input_dtype=str(xv.dtype).replace("torch.", ""),
            params=dict(params.params)))

    def near_miss(self, spec, match, reason, activation) -> None:
        from quantfuse.patterns import site

        anchor = match.output_nodes()[0] if match.output_nodes() else match.nodes[-1]
        if (anchor.name, reason) in self._seen:
            return
        self._seen.add((anchor.name, reason))
        # the pattern knows the spelling: its reason is more specific than the recogniser's
        names = {n.name for n in match.nodes}
        self.report.near_misses[:] = [m for m in self.report.near_misses
                                      if not (m.pattern == "recognised" and m.node in names)]
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
        #: every graph of the compile this pass belongs to (one pass object per torch.compile call)
        self.report = CompileReport()
        self._runs = 0
        #: cache-hit counters when a compile holding this pass last computed its cache key;
        #: None once that graph is accounted for (the pass ran, or the counters moved)
        self._pending: tuple[int, int] | None = None

    def _settle(self) -> None:
        """Record graphs Inductor served from its cache since this pass's last cache-key lookup.

        Inductor asks every custom pass for its uuid() while computing a graph's cache
        key, and calls the pass only on a miss; a lookup followed by cache hits and no
        call means the pass never saw those graphs.
        """
        if self._pending is None:
            return
        served = max(now - then for now, then in zip(_cache_hits(), self._pending))
        if served > 0:
            self._pending = None
            self.report.graphs.extend(PassReport(ran=False) for _ in range(served))
            log.info("quantfuse: %s", CACHE_HIT)

    def _make_current(self) -> None:
        if _current and _current[-1] is not self:
            _current[-1]._settle()  # the previous compile is over: account for its graphs first
        self._settle()
        _current[:] = [self]

    def __call__(self, graph: torch.fx.Graph) -> None:
        # imported here: the pattern matcher costs ~1 s of import time nobody needs before compiling
        from quantfuse.patterns import recognise

        self._make_current()
        self._pending = None
        start = time.perf_counter()
        report = PassReport(nodes_before=len(graph.nodes))
        dump_dir = debug.dump_dir(self.config)
        before = str(graph) if dump_dir else None
        # the op form by its patterns; the native form recognised by what it computes; then the
        # native patterns for what is left (a spelling they know with a literal no recipe takes
        # gets their more specific reason), registered only if the graph still holds their ops:
        # a graph the recogniser fused whole traces no native pattern
        self._apply_patterns(graph, report, "op")
        recognise.run(graph, self.config, recognise.Reporter(report))
        self._apply_patterns(graph, report, "native")
        if self.config.planned_outputs:
            report.planned_outputs = planned_outputs.run(graph)
        graph.lint()
        report.nodes_after = len(graph.nodes)
        report.seconds = time.perf_counter() - start
        self.report.graphs.append(report)
        self._runs += 1
        if report.rewrites or report.near_misses:
            log.info("%s", report)
        else:
            log.debug("%s", report)
        if dump_dir:
            debug.dump_graphs(dump_dir, before, str(graph), report)

    def _apply_patterns(self, graph: torch.fx.Graph, report: PassReport, form: str) -> None:
        """Run the pattern groups of ``form`` that may match in ``graph`` (registering them on
        first use: the time goes to ``report.setup_seconds``)."""
        from quantfuse.patterns import act_quant

        start = time.perf_counter()
        with oracle.untracked():
            pm_passes = act_quant.passes_for(self.config.pattern_key(), graph, form)
        report.setup_seconds += time.perf_counter() - start
        act_quant._recorder.append(_ReportRecorder(report))
        try:
            for pm_pass in pm_passes:
                pm_pass.apply(graph)
        finally:
            act_quant._recorder.pop()

    def uuid(self) -> str:
        """Changes with the config and with any file of the package (Inductor's FX cache key)."""
        if _installed(self):  # Inductor is computing a cache key for a graph of our compile
            self._make_current()
            if self._pending is None:
                self._pending = _cache_hits()
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


def _with_existing(fusion: FusionPass, existing):
    if existing is None:
        existing = torch._inductor.config.post_grad_custom_post_pass
    return fusion if existing is None else ComposedPass(existing, fusion)


def inductor_options(config: FusionConfig | None = None, existing=None, mode: str | None = None,
                     dynamic: bool | None = None) -> dict:
    """Options for ``torch.compile(..., options=...)`` that run :class:`FusionPass`.

    ``existing`` (default: ``torch._inductor.config.post_grad_custom_post_pass``) is a
    post-grad pass the user already has; it runs first and quantfuse's after it.
    ``mode`` adds the options of that ``torch.compile`` mode (``"reduce-overhead"``,
    ``"max-autotune"``, ...): ``torch.compile`` refuses ``mode=`` and ``options=``
    together, and a mode is nothing but a set of Inductor options.
    """
    opts = dict(torch._inductor.list_mode_options(mode, dynamic)) if mode else {}
    opts["post_grad_custom_post_pass"] = _with_existing(FusionPass(config), existing)
    return opts


def compile(model=None, *, config: FusionConfig | None = None, mode: str | None = None,
            options: dict | None = None, dynamic: bool | None = None, **kwargs):
    """``torch.compile`` with :class:`FusionPass` added, for any ``mode``.

    ``quantfuse.compile(model, mode="reduce-overhead")`` is
    ``torch.compile(model, mode="reduce-overhead")`` plus the pass; ``options`` are
    Inductor options as for ``torch.compile`` (a ``post_grad_custom_post_pass`` among
    them runs before quantfuse's). Other keyword arguments go to ``torch.compile``.
    """
    options = dict(options or {})
    opts = inductor_options(config, existing=options.pop("post_grad_custom_post_pass", None),
                            mode=mode, dynamic=dynamic)
    pass_ = opts.pop("post_grad_custom_post_pass")
    merged = {**opts, **options, "post_grad_custom_post_pass": pass_}
    return torch.compile(model, options=merged, dynamic=dynamic, **kwargs)


@contextlib.contextmanager
def enable(config: FusionConfig | None = None):
    """Run :class:`FusionPass` in every Inductor compile inside the block, for any
    ``torch.compile`` mode: it sets Inductor's ``post_grad_custom_post_pass`` (after any
    pass already set there). Compiles happen on a compiled model's first calls (and on
    recompiles), so those calls must be inside the block::

        with quantfuse.enable():
            compiled = torch.compile(model, mode="max-autotune-no-cudagraphs")
            compiled(x)

    Yields the :class:`FusionPass`.
    """
    fusion = FusionPass(config)
    with torch._inductor.config.patch(post_grad_custom_post_pass=_with_existing(fusion, None)):
        yield fusion
