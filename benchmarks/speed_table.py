"""Generate quantfuse/passes/speed_table.py, the measured times the pass's profitability rule
reads, from the benchmark records in benchmarks/results/*.jsonl.

    python benchmarks/speed_table.py            # rewrite quantfuse/passes/speed_table.py
    python benchmarks/speed_table.py --check    # exit 1 if the file is not what the records give

Per device:

- ``cells``: for each fused op and cell variant (``""``; for FP8 per-group ``g<group>``, with
  ``:col`` for column-major scales), every (rows, hidden) that ``bench_pairs.py`` timed against
  Inductor's code for the native graph (CUDA backend, ``[gate | up]`` halves, bf16, the default
  recipe), as ``(fused µs, Inductor µs, runs, least ratio)``: the medians over the runs, their
  count, and the least over the runs of fused / Inductor (Inductor's own choice of kernel for a
  shape varies between compiles: a site is kept only where the fused op was slower in every run).
- ``host_added_us``: per (scheme, cell variant), the host time one fused call adds to a compiled
  forward without CUDA graphs, against the Inductor code it replaces (negative where the rewrite
  removes host work): the median over whole-layer plain-call records at T = 16 (``bench_moe.py``
  with planned outputs, ``bench_mlp.py``: there the layer is host-bound, its host CPU time its
  wall time, and the kernels' difference a fraction of a µs) of the forward's host time without
  the pass times (1 / paired speedup - 1), per site (``_host_site``): the paired speedup is the
  median over alternating rounds, which a round the shared host slowed does not move as it moves
  the difference of the two medians.

Only records of today's code count (``SINCE``: per-token kernels and the host path since the
per-token decode launches changed, other kernels since their last change), and none of a commit
in ``EXCLUDED`` (kernels measured there were reverted). Cells of a variant in ``SKIPPED_VARIANTS``
are left out: whole-layer records of that variant contradict them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import summarize  # noqa: E402

sys.path.insert(0, str(HERE.parent / "examples"))
import fp8_mlp  # noqa: E402
import fp8_moe  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from bench_pairs import NATIVE_GROUP  # noqa: E402

from quantfuse import catalog  # noqa: E402
from quantfuse.passes import profitability  # noqa: E402

OUT = HERE.parent / "quantfuse" / "passes" / "speed_table.py"
#: the first (date, UTC time) whose records describe today's code: the per-token kernels' since
#: ac1a459 (one encode loop, the runtime-recipe kernel a tuning choice), the host path's since
#: b8eeb6f (per-token decode launches fill the GPU; the out path and planned outputs before it),
#: every other kernel's since 6b6a4a2 (the group and experts kernels' last change; kernel cells
#: are CUDA-graph replays, which the host path does not reach)
SINCE = {"fp8_per_token": ("2026-12-04", "02:10:47"), "host": ("2026-12-03", "07:20:45")}
SINCE_KERNELS = ("2026-12-02", "16:42:43")
#: commits whose kernels did not stay, and why
EXCLUDED = {"dd9ab74": "its per-token decode kernel was reverted (e6fe131)"}
#: cell variants whose isolated cells the whole-layer records contradict (their sites are
#: rewritten, as a variant never measured), and why
SKIPPED_VARIANTS = {
    "g128:col": "bench_mlp's FP8 MLP (column-major g128 scales into torch._scaled_mm) runs faster with the "
                "rewrite at every T measured, decode included, with and without CUDA graphs, where the isolated "
                "cells time the fused kernel slower than Inductor's at some decode sizes: the isolated native "
                "spelling of the layout (s.t().contiguous().t()) compiles to less than the layer's graph does",
}
#: the token count at which whole-layer plain-call records give the host cost of a fused call
HOST_TOKENS = 16


def _current(r: dict, what: str) -> bool:
    """Whether a record measured today's code for ``what`` (a scheme key, or "host"): ``SINCE``,
    ``EXCLUDED``."""
    since = SINCE.get(what, SINCE_KERNELS)
    return (str(r.get("date", "")), str(r.get("time", ""))) >= since and r.get("commit") not in EXCLUDED


def _pair_cell(r: dict) -> tuple | None:
    """(op, variant, rows, hidden) of a pairs record the table takes, else None."""
    if r.get("bench") != "pairs" or r.get("backend") != "cuda" or r.get("op") not in catalog.OPS:
        return None
    scheme = catalog.OPS[r["op"]].scheme.key
    if not _current(r, scheme):
        return None
    if r.get("layout", "halves") != "halves" or r.get("recipe") or r.get("dtype", "bfloat16") != "bfloat16":
        return None
    if summarize.missing(r.get("inductor_us")) or summarize.missing(r.get("fused_us")):
        return None
    # older records leave the default group unnamed
    variant = r.get("variant") or profitability.cell_variant(scheme, {"group_size": NATIVE_GROUP})
    if variant in SKIPPED_VARIANTS:
        return None
    return r["op"], variant, int(r["tokens"]), int(r["hidden"])


def _host_site(r: dict) -> tuple[tuple[str, str], int] | None:
    """((scheme, cell variant), sites per forward) of a whole-layer plain-call record that gives a
    host cost (T = HOST_TOKENS, paired, today's host path), else None: bench_moe's layer has one
    site ("<shape> <scales> scales": fp8_moe.quant_fp8, a scale per token or per row-major 1xBLOCK
    group), bench_mlp's stack one per layer ("fp8 mlp x<layers>": examples/fp8_mlp.py, 1xBLOCK
    groups with column-major scales)."""
    if (r.get("mode") != "plain calls" or int(r.get("tokens", 0)) != HOST_TOKENS or not _current(r, "host")
            or summarize.missing(r.get("paired_speedup")) or summarize.missing(r.get("without_pass_host_us"))):
        return None
    if r.get("bench") == "moe" and r.get("planned_outputs"):
        scheme = fp8_moe.SCALES_SCHEME[r["case"].split()[-2]]
        return (scheme, profitability.cell_variant(scheme, {"group_size": fp8_moe.BLOCK})), 1
    if r.get("bench") == "mlp" and r.get("case", "").startswith("fp8 mlp x"):
        variant = profitability.cell_variant("fp8_per_group", {"group_size": fp8_mlp.BLOCK, "column_major_scales": True})
        return ("fp8_per_group", variant), int(r["case"].rpartition("x")[2])
    return None


def build(records: list[dict]) -> dict:
    """The tables, by device, from the records."""
    runs: dict = defaultdict(lambda: defaultdict(list))
    host: dict = defaultdict(lambda: defaultdict(list))
    sources: dict = defaultdict(set)
    for r in records:
        cell = _pair_cell(r)
        if cell is not None:
            runs[r["device"]][cell].append((float(r["fused_us"]), float(r["inductor_us"])))
            sources[r["device"]].add(r["commit"])
        elif (site := _host_site(r)) is not None:
            key, sites = site
            per_forward = float(r["without_pass_host_us"]) * (1 / float(r["paired_speedup"]) - 1)
            host[r["device"]][key].append(per_forward / sites)
            sources[r["device"]].add(r["commit"])
    tables = {}
    for device in sorted(set(runs) | set(host)):
        cells: dict = defaultdict(dict)
        for (op, variant, rows, hidden), times in sorted(runs[device].items()):
            fused = statistics.median(t[0] for t in times)
            ind = statistics.median(t[1] for t in times)
            least = min(f / i for f, i in times)
            cells[(op, variant)][(rows, hidden)] = (round(fused, 3), round(ind, 3), len(times), round(least, 3))
        tables[device] = {
            "cells": dict(cells),
            "host_added_us": {k: round(statistics.median(v), 1) for k, v in sorted(host[device].items())},
            "commits": tuple(sorted(sources[device])),
        }
    return tables


def render(tables: dict) -> str:
    """The generated module's text."""
    lines = ['"""Measured fused-kernel, Inductor-kernel and host times, per device: the data of',
             "quantfuse.passes.profitability's measured rule (its docstring says how it is read).",
             "",
             "Generated by benchmarks/speed_table.py from benchmarks/results/*.jsonl (its SINCE says which);",
             'do not edit: re-run it after adding records."""',
             "",
             "#: device name -> {\"cells\": {(op, variant): {(rows, hidden): (fused_us, inductor_us, runs,",
             "#: least_ratio)}}, \"host_added_us\": {(scheme, variant): µs}, \"commits\": the records' commits}",
             "TABLES = {"]
    for device, t in tables.items():
        lines.append(f"    {device!r}: {{")
        lines.append('        "cells": {')
        for key, cells in t["cells"].items():
            lines.append(f"            {key!r}: {{")
            for shape, value in cells.items():
                lines.append(f"                {shape!r}: {value!r},")
            lines.append("            },")
        lines.append("        },")
        lines.append(f'        "host_added_us": {t["host_added_us"]!r},')
        lines.append(f'        "commits": {t["commits"]!r},')
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--check", action="store_true", help="exit 1 if --out is not what the records give")
    args = p.parse_args(argv)
    text = render(build(summarize.load(Path(args.results))))
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is stale: run python benchmarks/speed_table.py", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
