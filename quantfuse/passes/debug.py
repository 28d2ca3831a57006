"""Debug dumps: the graphs before and after the pass, next to depyf's decompiled code."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import warnings
from pathlib import Path

log = logging.getLogger("quantfuse")

DUMP_ENV = "QUANTFUSE_DUMP_DIR"
_override: list[str] = []
_counter = itertools.count()


def dump_dir(config) -> str | None:
    """Folder this pass run dumps into: ``quantfuse.debug()``, then config, then env."""
    return (_override[-1] if _override else None) or config.dump_dir or os.environ.get(DUMP_ENV) or None


def dump_graphs(folder: str, before: str, after: str, report) -> Path:
    """Write ``before.txt``, ``after.txt`` and ``report.txt`` for one pass run."""
    out = Path(folder) / f"quantfuse_pass_{next(_counter):03d}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "before.txt").write_text(before)
    (out / "after.txt").write_text(after)
    (out / "report.txt").write_text(str(report) + "\n")
    log.info("quantfuse: graphs and report dumped to %s", out)
    return out


@contextlib.contextmanager
def debug(folder: str = "./quantfuse_debug"):
    """Dump Dynamo's decompiled bytecode (depyf) and the pass's graphs into ``folder``.

    Use around the first call of the compiled model::

        with quantfuse.debug("./dump"):
            compiled(x)

    Without depyf installed, only quantfuse's own before/after graphs are written.
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
        with depyf_ctx:
            yield Path(folder)
    finally:
        _override.pop()
