"""Backend oracle: which implementation runs an op call.

Order of preference is ``cuda`` (compiled ``csrc`` kernels), ``triton``, then
``torch`` (the reference maths, any device).  A backend is skipped when it is not
available (no GPU, no toolchain, failed build) or does not support the exact
parameters.  ``QUANTFUSE_BACKEND=cuda|triton|torch`` puts one backend first; if it
cannot run a call, the oracle warns once and falls back instead of crashing.

Each (op, backend, parameters) choice is logged once on the ``quantfuse.backend``
logger and counted in :data:`calls`, which tests use to assert what ran.
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
from types import ModuleType

import torch

log = logging.getLogger("quantfuse.backend")

BACKEND_ENV = "QUANTFUSE_BACKEND"
ORDER = ("cuda", "triton", "torch")
_MODULES = {"cuda": "quantfuse.custom_ops.cuda_backend", "triton": "quantfuse.custom_ops.triton_backend"}

#: Counter of ``(op, backend)`` -> number of calls, for tests and debugging.
calls: collections.Counter = collections.Counter()
_logged: set = set()
_loaded: dict[str, ModuleType | None] = {}


def _load(name: str) -> ModuleType | None:
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except Exception as e:  # a broken optional backend must never break the op
            log.warning("quantfuse backend %r cannot be imported: %s", name, e)
            _loaded[name] = None
    return _loaded[name]


def preference() -> tuple[str, ...]:
    """Backends in the order they are tried, honouring ``QUANTFUSE_BACKEND``."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not forced:
        return ORDER
    if forced not in ORDER:
        raise ValueError(f"{BACKEND_ENV}={forced!r}: expected one of {', '.join(ORDER)}")
    return (forced,) + tuple(b for b in ORDER if b != forced)


def reason_unsupported(backend: str, op: str, x: torch.Tensor, group_size: int | None) -> str | None:
    """Why ``backend`` cannot run this call, or None if it can."""
    if backend == "torch":
        return None
    if x.device.type != "cuda":
        return f"input is on {x.device.type}, the {backend} backend needs CUDA"
    mod = _load(backend)
    if mod is None or not mod.is_available():
        return f"the {backend} backend is not available on this machine"
    return mod.unsupported_reason(op, x, group_size)


def choose(op: str, x: torch.Tensor, group_size: int | None = None) -> tuple[str, ModuleType | None]:
    """Pick the backend for one call; returns ``(name, module)`` (module None for torch)."""
    order = preference()
    for name in order:
        why = reason_unsupported(name, op, x, group_size)
        key = (op, name, x.dtype, x.device.type, group_size)
        if why is None:
            if key not in _logged:
                _logged.add(key)
                log.info("%s: using the %s backend (dtype=%s, device=%s, group_size=%s)",
                         op, name, x.dtype, x.device.type, group_size)
            calls[(op, name)] += 1
            return name, (None if name == "torch" else _load(name))
        if name == order[0] and os.environ.get(BACKEND_ENV) and key not in _logged:
            _logged.add(key)
            log.warning("%s: %s=%s cannot run this call (%s); falling back", op, BACKEND_ENV, name, why)
    raise AssertionError("unreachable: the torch backend supports everything")
