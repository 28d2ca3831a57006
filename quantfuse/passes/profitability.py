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

On a GPU graph a native site is also kept where the benchmark records say the fused op is the
slower one at its size (:func:`measured_reason`, reading :mod:`quantfuse.passes.speed_table`, which
``benchmarks/speed_table.py`` generates from ``benchmarks/results``; decision 031):

- replayed in a CUDA graph (``FusionConfig.cuda_graphs``; by default Inductor's
  ``triton.cudagraphs``, which ``mode="reduce-overhead"`` sets), only kernel time counts: kept
  where the fused kernel was slower than Inductor's by more than :data:`MARGIN` in every run;
- run without CUDA graphs, a fused call costs more host time than the Inductor launch it
  replaces (``host_added_us``, per scheme and cell variant, from whole-layer records): kept where the kernel time it saves is less, since
  at decode sizes a forward is host-bound (its host time is its wall time); for a scheme whose
  host cost is not measured, kept where the kernel is slower, as in a CUDA graph. (The host cost
  depends on the graph around the site: a fused per-token or row-major g128 call in the MoE layer
  adds about 9 µs, a column-major g128 call in the FP8 MLP saves about as much.)

The cell read is the nearest measured (rows, hidden) at or above the site's (an FP8 per-group
site by group size and scale layout); a site larger than every cell, of a dynamic size, or of an
op or layout never measured is rewritten, as is every site where the device has no table of its
own and the default device's (:data:`DEFAULT_DEVICE`) has no cell. ``FusionConfig(speed_table=False)``
(``QUANTFUSE_SPEED_TABLE=0``) turns the rule off.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from quantfuse.passes import speed_table

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


#: kernel-time differences within this fraction are the benchmarks' run-to-run spread
MARGIN = 0.02
#: the device whose table an unmeasured device reads (the GPU most records come from)
DEFAULT_DEVICE = "NVIDIA H200"


def device_name(device: torch.device) -> str:
    """The name the speed table is keyed by (``torch.cuda.get_device_name``; a graph traced for a
    GPU this process cannot see: ``"an unseen GPU"``, which reads the default device's table)."""
    try:
        return torch.cuda.get_device_name(device)
    except (AssertionError, RuntimeError):
        return "an unseen GPU"


def cell_variant(scheme_key: str, params: dict) -> str:
    """The benchmark cell variant of a site: ``g<group>`` (``:col`` for column-major scales) for
    FP8 per-group, ``""`` otherwise (as ``bench_pairs --group-variants`` names them)."""
    if scheme_key != "fp8_per_group":
        return ""
    return f"g{params.get('group_size', 128)}" + (":col" if params.get("column_major_scales") else "")


def nearest_cell(cells: dict, rows: int, hidden: int):
    """The measured ((rows, hidden), value) nearest at or above the site's size, or None."""
    above = [(t, h) for (t, h) in cells if t >= rows and h >= hidden]
    if not above:
        return None
    key = min(above, key=lambda c: (c[0] / rows + c[1] / hidden, c))
    return key, cells[key]


def cuda_graphs(config) -> bool:
    """Whether the graph is replayed in a CUDA graph: the config's answer, else Inductor's."""
    if config.cuda_graphs is not None:
        return config.cuda_graphs
    return bool(torch._inductor.config.triton.cudagraphs)


def measured_reason(op_name: str, scheme_key: str, params: dict, y_val, config) -> str | None:
    """Why a native site of a GPU graph is kept for speed according to the measured table
    (``y_val``: the activation output's value, giving rows and hidden), or None to rewrite it."""
    if not config.speed_table or y_val is None or y_val.device.type != "cuda":
        return None
    shape = tuple(y_val.shape)
    if not shape or not all(isinstance(d, int) for d in shape):
        return None  # a dynamic size: which cell it falls in is not known
    hidden = shape[-1]
    rows = y_val.numel() // hidden if hidden else 0
    if rows == 0:
        return None
    name = device_name(y_val.device)
    table = speed_table.TABLES.get(name)
    source = name
    if table is None:
        table, source = speed_table.TABLES.get(DEFAULT_DEVICE), f"{DEFAULT_DEVICE} (no table for {name})"
    if table is None:
        return None
    variant = cell_variant(scheme_key, params)
    found = nearest_cell(table["cells"].get((op_name, variant), {}), rows, hidden)
    if found is None:
        return None
    (t, h), (fused, inductor, runs, least) = found
    where = f"{rows} x {hidden} (measured at {t} x {h} on {source}"
    graphs = cuda_graphs(config)
    host = None if graphs else table["host_added_us"].get((scheme_key, variant))
    if least > 1 + MARGIN and (graphs or host is None):
        # a slower kernel is slower in either mode (without CUDA graphs the fused call's host time,
        # where not measured, is not less than the launch it replaces)
        mode = "in a CUDA graph" if graphs else "without CUDA graphs"
        return (f"{KEPT_FOR_SPEED}: {mode} the fused kernel is slower than Inductor's at {where}: "
                f"{fused:.2f} µs against {inductor:.2f} µs, slower in each of {runs} run(s))")
    if host is not None and inductor - fused < host:
        return (f"{KEPT_FOR_SPEED}: without CUDA graphs the fused call adds {host:.1f} µs of host time, more than "
                f"the {inductor - fused:.2f} µs of kernel time it saves at {where}; a decode step is host-bound; "
                "FusionConfig(cuda_graphs=True) if the graph is replayed in a CUDA graph)")
    return None


def kernel_reason(plan) -> str | None:
    """Why a native site of a GPU graph with this call plan is kept, or None: no CUDA / Triton
    kernel computes its recipe (``CallPlan.kernel_reason``: the torch reference would run), or
    only a Triton kernel slower than Inductor's code would (:func:`triton_only_reason`). Both the
    recogniser and the native patterns ask it."""
    reason = plan.kernel_reason()
    if reason:
        return (f"{reason}: no CUDA / Triton kernel implements it (the torch reference would be slower than "
                "Inductor's code)")
    return triton_only_reason(plan)


def triton_only_reason(plan) -> str | None:
    """Why a native site of a GPU graph whose plan the CUDA kernels do not compute (their
    :func:`cuda_backend.plan_reason <quantfuse.custom_ops.cuda_backend.plan_reason>`: a recipe without the
    clamp before torch 2.12, per-tensor ``apply=mul_ratio``, a per-token row that is no whole number of
    16-byte vectors ...) is kept: it would run on the Triton kernels, and for a pair not in
    :data:`~quantfuse.passes.config.PROFITABLE_NATIVE_TRITON` those were slower than Inductor's code;
    None where the CUDA kernels run it, or Triton's is the faster code."""
    from quantfuse.custom_ops import cuda_backend
    from quantfuse.passes.config import PROFITABLE_NATIVE_TRITON

    why = cuda_backend.plan_reason(plan)
    if why is None or (plan.activation.name, plan.entry.scheme.key) in PROFITABLE_NATIVE_TRITON:
        return None
    return (f"{KEPT_FOR_SPEED}: {why}, so the site would run on the Triton kernels, slower than Inductor's code "
            "for this pair (passes.PROFITABLE_NATIVE_TRITON)")


def native_site_reason(device_type: str, q: Node, op_name: str, scheme_key: str, params: dict, y_val,
                       config) -> str | None:
    """Why a native site is kept for speed, else None: the device rule
    (:func:`native_rewrite_reason`), the dequantised output (:func:`dequantised_reason` of the
    site's quantized output ``q``), then the measured table (:func:`measured_reason`), the first
    that applies. Both the pattern and the recogniser paths ask this."""
    return (native_rewrite_reason(device_type, config) or dequantised_reason(q)
            or measured_reason(op_name, scheme_key, params, y_val, config))
