"""Whether a rewrite is a win where the graph runs: decided here, apart from whether it is safe.

A native (plain-PyTorch) site is compiled by Inductor into fused code of its own. Replacing
it pays only where a kernel of ours runs: on a CPU graph the fused op runs the torch
reference (eager maths), several times slower than Inductor's C++ for the same graph, so
native sites there are kept unless the config asks for CPU rewrites
(``FusionConfig(native_on_cpu=True)``, ``QUANTFUSE_NATIVE_ON_CPU=1``: to see on a CPU what a
GPU graph gets, as the tests do). The op form (a model calling quantfuse's unfused ops) is
always rewritten: the fused op replaces two calls of the same backend.
"""

from __future__ import annotations

KEPT_FOR_SPEED = "kept for speed"

CPU_REASON = (f"{KEPT_FOR_SPEED}: on the CPU the fused op runs the torch reference, slower than Inductor's C++ "
              "code for this graph (FusionConfig(native_on_cpu=True) rewrites it anyway)")


def native_rewrite_reason(device_type: str, config) -> str | None:
    """None when a native site on ``device_type`` is worth rewriting, else why it is kept."""
    if device_type == "cpu" and not config.native_on_cpu:
        return CPU_REASON
    return None
