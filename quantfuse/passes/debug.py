"""Debug dumps: the graphs before and after the pass, next to depyf's decompiled code."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path

import torch

log = logging.getLogger("quantfuse")

DUMP_ENV = "QUANTFUSE_DUMP_DIR"
_override: list[str] = []


def dump_dir(config) -> str | None:
    """Folder this pass run dumps into: ``quantfuse.debug()``, then config, then env."""
    return (_override[-1] if _override else None) or config.dump_dir or os.environ.get(DUMP_ENV) or None


def dump_graphs(folder: str, before: str, after: str, report) -> Path:
    """Write ``before.txt``, ``after.txt`` and ``report.txt`` for one pass run.

    The sub-folder is ``quantfuse_pass_<time>_p<pid>_<n>``, created exclusively: runs of
    this process, of later processes and of concurrent ones never write into one folder.
    """
    out = new_run_dir(Path(folder))
    (out / "before.txt").write_text(before)
    (out / "after.txt").write_text(after)
    (out / "report.txt").write_text(str(report) + "\n")
    log.info("quantfuse: graphs and report dumped to %s", out)
    return out


def new_run_dir(folder: Path) -> Path:
    """A new, empty sub-folder of ``folder`` whose name sorts in creation order."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100000):
        out = folder / f"quantfuse_pass_{stamp}_p{os.getpid()}_{n:03d}"
        try:
            out.mkdir()  # atomic: exactly one caller creates a given name
            return out
        except FileExistsError:
            continue
    raise RuntimeError(f"no free dump folder name in {folder}")


def _caches_off():
    """Inductor's FX graph cache (and AOTAutograd's, which serves the same graphs) off:
    a graph served from a cache never reaches the pass, so nothing would be dumped."""
    patches = [torch._inductor.config.patch(fx_graph_cache=False)]
    if hasattr(torch._functorch.config, "enable_autograd_cache"):
        patches.append(torch._functorch.config.patch(enable_autograd_cache=False))
    stack = contextlib.ExitStack()
    for p in patches:
        stack.enter_context(p)
    return stack


@contextlib.contextmanager
def debug(folder: str = "./quantfuse_debug"):
    """Dump Dynamo's decompiled bytecode (depyf) and the pass's graphs into ``folder``.

    Use around the first call of the compiled model::

        with quantfuse.debug("./dump"):
            compiled(x)

    Inductor's compile caches are off inside the block, so every graph compiled there
    goes through the pass and is dumped. Without depyf installed, only quantfuse's own
    before/after graphs are written.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    _override.append(str(folder))
    try:
        try:
            import depyf
        except ImportError:
            warnings.warn("depyf is not installed: dumping quantfuse's graphs only (pip install depyf)")
            depyf_ctx = contextlib.nullcontext()
        else:
            depyf_ctx = depyf.prepare_debug(str(folder))
        with depyf_ctx, _caches_off():
            yield Path(folder)
    finally:
        _override.pop()
