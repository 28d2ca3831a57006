"""Launch parameters tuned on the GPU that runs them: vectors per thread of the group kernels,
where the per-token kernel keeps the rows it prefetches, and which per-token kernel runs the op's
own recipe.

How many 16-byte vectors a thread of the per-group and MX kernels loads per group decides
how many loads are in flight per SM, and the best count differs between GPUs of one
architecture (docs/decisions/020-vectors-autotuned-per-device.md): a count chosen on one
card is not right on the next. The per-token kernel keeps the next row's vectors either in a
second set of registers or in shared memory, one or two rows ahead (``row_stages``): fewer
registers, more warps resident, one more hop; which is faster depends on the activation's
register needs and the GPU (docs/decisions/026-per-token-row-staging-tuned.md); each is timed
with each vector count too. The group kernels likewise keep their next group in registers or
stage groups ahead in shared memory (docs/decisions/028-group-kernels-staged-by-cp-async.md).
A per-token call of the op's own recipe can run the kernel compiled for it or the one that reads
any recipe at run time, the same bits from other code, at times the faster
(docs/decisions/033-runtime-recipe-kernel-a-tuning-choice.md): each choice is timed on both.
So none is a constant: on the
first call of a plan (everything about a call but its token count, :attr:`CallPlan.key`) the
CUDA backend asks :func:`token_classes`, which times each :func:`candidates` choice on random
inputs of the plan's shape for every token class (group kernels: past the L2, below it the
kernel's own default serves: small inputs are latency-bound and the default alone has the
evict-first variant that L2-sized inputs take; per-token: from the first token, both variants
have it; per-token also a decode class: a batch of one row per SM, latency-bound, where the
choice of the bandwidth classes ran up to 12% slower than the best) and keeps the fastest, in
memory and in ``tuning-<device>.json`` under the cache folder, so a process on the same device
reads the table instead of timing again. Every choice is timed as the benchmarks time kernels, by
replaying a CUDA graph of launches (:func:`time_launch`): launches issued from the host one by one
measure the host at decode sizes, not the kernel.

The answer is a tuple of ``(min_tokens, Choice)`` classes, ascending; a call of ``T`` tokens
takes the choice of the last class with ``min_tokens <= T``, else the kernels' defaults
(``Choice()``). ``QUANTFUSE_TUNE=0`` turns tuning off (every call takes the default). No
timing happens while a CUDA graph is being captured; the answer is then not final (the
C++ dispatcher path asks again on a later call).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import threading
from pathlib import Path
from typing import Callable

import torch

from quantfuse.catalog import Grouping, Layout

log = logging.getLogger("quantfuse.tuning")


@dataclasses.dataclass(frozen=True)
class Choice:
    """One launch choice: ``vectors`` per thread (0: the kernel's default), for the per-token
    kernel how many rows ahead it stages in shared memory (0: the next row in registers), and
    whether a per-token call of the default recipe runs the kernel that reads the recipe at run
    time (``runtime_recipe``: the same bits, other code; csrc act_quant.h QuantParams)."""

    vectors: int = 0
    row_stages: int = 0
    runtime_recipe: bool = False

    @property
    def label(self) -> str:
        """How the table names it: the vector count ("2"), where a per-token kernel keeps its rows
        at the default count ("registers", "shared", "shared x2"), or both ("2 shared x2"), then
        " runtime recipe" for the runtime-recipe kernel."""
        where = "" if not self.row_stages else "shared" if self.row_stages == 1 else f"shared x{self.row_stages}"
        if self.vectors:
            label = f"{self.vectors} {where}" if where else str(self.vectors)
        else:
            label = where or "registers"
        return f"{label} runtime recipe" if self.runtime_recipe else label


#: the vector counts the group kernels are instantiated for (csrc/launch_unit.cuh dispatch_vectors)
CANDIDATES = (1, 2, 4)
#: token classes, as multiples of the L2 size the input's bytes reach: (class starts at,
#: timed at). Past 4 L2 sizes no part of the input is still in L2 when it is read again.
CLASSES = ((1, 2), (4, 8))
#: rows the per-token kernel stages ahead in shared memory (0: the next row in registers), as the
#: kernels take them (csrc act_quant.h QuantParams::row_stages)
KERNEL_ROW_STAGES = (0, 1, 2)
#: those tuning times: every one (each bit-exact on a GPU: tests/gpu/test_tuning_gpu.py runs every
#: KERNEL_ROW_STAGES; a staging joins the kernels' set first and tuning once that has passed)
ROW_STAGES = KERNEL_ROW_STAGES
#: the vector counts the staged group kernels are instantiated for, and how many groups they stage
#: ahead (csrc/group_kernel.cuh kGroupStaged; launch_unit.cuh launch_group)
STAGED_VECTORS = (1, 2)
GROUP_ROW_STAGES = (2,)
#: the vector counts the experts kernels are instantiated for, each with the next group in
#: registers and staged (csrc/launch_unit.cuh launch_experts)
EXPERTS_VECTORS = (1, 2)
#: the per-token kernel's: a first class from one token, timed at half the L2
TOKEN_CLASSES = ((0, 0.5),) + CLASSES
#: the per-token decode class (before the half-L2 class, which then starts at the geometric mean
#: of the two classes' timed token counts): timed at this many rows per SM
DECODE_ROWS_PER_SM = 1
#: the candidates' generation: a table entry of another was timed over other candidates, and is
#: timed again (2: the per-token default recipe's runtime-recipe kernel joined; 3: the per-token
#: decode class, and every choice timed by graph replay)
TABLE_VERSION = 3
#: the timed inputs and outputs take at most this share of the free device memory
MEMORY_SHARE = 0.25

_lock = threading.Lock()
#: (device name, tuning key) -> classes
_memory: dict = {}


def enabled() -> bool:
    """False when ``QUANTFUSE_TUNE=0``."""
    return os.environ.get("QUANTFUSE_TUNE", "1") != "0"


def _per_token(plan) -> bool:
    return plan.recipe is not None and plan.recipe.grouping is Grouping.PER_TOKEN


def tunable(plan) -> bool:
    """Whether the plan runs a kernel with a launch choice: the per-group and MX kernels (the
    experts ops' too) on halves or separate inputs (interleaved inputs take the default vectors
    only), and the per-token kernel in every layout."""
    r = plan.recipe
    if r is None:
        return False
    return _per_token(plan) or (r.grouping in (Grouping.PER_GROUP, Grouping.MX_BLOCK)
                                and plan.layout is not Layout.INTERLEAVED)


def _default_recipe(plan) -> bool:
    """Whether the plan's recipe is its op's own (the one the default kernels compile in)."""
    return plan.recipe is not None and plan.recipe.spec(plan.entry.base) == ""


def candidates(plan) -> tuple[Choice, ...]:
    """The choices timed for a tunable plan: per-group and MX, each vector count with the next
    group in registers, and each ``STAGED_VECTORS`` count with ``GROUP_ROW_STAGES`` groups staged;
    per-token, the launcher's default and each count, each with every ``ROW_STAGES`` (a count a
    row is too short for takes the next that fits, so some choices time the same launch), and for
    the op's own recipe each of those again on the runtime-recipe kernel (which can be the faster
    code: docs/decisions/032-recipe-encode-loops-per-kernel.md); the experts ops, each
    ``EXPERTS_VECTORS`` count in registers and staged."""
    if plan.entry.experts:
        return tuple(Choice(v, r) for v in EXPERTS_VECTORS for r in (0, *GROUP_ROW_STAGES))
    if _per_token(plan):
        kernels = (False, True) if _default_recipe(plan) else (False,)
        return tuple(Choice(v, r, k) for k in kernels for v in (0, *CANDIDATES) for r in ROW_STAGES)
    return (tuple(Choice(v) for v in CANDIDATES)
            + tuple(Choice(v, r) for v in STAGED_VECTORS for r in GROUP_ROW_STAGES))


def row_bytes(plan) -> int:
    """Input bytes per token (gate and up for gated activations)."""
    return plan.hidden * plan.dtype.itemsize * (2 if plan.activation.gated else 1)


def class_tokens(plan, l2_bytes: int, sms: int = 0) -> tuple[tuple[int, int], ...]:
    """((first token count of the class, token count it is timed at), ...) for this plan on a GPU
    of ``sms`` SMs (0: unknown, no decode class)."""
    rb = max(row_bytes(plan), 1)
    classes = TOKEN_CLASSES if _per_token(plan) else CLASSES
    out = tuple((math.ceil(start * l2_bytes / rb), math.ceil(at * l2_bytes / rb)) for start, at in classes)
    decode = sms * DECODE_ROWS_PER_SM
    if _per_token(plan) and 0 < decode < out[0][1]:
        # a call takes the class whose timed size is the nearer on a log scale
        out = ((0, decode), (math.isqrt(decode * out[0][1]) + 1, out[0][1])) + out[1:]
    return out


def tuning_key(plan) -> str:
    """What the best count may depend on: the op, recipe, layout, dtype and hidden size (the
    experts ops: and the expert count, which sets the search's rounds)."""
    spec = plan.recipe.spec(plan.entry.base) if plan.recipe is not None else ""
    experts = f"|E{plan.num_experts}" if plan.entry.experts else ""
    return f"{plan.entry.name}|{spec}|{plan.layout.value}|{plan.dtype}|{plan.hidden}{experts}"


def _table_path(device_name: str) -> Path:
    from quantfuse.custom_ops import cuda_backend

    return cuda_backend.cache_root() / f"tuning-{re.sub(r'[^A-Za-z0-9_.-]+', '_', device_name)}.json"


def _read_table(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_entry(path: Path, key: str, entry: dict) -> None:
    """Merge one entry into the device's table (written whole through a rename, so a reader
    never sees half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = _read_table(path)
        table[key] = entry
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as e:
        log.warning("quantfuse: could not write the tuning table %s: %s", path, e)


def choose(times: dict[Choice, float]) -> Choice:
    """The fastest choice; ties go to the default kernel, then to the fewer vectors (fewer
    registers), then to fewer rows staged (the default: none)."""
    return min(times, key=lambda c: (times[c], c.runtime_recipe, c.vectors, c.row_stages))


@dataclasses.dataclass(frozen=True)
class Device:
    """What tuning reads of the GPU: its name (the table's key), L2 size and free memory, whether
    the current stream is capturing a CUDA graph, and its SM count (the decode class's rows)."""

    name: str
    l2_bytes: int
    free_bytes: int
    capturing: bool
    sms: int

    @classmethod
    def current(cls) -> "Device":
        """The current CUDA device."""
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return cls(props.name, props.L2_cache_size, torch.cuda.mem_get_info()[0],
                   torch.cuda.is_current_stream_capturing(), props.multi_processor_count)


def token_classes(plan, device: Device | Callable[[], Device],
                  launch: Callable[[object, int], float | None]) -> tuple[tuple, bool]:
    """``(classes, final)`` for a CUDA plan: ``classes`` as the module docstring says,
    ``final`` False when the answer may change on a later call (tuning skipped under graph
    capture). ``device``: the GPU, or a callable giving it (asked only for a tunable plan).
    ``launch(plan_at_T, choice)`` times one :class:`Choice` at the plan's shape with
    ``plan_at_T.tokens`` tokens (µs, None when the kernel refuses it)."""
    if not (enabled() and tunable(plan)):
        return (), True
    if callable(device):
        device = device()
    key = tuning_key(plan)
    with _lock:
        if (device.name, key) in _memory:
            return _memory[(device.name, key)], True
    path = _table_path(device.name)
    entry = _read_table(path).get(key)
    if entry is not None and entry.get("version") != TABLE_VERSION:
        entry = None  # timed over other candidates: time again
    if entry is None:
        if device.capturing:
            return (), False
        entry = _tune(plan, device, launch)
        if entry is None:
            return (), True
        _write_entry(path, key, entry)
    classes = tuple((int(c["min_tokens"]), entry_choice(c)) for c in entry["classes"])
    with _lock:
        _memory[(device.name, key)] = classes
    return classes, True


def _tune(plan, device: Device, launch) -> dict | None:
    classes = []
    for start, at in class_tokens(plan, device.l2_bytes, device.sms):
        # input + the largest output (FP8 codes: one byte per element) + scales
        need = at * (row_bytes(plan) + plan.hidden * 2)
        if need > MEMORY_SHARE * device.free_bytes:
            log.info("quantfuse: not tuning %s at %d tokens: %.0f MB would not fit in a quarter of the free "
                     "memory", tuning_key(plan), at, need / 1e6)
            break
        sized = dataclasses.replace(plan, lead=(at,))
        times = {c: t for c in candidates(plan) if (t := launch(sized, c)) is not None}
        if not times:
            break
        best = choose(times)
        classes.append({"min_tokens": start, "tokens": at, "vectors": best.vectors, "row_stages": best.row_stages,
                        "runtime_recipe": best.runtime_recipe, "us": {c.label: round(t, 2) for c, t in times.items()}})
        log.info("quantfuse: tuned %s on %s at %d tokens: %s -> %s", tuning_key(plan), device.name, at,
                 ", ".join(f"{c.label}: {t:.1f} us" for c, t in times.items()), best.label)
    return {"classes": classes, "torch": torch.__version__, "version": TABLE_VERSION} if classes else None


def entry_choice(c: dict) -> Choice:
    """The choice of one class of a table entry (older entries lack the later fields)."""
    return Choice(int(c["vectors"]), int(c.get("row_stages", 0)), bool(c.get("runtime_recipe", False)))


def choice_for(classes: tuple, tokens: int) -> Choice:
    """The choice of the last class a call of ``tokens`` reaches, else the defaults."""
    c = Choice()
    for min_tokens, choice in classes:
        if tokens >= min_tokens:
            c = choice
    return c


def _graph_of(run: Callable[[], str | None], calls: int) -> Callable[[], None] | None:
    """A replay of ``calls`` launches of ``run`` captured in a CUDA graph, or None where capture
    fails (the launches then run one by one)."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            for _ in range(calls):
                run()
    except RuntimeError as e:
        log.info("quantfuse: tuning times launches one by one: no CUDA graph (%s)", e)
        return None
    graph.replay()
    return graph.replay


def time_launch(run: Callable[[], str | None], repeats: int = 5, calls: int = 20) -> float | None:
    """Best mean µs per call of ``run`` (a launch returning an error string or None) over
    ``repeats`` replays of a CUDA graph of ``calls`` launches (kernel time and the gap between
    kernels, as bench_pairs times them, without the host's time to issue each launch, which
    exceeds a decode-sized kernel's), timed with CUDA events; back-to-back launches where the
    graph cannot be captured. None when ``run`` returns an error."""
    if run():
        return None
    torch.cuda.synchronize()
    replay = _graph_of(run, calls)
    best = math.inf
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if replay is not None:
            replay()
        else:
            for _ in range(calls):
                run()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / calls)
    return best


def clear() -> None:
    """Forget the in-memory answers (the files stay)."""
    with _lock:
        _memory.clear()
