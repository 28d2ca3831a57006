"""Whether a rewrite is a win where the graph runs: decided here, apart from whether it is safe.

A native (plain-PyTorch) site is compiled by Inductor into fused code of its own. Replacing
it pays only where a kernel of ours runs: on a CPU graph the fused op runs the torch
reference (eager maths), several times slower than Inductor's C++ for the same graph, so
native sites there are kept unless the config asks for CPU rewrites
(``FusionConfig(native_on_cpu=True)``, ``QUANTFUSE_NATIVE_ON_CPU=1``: to see on a CPU what a
GPU graph gets, as the tests do). The op form (a model calling quantfuse's unfused ops) is
always rewritten: the fused op replaces two calls of the same backend.

A native site whose quantized output is only read by pointwise code (``q.float() * s``: the
quant -> dequant round trip of fake quantisation, or of a bf16 GEMM standing in for an FP8
one) is kept on every device: Inductor fuses those reads into the site's own kernel, so its
code never writes the FP8 tensor, and the fused op would add that write, a second kernel and
its read (measured: ``docs/decisions/025-dequantised-sites-kept.md``).
"""

from __future__ import annotations

import torch
from torch.fx import Node

KEPT_FOR_SPEED = "kept for speed"

CPU_REASON = (f"{KEPT_FOR_SPEED}: on the CPU the fused op runs the torch reference, slower than Inductor's C++ "
              "code for this graph (FusionConfig(native_on_cpu=True) rewrites it anyway)")


def native_rewrite_reason(device_type: str, config) -> str | None:
    """None when a native site on ``device_type`` is worth rewriting, else why it is kept."""
    if device_type == "cpu" and not config.native_on_cpu:
        return CPU_REASON
    return None


DEQUANTISED_REASON = (f"{KEPT_FOR_SPEED}: its quantized output is only read by pointwise code in the graph "
                      "(a dequantisation, e.g. `q.float() * s`): Inductor fuses that into the site's own kernel, "
                      "which never writes the FP8 tensor; the fused op would add that write, a kernel and its read")


def _views():
    from quantfuse.patterns import canonical

    aten = torch.ops.aten
    return canonical._VIEWS | canonical._PERMUTES | {aten.expand.default, aten.alias.default, aten.slice.Tensor,
                                                      aten.select.int}


def dequantised_reason(q: Node) -> str | None:
    """``DEQUANTISED_REASON`` when every consumer of the native site's quantized output ``q``
    (through views) is a pointwise op (Inductor fuses it, so the native code never writes
    ``q``), else None: some consumer (a GEMM, a custom op, the graph's output) reads ``q``
    from memory."""
    views, seen, frontier, terminals = _views(), set(), [q], 0
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_function" and user.target in views:
                frontier.append(user)
            elif (user.op == "call_function" and isinstance(user.target, torch._ops.OpOverload)
                  and torch.Tag.pointwise in user.target.tags):
                terminals += 1
            else:
                return None
    return DEQUANTISED_REASON if terminals else None
