"""Backend oracle: which implementation runs a planned op call.

Order of preference is ``cuda`` (compiled ``csrc`` kernels), ``triton``, then ``torch``
(the reference maths, any device). A backend is skipped when it is not available (no
GPU, no toolchain, failed build) or does not support the plan (its ``supports`` gives the
reason). ``QUANTFUSE_BACKEND=cuda|triton|torch`` puts one backend first; if it cannot run a
call, the oracle warns once and falls back instead of crashing.

The choice depends only on the plan's key (:attr:`CallPlan.key`), so it is made once per
key and cached: the per-call cost is one dict lookup. Each choice is logged once on the
``quantfuse.backend`` logger. Calls that run in Python are counted in :data:`calls`; calls
the CUDA extension runs from the dispatcher, in C++ (``cuda_backend.dispatch_counts``), are
not; :func:`call_counts` adds both, which tests use to assert what ran.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import logging
import os
from types import ModuleType

from quantfuse.custom_ops.plan import CallPlan

log = logging.getLogger("quantfuse.backend")

BACKEND_ENV = "QUANTFUSE_BACKEND"
ORDER = ("cuda", "triton", "torch")
#: the module of each kernel backend (the protocol: quantfuse.custom_ops.plan)
MODULES = {"cuda": "quantfuse.custom_ops.cuda_backend", "triton": "quantfuse.custom_ops.triton_schemes"}

#: Counter of ``(op, backend)`` -> number of calls, for tests and debugging.
calls: collections.Counter = collections.Counter()
_loaded: dict[str, ModuleType | None] = {}
#: (preference, plan key) -> (backend name, module or None)
_choices: dict[tuple, tuple[str, ModuleType | None]] = {}


def _load(module: str) -> ModuleType | None:
    if module not in _loaded:
        try:
            _loaded[module] = importlib.import_module(module)
        except Exception as e:  # a broken optional backend must never break the op
            log.warning("quantfuse backend module %r cannot be imported: %s", module, e)
            _loaded[module] = None
    return _loaded[module]


def preference() -> tuple[str, ...]:
    """Backends in the order they are tried, honouring ``QUANTFUSE_BACKEND`` (read at every
    call, so a process can switch; the order is worked out once per value)."""
    return _preference(os.environ.get(BACKEND_ENV, ""))


@functools.lru_cache(maxsize=8)
def _preference(value: str) -> tuple[str, ...]:
    forced = value.strip().lower()
    if not forced:
        return ORDER
    if forced not in ORDER:
        raise ValueError(f"{BACKEND_ENV}={forced!r}: expected one of {', '.join(ORDER)}")
    return (forced,) + tuple(b for b in ORDER if b != forced)


def reason_unsupported(backend: str, plan: CallPlan) -> str | None:
    """Why ``backend`` cannot run this plan, or None if it can."""
    if backend == "torch":
        return None
    if plan.device_type != "cuda":
        return f"input is on {plan.device_type}, the {backend} backend needs CUDA"
    mod = _load(MODULES[backend])
    if mod is None or not mod.is_available():
        return f"the {backend} backend is not available on this machine"
    return mod.supports(plan)


def _decide(order: tuple[str, ...], plan: CallPlan) -> tuple[str, ModuleType | None]:
    for name in order:
        why = reason_unsupported(name, plan)
        if why is None:
            log.info("%s: using the %s backend (dtype=%s, device=%s, recipe=%s, layout=%s)", plan.entry.name, name,
                     plan.dtype, plan.device_type, plan.recipe, plan.layout.value)
            return name, (None if name == "torch" else _load(MODULES[name]))
        if name == order[0] and os.environ.get(BACKEND_ENV):
            log.warning("%s: %s=%s cannot run this call (%s); falling back", plan.entry.name, BACKEND_ENV, name, why)
        else:
            log.debug("%s: not the %s backend: %s", plan.entry.name, name, why)
    raise AssertionError("unreachable: the torch backend supports everything")


def _choice(plan: CallPlan) -> tuple[str, ModuleType | None]:
    order = preference()
    key = (order, plan.key)
    choice = _choices.get(key)
    if choice is None:
        choice = _choices[key] = _decide(order, plan)
    return choice


def choose(plan: CallPlan) -> ModuleType | None:
    """The backend module that runs this plan (None: the torch reference); counts the call."""
    name, mod = _choice(plan)
    calls[(plan.entry.name, name)] += 1
    return mod


def backend_name(plan: CallPlan) -> str:
    """Name of the backend that runs this plan (not counted as a call)."""
    return _choice(plan)[0]


def call_counts() -> collections.Counter:
    """``(op, backend)`` -> calls, those of the C++ dispatcher path (as ``"cuda"``) included."""
    total = calls.copy()
    mod = _loaded.get(MODULES["cuda"])
    if mod is not None:
        for op, n in mod.dispatch_counts().items():
            total[(op, "cuda")] += n
    return total


def reset_counts() -> None:
    """Zero :func:`call_counts`."""
    calls.clear()
    mod = _loaded.get(MODULES["cuda"])
    if mod is not None:
        mod.reset_dispatch()


def clear_cache() -> None:
    """Forget the cached choices (tests that change availability or the environment),
    the C++ dispatcher path's included."""
    _choices.clear()
    mod = _loaded.get(MODULES["cuda"])
    if mod is not None:
        mod.reset_dispatch(decisions=True)


@contextlib.contextmanager
def untracked():
    """Calls inside are neither logged, cached nor counted: tracing the patterns runs every
    op once on example tensors, which must not log (or remember) a choice for ops the
    model never calls."""
    choices, counted = dict(_choices), calls.copy()
    logger = logging.getLogger("quantfuse.backend")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled
        _choices.clear()
        _choices.update(choices)
        calls.clear()
        calls.update(counted)
