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
#: each backend's modules, in order; a module that does not know an op says so in
#: ``unsupported_reason`` and the next one is asked
_MODULES = {
    "cuda": ("quantfuse.custom_ops.cuda_backend",),
    "triton": ("quantfuse.custom_ops.triton_backend", "quantfuse.custom_ops.triton_schemes"),
}

#: Counter of ``(op, backend)`` -> number of calls, for tests and debugging.
calls: collections.Counter = collections.Counter()
_logged: set = set()
_loaded: dict[str, ModuleType | None] = {}


def _load(module: str) -> ModuleType | None:
    if module not in _loaded:
        try:
            _loaded[module] = importlib.import_module(module)
        except Exception as e:  # a broken optional backend must never break the op
            log.warning("quantfuse backend module %r cannot be imported: %s", module, e)
            _loaded[module] = None
    return _loaded[module]


def preference() -> tuple[str, ...]:
    """Backends in the order they are tried, honouring ``QUANTFUSE_BACKEND``."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not forced:
        return ORDER
    if forced not in ORDER:
        raise ValueError(f"{BACKEND_ENV}={forced!r}: expected one of {', '.join(ORDER)}")
    return (forced,) + tuple(b for b in ORDER if b != forced)


def _module_for(backend: str, op: str, x: torch.Tensor, group_size: int | None) -> tuple[ModuleType | None, str | None]:
    """The module of ``backend`` that runs this call, or (None, why not)."""
    if backend == "torch":
        return None, None
    if x.device.type != "cuda":
        return None, f"input is on {x.device.type}, the {backend} backend needs CUDA"
    reasons = []
    for name in _MODULES[backend]:
        mod = _load(name)
        if mod is None or not mod.is_available():
            reasons.append(f"{name.rsplit('.', 1)[-1]} is not available on this machine")
            continue
        why = mod.unsupported_reason(op, x, group_size)
        if why is None:
            return mod, None
        reasons.append(why)
    return None, "; ".join(reasons)


def reason_unsupported(backend: str, op: str, x: torch.Tensor, group_size: int | None) -> str | None:
    """Why ``backend`` cannot run this call, or None if it can."""
    return _module_for(backend, op, x, group_size)[1]


def choose(op: str, x: torch.Tensor, group_size: int | None = None) -> tuple[str, ModuleType | None]:
    """Pick the backend for one call; returns ``(name, module)`` (module None for torch)."""
    order = preference()
    for name in order:
        mod, why = _module_for(name, op, x, group_size)
        key = (op, name, x.dtype, x.device.type, group_size)
        if why is None:
            if key not in _logged:
                _logged.add(key)
                log.info("%s: using the %s backend (dtype=%s, device=%s, group_size=%s)",
                         op, name, x.dtype, x.device.type, group_size)
            calls[(op, name)] += 1
            return name, mod
        if name == order[0] and os.environ.get(BACKEND_ENV) and key not in _logged:
            _logged.add(key)
            log.warning("%s: %s=%s cannot run this call (%s); falling back", op, BACKEND_ENV, name, why)
    raise AssertionError("unreachable: the torch backend supports everything")
