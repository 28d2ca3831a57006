"""Generate benchmarks/RESULTS.md and benchmarks/DETAILS.md from the records in benchmarks/results/*.jsonl.

    python benchmarks/summarize.py            # rewrite RESULTS.md and DETAILS.md
    python benchmarks/summarize.py --check    # exit 1 (naming the file) if either is not what the records give
    python benchmarks/summarize.py --results DIR --out FILE [--details FILE]

``--details`` defaults to ``DETAILS.md`` next to ``--out``; RESULTS.md links to it by its path
relative to RESULTS.md's folder (and DETAILS.md back to RESULTS.md).

Each ``*.jsonl`` file holds one JSON object per line (one run per file by convention:
``<date>_<gpu>_<commit>.jsonl``). Every record carries the run's context
(``date, device, sm, sms, l2_bytes, torch, cuda, commit, command``; optionally
``driver, triton, nvcc, source, section, commit_note, recorded_in``) and a ``bench``
with its own fields:

- ``pairs`` (``bench_pairs.py --jsonl``): ``op, layout, tokens, hidden, dtype, backend,
  bytes, fused_us, triton_us, unfused_us, inductor_us, copy_us, copy_bw_gbs,
  fused_pct_bw``; converted history may give ``copy_pct_bw`` instead of ``copy_us``,
  ``copy_bw_gbs_range`` instead of ``copy_bw_gbs`` and the ratio it printed, ``x_unfused``.
- ``mlp`` and ``host``: ``case, mode, tokens, hidden, intermediate, without_pass_us,
  with_pass_us`` (optional ``speedup``, ``error``).
- ``moe`` (``bench_moe.py --jsonl``): ``case, mode, tokens, hidden, intermediate, experts, topk,
  gemm, backend, without_pass_us, with_pass_us, max_abs_diff``; newer records ``default_config``
  (why the default config keeps the site, or ""), shown as "(kept)" after the speedup.
- ``pass_overhead``: ``case, layers, patterns, registration_ms, first_pass_ms and first_setup_ms (newer
  records), pass_ms, compile_without_s, compile_with_s, pass_fraction``.
- ``constants``: ``name, value, where, decision``, resting on the record's device, date
  and commit.
- ``pairs_baseline``: ``pairs`` cells of another checkout (``commit``) timed in the device call
  whose own commit its ``command`` names as ``(same device call as <commit>)``; shown beside
  that call's ``pairs`` cells, in points of copy bandwidth.

Any other bench is listed generically. Each table shows, per (bench, device), the latest
record of every cell (by date, then UTC time where recorded, then file name, then line): a newer run of some cells
replaces just those. Missing or NaN values print as "-". The output is sorted and has no
timestamps of its own, so the same records always give the same files.

What goes where. DETAILS.md has every cell: the full runs table, the kernel tables with a column
per token count for every variant, recipe, layout and dtype, every end-to-end, host and MoE row,
the tuning and baseline sections and the generic ``Other`` sections. RESULTS.md has the method,
then fixed tables, each compacted one ending in a link to its DETAILS.md section. The compacted
ones (kernels, end to end, host cost, MoE) leave out the records converted from the hand-written
history (``source``: ``converted from RESULTS.md history``; the code of their day, not today's):

- Kernels, per device: the default call of each op (layout ``halves``, the default recipe, no
  variant, bf16 input) at H = 768, 2048 and 7168. An FP8 per-group cell named ``g128`` is the
  default group (``bench_pairs --group-variants`` names it, older records do not): the two are
  one row, the latest record of each T winning. Columns: the decode size (the smallest T >= 16
  among those rows, else their smallest T), T = 4096 and T = 16384; ratios at the largest T shown.
- End to end, host cost and mixture of experts: one table each, a row per device, case and mode
  (and shape, GEMMs), a column per T: the speedup (without pass / with pass; host cost: the µs of
  both). Host cost keeps only the cases recorded on the latest date of the device's host records
  (the current code's cost; older cases are history) and never the A/B experiments' rows.
- Pass overhead and measured constants: every row, converted or not (they are in RESULTS.md only).
- Runs: only the runs that the rows of RESULTS.md name, under the same names as in DETAILS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTEXT = ("date", "time", "device", "sm", "sms", "l2_bytes", "torch", "cuda", "commit", "command", "driver", "triton",
           "nvcc", "source", "section", "commit_note", "recorded_in", "copy_bw_gbs", "copy_bw_gbs_range", "bench")
#: the fields that name a cell, per bench (the rest are measurements)
CELL_KEYS = {
    "pairs": ("op", "variant", "recipe", "layout", "dtype", "tokens", "hidden"),
    "mlp": ("case", "mode", "tokens", "hidden", "intermediate"),
    "host": ("case", "mode", "tokens", "hidden", "intermediate"),
    "moe": ("case", "mode", "tokens", "hidden", "intermediate", "experts", "topk"),
    "pass_overhead": ("case", "layers"),
    "constants": ("name",),
    "tuning": ("plan", "min_tokens"),
    "pairs_baseline": ("op", "variant", "recipe", "layout", "dtype", "tokens", "hidden"),
}
KNOWN = ("pairs", "mlp", "host", "moe", "pass_overhead", "constants", "tuning", "pairs_baseline")
DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "fp32"}
#: the ``source`` of the records transcribed from the hand-written history
CONVERTED = "converted from RESULTS.md history"

METHOD = """\
## Method

- **Timing**: the median of CUDA-graph replays (`triton.testing.do_bench_cudagraph`) of a loop over fresh
  random inputs (`torch.randn(...) * 3`), enough copies to move more than the L2 between two uses of one
  (`QUANTFUSE_BENCH_ROTATE_MB`, default 60 MB): no input L2-resident, no launch gaps. End-to-end cells time
  a compiled model the same way (or as their `mode` says).
- **%BW** = bytes (the minimum a cell moves: input, encoded output, scales; `bench_pairs.cell_bytes`) / time
  / the same run's device-to-device copy bandwidth (a 1 GiB `copy_`, read plus write). **copy %BW**: a copy
  of the cell's bytes timed like the cell, the ceiling at that size (above 100% where L2 serves part of it).
- **x unfused** = unfused pair / fused op; **x Inductor** = Inductor's code for the plain-PyTorch graph /
  fused op; **speedup** = time without the pass / with it (above 1: the pass is faster); **host cost**
  cells: the µs of one eager call without the pass / with it.
- **Provenance**: each row names its runs. Records converted from the hand-written history (in git) keep
  `"source": "converted from RESULTS.md history"`; the compacted tables here leave them to DETAILS.md.
"""


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fnum(v, spec: str) -> str:
    return "-" if missing(v) else format(v, spec)


def sort_key(values) -> tuple:
    """A total order over mixed cell values: None first, numbers before strings."""
    return tuple((0, 0, "") if missing(v) else (1, v, "") if isinstance(v, (int, float)) else (2, 0, str(v))
                 for v in values)


def load(results: Path) -> list[dict]:
    records = []
    for path in sorted(results.glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: {e}") from None
            r["_order"] = (str(r.get("date", "")), str(r.get("time", "")), path.name, n)
            records.append(r)
    return records


def cell_key(r: dict) -> tuple:
    keys = CELL_KEYS.get(r.get("bench"))
    if keys is None:  # generic: every non-context field that is not a float measurement
        keys = tuple(sorted(k for k, v in r.items() if k not in CONTEXT and not k.startswith("_")
                            and isinstance(v, (str, int, bool)) and not isinstance(v, float)))
        return tuple((k, r[k]) for k in keys)
    return tuple(r.get(k) for k in keys)


def latest(records: list[dict]) -> dict[tuple, dict[tuple, dict]]:
    """{(bench, device): {cell: the latest record of that cell}}"""
    out: dict[tuple, dict[tuple, dict]] = {}
    for r in records:
        cells = out.setdefault((str(r.get("bench", "")), str(r.get("device", ""))), {})
        k = cell_key(r)
        if k not in cells or r["_order"] > cells[k]["_order"]:
            cells[k] = r
    return out


def run_of(r: dict) -> tuple:
    return (str(r.get("date", "")), str(r.get("device", "")), str(r.get("commit") or ""), str(r.get("command", "")))


def table(header: list[str], rows: list[list[str]], drop_empty: bool = True) -> list[str]:
    """A markdown table; columns that are "-" in every row are left out."""
    keep = [i for i in range(len(header)) if not drop_empty or i == 0 or any(row[i] != "-" for row in rows)]
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(row[i].replace("|", "\\|") for i in keep) + " |" for row in rows]
    return lines


def pct(r: dict, field: str, us_field: str):
    if not missing(r.get(field)):
        return r[field]
    us, b, bw = r.get(us_field), r.get("bytes"), r.get("copy_bw_gbs")
    if missing(us) or missing(b) or missing(bw) or not us:
        return None
    return b / (us * 1e3) / bw


def ratio(a, b):
    return None if missing(a) or missing(b) or not b else a / b


def device_line(cells: dict[tuple, dict]) -> str:
    r = cells[min(cells, key=sort_key)]
    parts = []
    if r.get("sm"):
        parts.append(f"sm {r['sm']}")
    if r.get("sms"):
        parts.append(f"{r['sms']} SMs")
    if r.get("l2_bytes"):
        parts.append(f"L2 {r['l2_bytes'] / 2**20:g} MiB")
    return f"### {r.get('device') or 'unknown device'}" + (f" ({', '.join(parts)})" if parts else "")


def _run_number(name: str) -> int:
    """The order of a run's name ("R12" -> 12): R2 before R10."""
    return int(name[1:])


def _pair_label(r: dict) -> str:
    op = r.get("op", "-") if r.get("layout") in (None, "halves") else f"{r.get('op')}[{r['layout']}]"
    if r.get("variant"):
        op += f"({r['variant']})"
    if r.get("recipe"):
        op += f" {{{r['recipe']}}}"
    return op


def _tokens_sorted(values) -> list:
    return sorted(set(values), key=lambda t: sort_key([t]))


def _runs(records, run: dict) -> str:
    """The names of the runs a row's records come from, in run order."""
    return ", ".join(sorted({run[run_of(r)] for r in records}, key=_run_number))


def _by_row(cells: dict[tuple, dict], row_key) -> dict[tuple, dict]:
    """{row_key(record): {tokens: record}}: the cells of a table pivoted to a column per token count."""
    rows_of: dict[tuple, dict] = {}
    for r in cells.values():
        rows_of.setdefault(row_key(r), {})[r.get("tokens")] = r
    return rows_of


#: above each kernel table (once per section)
PAIRS_NOTE = "Per T: the fused op's %BW of its same-size copy's %BW, then its µs. Ratios: at the row's largest T."


def _pair_row_key(r: dict) -> tuple:
    return (_pair_label(r), DTYPES.get(r.get("dtype"), str(r.get("dtype", "-"))), r.get("hidden"),
            str(r.get("backend") or "-"))


def _pair_cell(r: dict | None) -> str:
    if r is None:
        return "-"
    copy = pct(r, "copy_pct_bw", "copy_us")
    return (f"{fnum(pct(r, 'fused_pct_bw', 'fused_us'), '.0%')}" + ("" if missing(copy) else f" of {copy:.0%}")
            + f", {fnum(r.get('fused_us'), '.1f')}")


def pairs_section(cells: dict[tuple, dict], run: dict) -> list[str]:
    """One row per (pair, dtype, H, backend), one column per token count: the fused op's %BW, its
    copy's %BW (the ceiling at that size) and its time; the ratios at the row's largest T."""
    rows_of = _by_row(cells, _pair_row_key)
    token_counts = _tokens_sorted(t for by_t in rows_of.values() for t in by_t)
    rows = []
    for key in sorted(rows_of, key=sort_key):
        by_t = rows_of[key]
        big = by_t[max(by_t, key=lambda t: sort_key([t]))]
        x_unfused = big.get("x_unfused")
        if missing(x_unfused):
            x_unfused = ratio(big.get("unfused_us"), big.get("fused_us"))
        rows.append([key[0], key[1], fnum(key[2], "d"), key[3], *[_pair_cell(by_t.get(t)) for t in token_counts],
                     fnum(x_unfused, ".2f"), fnum(ratio(big.get("triton_us"), big.get("fused_us")), ".2f"),
                     fnum(ratio(big.get("inductor_us"), big.get("fused_us")), ".2f"), _runs(by_t.values(), run)])
    return table(["op", "dtype", "H", "backend", *[f"T={fnum(t, 'd')}" for t in token_counts],
                  "x unfused", "Triton / fused", "x Inductor", "runs"], rows)


def _speedup(r: dict):
    s = r.get("speedup")
    return ratio(r.get("without_pass_us"), r.get("with_pass_us")) if missing(s) else s


def _fspeedup(r: dict | None) -> str:
    s = None if r is None else _speedup(r)
    return "-" if missing(s) else f"{s:.3f}x"


def _mlp_shape(r: dict) -> str:
    return "-" if missing(r.get("hidden")) else f"{r['hidden']} -> {fnum(r.get('intermediate'), 'd')}"


def _moe_shape(r: dict) -> str:
    return "-" if missing(r.get("hidden")) else (f"{_mlp_shape(r)}, {fnum(r.get('experts'), 'd')} "
                                                 f"top-{fnum(r.get('topk'), 'd')}")


def _case_mode(r: dict) -> list[str]:
    return [str(r.get("case") or "-"), str(r.get("mode") or "-")]


def model_section(cells: dict[tuple, dict], run: dict) -> list[str]:
    """bench_mlp and host rows: one row per (case, mode, T, shape)."""
    rows = []
    for k in sorted(cells, key=sort_key):
        r = cells[k]
        rows.append([*_case_mode(r), fnum(r.get("tokens"), "d"), _mlp_shape(r),
                     fnum(r.get("without_pass_us"), ".1f"), fnum(r.get("with_pass_us"), ".1f"), _fspeedup(r),
                     str(r.get("error") or "-"), run[run_of(r)]])
    return table(["case", "mode", "T", "D -> I", "without pass µs", "with pass µs", "speedup", "note", "run"], rows)


#: what a MoE cell's "(kept)" means (records with ``default_config``: the reason the default config keeps the site)
MOE_KEPT_NOTE = ("Speedups of the rewrite; \"(kept)\": the default config keeps the site at that size "
                 "(`bench_moe`'s `default_config`: the measured rule of docs/decisions/031-measured-speed-table.md), "
                 "so there the layer runs as without the pass.")


def _moe_cell(r: dict | None) -> str:
    cell = _fspeedup(r)
    return f"{cell} (kept)" if r is not None and r.get("default_config") else cell


def moe_section(cells: dict[tuple, dict], run: dict) -> list[str]:
    """bench_moe rows: one row per (case, mode, T, shape)."""
    rows = []
    for k in sorted(cells, key=sort_key):
        r = cells[k]
        rows.append([*_case_mode(r), fnum(r.get("tokens"), "d"), _moe_shape(r),
                     str(r.get("gemm") or "-"), str(r.get("backend") or "-"), fnum(r.get("without_pass_us"), ".1f"),
                     fnum(r.get("with_pass_us"), ".1f"), _moe_cell(r), run[run_of(r)]])
    return [MOE_KEPT_NOTE, ""] + table(["case", "mode", "T", "D -> I, experts top-k", "GEMMs", "fused op on",
                                        "without pass µs", "with pass µs", "speedup", "run"], rows)


def _host_cell(r: dict | None) -> str:
    return "-" if r is None else f"{fnum(r.get('without_pass_us'), '.1f')} / {fnum(r.get('with_pass_us'), '.1f')}"


def grid(groups: list[tuple[str, dict]], head: list[str], label, cell, run: dict) -> list[str]:
    """One table for every device of a bench: a row per (device, label(record)), the cell but its
    token count; a column per T, cell(record) in it."""
    merged = {(device, k): dict(r, _device=device) for device, cells in groups for k, r in cells.items()}
    rows_of = _by_row(merged, lambda r: (r["_device"], *label(r)))
    token_counts = _tokens_sorted(t for by_t in rows_of.values() for t in by_t)
    rows = [[*key, *[cell(rows_of[key].get(t)) for t in token_counts], _runs(rows_of[key].values(), run)]
            for key in sorted(rows_of, key=sort_key)]
    return table(["device", *head, *[f"T={fnum(t, 'd')}" for t in token_counts], "runs"], rows)


def mlp_grid(groups: list[tuple[str, dict]], run: dict) -> list[str]:
    """The end-to-end speedups, a column per T."""
    return grid(groups, ["case", "mode", "D -> I"], lambda r: [*_case_mode(r), _mlp_shape(r)], _fspeedup, run)


def host_grid(groups: list[tuple[str, dict]], run: dict) -> list[str]:
    """The host cost of one call, without the pass / with it, a column per T."""
    return grid(groups, ["case", "mode", "D -> I"], lambda r: [*_case_mode(r), _mlp_shape(r)], _host_cell, run)


def moe_grid(groups: list[tuple[str, dict]], run: dict) -> list[str]:
    """The MoE layers' speedups, a column per T."""
    return [MOE_KEPT_NOTE, ""] + grid(
        groups, ["case", "mode", "D -> I, experts top-k", "GEMMs", "fused op on"],
        lambda r: [*_case_mode(r), _moe_shape(r), str(r.get("gemm") or "-"), str(r.get("backend") or "-")],
        _moe_cell, run)


def overhead_section(groups: list[tuple[str, dict]], run: dict) -> list[str]:
    rows = []
    for device, cells in groups:
        for k in sorted(cells, key=sort_key):
            r = cells[k]
            rows.append([device, str(r.get("case") or "-"), fnum(r.get("layers"), "d"), fnum(r.get("patterns"), "d"),
                         fnum(r.get("registration_ms"), ".0f"), fnum(r.get("first_pass_ms"), ".0f"),
                         fnum(r.get("first_setup_ms"), ".0f"), fnum(r.get("pass_ms"), ".0f"),
                         fnum(r.get("compile_without_s"), ".2f"), fnum(r.get("compile_with_s"), ".2f"),
                         fnum(r.get("pass_fraction"), ".1%"), run[run_of(r)]])
    return table(["device", "case", "layers", "patterns", "registration ms (all patterns)",
                  "first pass ms (its groups registered)", "of which registering ms", "pass ms",
                  "compile without pass s",
                  "compile with pass s", "pass / compile", "run"], rows)


def constants_section(groups: list[tuple[str, dict]], run: dict) -> list[str]:
    rows = []
    for device, cells in groups:
        for k in sorted(cells, key=sort_key):
            r = cells[k]
            rests = ", ".join(x for x in (device, str(r.get("date") or ""), str(r.get("commit") or "")) if x)
            dec = str(r.get("decision") or "-")
            if dec.startswith("docs/decisions/"):
                dec = f"[{Path(dec).stem[:3]}](../{dec})"
            rows.append([str(r.get("name") or "-"), str(r.get("value") or "-"), f"`{r.get('where')}`"
                         if r.get("where") else "-", rests, dec])
    rows.sort(key=lambda row: (row[0], row[3]))
    return table(["constant", "value", "where", "rests on", "decision"], rows, drop_empty=False)


#: the tuning table lists plans of rows at least this wide (the benchmarks' shapes); a GPU test run
#: tunes hundreds of small test shapes too, which stay in the records
TUNING_MIN_HIDDEN = 2048


def _plan_hidden(r: dict) -> int:
    # tuning.tuning_key: op|recipe|layout|dtype|hidden, the experts ops' with |E<count> after it
    fields = str(r.get("plan", "")).split("|")
    try:
        return int(fields[4])
    except (ValueError, IndexError):
        return TUNING_MIN_HIDDEN  # an unparsable plan is shown rather than hidden


def tuning_section(cells: dict[tuple, dict], run: dict) -> list[str]:
    """One row per plan without its recipe (op, layout, dtype, hidden): per token class every count
    the plan's recipes chose and the largest slowest / chosen ratio among them; the µs of each
    count are in the records."""
    shown = {k: r for k, r in cells.items() if _plan_hidden(r) >= TUNING_MIN_HIDDEN}
    hidden = len(cells) - len(shown)
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for r in shown.values():
        op, recipe, *rest = str(r.get("plan")).split("|")
        groups.setdefault((op, *rest), {}).setdefault(r.get("min_tokens"), []).append(dict(r, _recipe=recipe))
    rows = []
    for key in sorted(groups, key=sort_key):
        classes = [groups[key][c] for c in sorted(groups[key], key=lambda c: sort_key([c]))]
        per_class, runs, recipes = [], set(), set()
        for recs in classes:
            # records before the per-token choice name only the vector count
            label = [str(r.get("choice", r.get("vectors"))) for r in recs]
            chosen = sorted(set(label), key=lambda v: sort_key([v]))
            gains = [ratio(max(r["us"].values()), r["us"].get(c)) for r, c in zip(recs, label) if r.get("us")]
            gains = [g for g in gains if not missing(g)]
            per_class.append(f"T >= {fnum(recs[0].get('min_tokens'), 'd')}: {'/'.join(chosen)}"
                             + (f" ({max(gains):.2f}x)" if gains else ""))
            runs |= {run[run_of(r)] for r in recs}
            recipes |= {r["_recipe"] for r in recs}
        rows.append([", ".join(key), fnum(len(recipes), "d"), "; ".join(per_class),
                     ", ".join(sorted(runs, key=_run_number))])
    note = [f"{hidden} plan(s) of rows narrower than {TUNING_MIN_HIDDEN} (test shapes) are in the records only.", ""] \
        if hidden else []
    return note + ["Per class: the choice made (vectors per thread, or where the per-token kernel keeps its next "
                   "row: registers / shared) by any recipe of the plan and the largest slowest / chosen time; every "
                   "choice's µs is in the records.", ""] + \
        table(["op, layout, dtype, hidden", "recipes", "chosen per token class", "runs"], rows)


def _same_call(r: dict) -> str:
    """The commit of the device call a baseline record was timed in (its command names it)."""
    cmd = str(r.get("command", ""))
    tag = "same device call as "
    return cmd.split(tag, 1)[1].split(")", 1)[0].strip() if tag in cmd else ""


def baseline_matches(cells: dict[tuple, dict], records: list[dict]) -> dict[tuple, dict]:
    """The pairs record of each baseline cell's device call, by the baseline cell's key."""
    pairs = {(r.get("commit"), r.get("device"), cell_key(r)): r for r in records if r.get("bench") == "pairs"}
    found = {k: pairs.get((_same_call(b), b.get("device"), cell_key(dict(b, bench="pairs")))) for k, b in cells.items()}
    return {k: m for k, m in found.items() if m is not None}


def baseline_section(cells: dict[tuple, dict], records: list[dict], run: dict) -> list[str]:
    """Per (baseline, checkout) device call: the cells timed, the median and range of the
    difference in points of copy bandwidth, and every cell more than 2 points slower."""
    matches = baseline_matches(cells, records)
    calls: dict[tuple, list[tuple[dict, dict, float]]] = {}
    for k in sorted(cells, key=sort_key):
        b, m = cells[k], matches.get(k)
        if m is None:
            continue
        pb, pm = pct(b, "fused_pct_bw", "fused_us"), pct(m, "fused_pct_bw", "fused_us")
        if missing(pb) or missing(pm):
            continue
        calls.setdefault((str(b.get("commit")), str(m.get("commit")), run[run_of(m)]), []).append(
            (b, m, (pm - pb) * 100))
    if not calls:
        return ["No baseline cell has its device call's cells in the records."]
    rows = []
    for (base, checkout, name), diffs in sorted(calls.items(), key=lambda kv: _run_number(kv[0][2])):
        points = sorted(d for *_, d in diffs)
        slower = [f"{_pair_label(b)} {fnum(b.get('tokens'), 'd')}x{fnum(b.get('hidden'), 'd')} {d:+.0f}"
                  for b, _, d in diffs if d < -2]
        rows.append([f"`{base}`", f"`{checkout}`", str(len(points)), f"{points[len(points) // 2]:+.0f}",
                     f"{points[0]:+.0f} .. {points[-1]:+.0f}", "; ".join(slower) or "none", name])
    return table(["baseline", "checkout", "cells", "median points", "range", "more than 2 points slower", "run"],
                 rows, drop_empty=False)


def generic_section(cells: dict[tuple, dict], run: dict) -> list[str]:
    fields = sorted({k for r in cells.values() for k in r if k not in CONTEXT and not k.startswith("_")})
    rows = []
    for k in sorted(cells, key=lambda c: sort_key([v for _, v in c])):
        r = cells[k]
        rows.append([fnum(r.get(f), ".4g") if isinstance(r.get(f), float) else
                     "-" if missing(r.get(f)) else str(r.get(f)) for f in fields] + [run[run_of(r)]])
    return table(fields + ["run"], rows, drop_empty=False)


#: RESULTS.md's kernel table: the widths shown (the benchmarked models' hidden sizes) and the
#: prefill token counts shown beside the decode size
SUMMARY_HIDDEN = (768, 2048, 7168)
SUMMARY_TOKENS = (4096, 16384)
#: bench_pairs names the FP8 per-group scheme's default group so (``--group-variants 128``)
DEFAULT_GROUP = "g128"


def decode_tokens(values) -> int | None:
    """The decode size of a table: its smallest T >= 16 (16 where there is one), else its smallest T."""
    ts = [t for t in values if not missing(t)]
    return min((t for t in ts if t >= 16), default=min(ts, default=None))


def measured(cells: dict[tuple, dict]) -> dict[tuple, dict]:
    """The cells a benchmark script recorded: RESULTS.md's compacted tables leave the history
    converted from the hand-written tables (the code of its day, not today's) to DETAILS.md."""
    return {k: r for k, r in cells.items() if r.get("source") != CONVERTED}


def _default_call(r: dict) -> bool:
    return (r.get("layout") in (None, "halves") and not r.get("recipe")
            and r.get("variant") in (None, "", DEFAULT_GROUP) and r.get("dtype") in (None, "bfloat16")
            and r.get("hidden") in SUMMARY_HIDDEN)


def select_pairs(cells: dict[tuple, dict]) -> dict[tuple, dict]:
    """RESULTS.md's kernel cells of one device: each op's default call at the summary widths, at
    the decode size, 4096 and 16384 tokens (the module docstring says why)."""
    folded: dict[tuple, dict] = {}
    for r in measured(cells).values():
        if _default_call(r):
            r = dict(r, variant=None)  # the g128 cell and the unnamed one are one call: the latest wins
            k = cell_key(r)
            if k not in folded or r["_order"] > folded[k]["_order"]:
                folded[k] = r
    shown = {decode_tokens(r.get("tokens") for r in folded.values()), *SUMMARY_TOKENS}
    return {k: r for k, r in folded.items() if r.get("tokens") in shown}


def _ab(r: dict) -> bool:
    # an experiment's A/B rounds ("[A/B ...]" cases) stay in the records and its decision
    return "[A/B" in str(r.get("case"))


def select_host(cells: dict[tuple, dict]) -> dict[tuple, dict]:
    """RESULTS.md's host cells of one device: every cell of the cases (A/B experiments never)
    recorded on the latest date of its host records."""
    kept = {k: r for k, r in measured(cells).items() if not _ab(r)}
    newest = max((str(r.get("date", "")) for r in kept.values()), default="")
    current = {(r.get("case"), r.get("mode")) for r in kept.values() if str(r.get("date", "")) == newest}
    return {k: r for k, r in kept.items() if (r.get("case"), r.get("mode")) in current}


def host_section(cells: dict[tuple, dict], run: dict) -> list[str]:
    """Every host row but the A/B experiments' (counted)."""
    ab = {k for k, r in cells.items() if _ab(r)}
    note = [f"{len(ab)} row(s) of A/B experiments are in the records only.", ""] if ab else []
    return note + model_section({k: r for k, r in cells.items() if k not in ab}, run)


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation but "-" and "_" dropped, spaces to "-"."""
    text = heading.lstrip("#").strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


KERNELS = "Kernels (`bench_pairs.py`)"
MLP = "End to end (`bench_mlp.py`)"
HOST = "Host cost"
MOE = "Mixture of experts (`bench_moe.py`)"
TUNING = "Vectors per thread tuned per device (`custom_ops/tuning.py`, `tuning_records.py`)"
BASELINE = "Against a baseline checkout in the same device call (`gpu_session.sh` baseline stage)"


def _device_title(device: str, cells: dict[tuple, dict]) -> str:
    return f"### {device or 'unknown device'}"


def per_device(groups: dict[str, list[tuple[str, dict]]], bench: str, body, title=_device_title) -> list[str]:
    """A ``###`` block per device of ``bench``: its title, then ``body(cells)``; or a line saying
    there are no such records."""
    if bench not in groups:
        return [f'No records (`bench="{bench}"`).', ""]
    out = []
    for device, cells in groups[bench]:
        out += [title(device, cells), ""] + body(cells) + [""]
    return out


def _section(title: str, lines: list[str], pointer: str | None = None) -> list[str]:
    """A ``##`` section; a compacted one ends with a link to its section of DETAILS.md."""
    out = [f"## {title}", ""] + lines
    if pointer is not None:
        out += [f"All cells: [{pointer}#{slug(title)}]({pointer}#{slug(title)})", ""]
    return out


def runs_table(keys: list[tuple], run: dict, shown: list[dict]) -> list[str]:
    """The runs ``keys`` (run_of keys, in run order) with their date, device, commit, versions,
    copy bandwidth and command."""
    rows = []
    for key in keys:
        sample = next(r for r in shown if run_of(r) == key)
        bw = sample.get("copy_bw_gbs")
        rng = sample.get("copy_bw_gbs_range")
        copy = f"{bw:.0f}" if not missing(bw) else f"{rng[0]}-{rng[1]}" if rng else "-"
        versions = ", ".join(f"{n} {sample[f]}" for n, f in (("torch", "torch"), ("driver", "driver")) if sample.get(f))
        note = " (converted)" if sample.get("source") == CONVERTED else ""
        rows.append([run[key], key[0], key[1], f"`{key[2]}`" if key[2] else
                     (f"recorded in `{sample['recorded_in']}`" if sample.get("recorded_in") else "-"),
                     versions or "-", copy, f"`{key[3]}`{note}" if key[3] else "-"])
    return table(["run", "date", "device", "commit", "versions", "copy GB/s", "command"], rows, drop_empty=False)


def _by_bench(groups: dict[tuple, dict[tuple, dict]]) -> dict[str, list[tuple[str, dict]]]:
    out: dict[str, list[tuple[str, dict]]] = {}
    for (bench, device), cells in sorted(groups.items()):
        out.setdefault(bench, []).append((device, cells))
    return out


#: the benches RESULTS.md shows, and what it shows of each (all cells: dict)
SELECT = {"pairs": select_pairs, "mlp": measured, "host": select_host, "moe": measured, "pass_overhead": dict}


def render_details(by_bench: dict[str, list[tuple[str, dict]]], records: list[dict], run: dict,
                   shown: list[dict], results_link: str) -> str:
    """DETAILS.md: every cell but the method, the pass overhead and the constants (RESULTS.md's)."""
    out = ["# Benchmark details", "",
           "Every cell of the latest records, generated with RESULTS.md by `python benchmarks/summarize.py` from",
           "`benchmarks/results/*.jsonl` (`--check` fails when either is stale). The method, the pass overhead",
           f"and the measured constants are in [RESULTS.md]({results_link}).", ""]
    out += _section("Runs", runs_table(sorted(run, key=sort_key), run, shown) + [""])
    out += _section(KERNELS, [PAIRS_NOTE, ""] + per_device(by_bench, "pairs", lambda c: pairs_section(c, run),
                                                           lambda d, c: device_line(c)))
    out += _section(MLP, per_device(by_bench, "mlp", lambda c: model_section(c, run)))
    out += _section(HOST, per_device(by_bench, "host", lambda c: host_section(c, run)))
    out += _section(MOE, per_device(by_bench, "moe", lambda c: moe_section(c, run)))
    out += _section(TUNING, per_device(by_bench, "tuning", lambda c: tuning_section(c, run)))
    out += _section(BASELINE, per_device(by_bench, "pairs_baseline", lambda c: baseline_section(c, records, run)))
    for bench in sorted(b for b in by_bench if b not in KNOWN):
        out += _section(f"Other: `{bench}`", per_device(by_bench, bench, lambda c: generic_section(c, run)))
    return "\n".join(out).rstrip() + "\n"


def _table_section(title: str, groups: dict[str, list[tuple[str, dict]]], bench: str, body,
                   pointer: str | None = None) -> list[str]:
    """A section of one table over every device of ``bench``: ``body(groups[bench])``."""
    lines = body(groups[bench]) + [""] if bench in groups else [f'No records (`bench="{bench}"`).', ""]
    return _section(title, lines, pointer)


def render_results(by_bench: dict[str, list[tuple[str, dict]]], run: dict, details_link: str) -> str:
    """RESULTS.md: the method, then the fixed tables (the module docstring says which rows)."""
    compact = {bench: [(device, select(cells)) for device, cells in by_bench.get(bench, [])]
               for bench, select in SELECT.items()}
    # a device none of whose cells are shown gets no table; a bench with none, the "No records" line
    compact = {bench: [(d, c) for d, c in groups if c] for bench, groups in compact.items()}
    compact = {bench: groups for bench, groups in compact.items() if groups}
    shown = [r for groups in compact.values() for _, cells in groups for r in cells.values()]
    out = ["# Benchmark results", "",
           "Generated by `python benchmarks/summarize.py` from `benchmarks/results/*.jsonl`, with "
           f"[DETAILS.md]({details_link}) (every cell);",
           "edit the records (`--check` fails when either file is stale). What the numbers decided: `docs/decisions/`.",
           "", METHOD.rstrip(), ""]
    out += _section("Runs", runs_table(sorted({run_of(r) for r in shown}, key=sort_key), run, shown) + [""])
    out += _section(KERNELS, [f"Each op's default call (halves, default recipe, no variant, bf16) at H = "
                              f"{', '.join(map(str, SUMMARY_HIDDEN))}. {PAIRS_NOTE}", ""]
                    + per_device(compact, "pairs", lambda c: pairs_section(c, run), lambda d, c: device_line(c)),
                    details_link)
    out += _table_section(MLP, compact, "mlp", lambda g: mlp_grid(g, run), details_link)
    out += _table_section(HOST, compact, "host", lambda g: host_grid(g, run), details_link)
    out += _table_section(MOE, compact, "moe", lambda g: moe_grid(g, run), details_link)
    out += _table_section("Pass overhead (`bench_pass_overhead.py`)", compact, "pass_overhead",
                          lambda g: overhead_section(g, run))
    out += _table_section("Measured constants", by_bench, "constants", lambda g: constants_section(g, run))
    return "\n".join(out).rstrip() + "\n"


def render(records: list[dict], details_link: str = "DETAILS.md", results_link: str = "RESULTS.md") -> tuple[str, str]:
    """(RESULTS.md, DETAILS.md) of the records, each file linking to the other by the path given."""
    groups = latest(records)
    by_bench = _by_bench(groups)
    # constants rest on their own runs (named in their table), not listed as runs
    shown = [r for (bench, _), cells in groups.items() if bench != "constants" for r in cells.values()]
    # the device calls a baseline was timed in are runs too, when a later run replaced their cells
    shown += [m for (bench, _), cells in groups.items() if bench == "pairs_baseline"
              for m in baseline_matches(cells, records).values()]
    runs = sorted({run_of(r) for r in shown}, key=sort_key)
    run = {key: f"R{i + 1}" for i, key in enumerate(runs)}
    return (render_results(by_bench, run, details_link),
            render_details(by_bench, records, run, shown, results_link))


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check compare) RESULTS.md and DETAILS.md; 1 when a checked file is stale."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=HERE / "results", help="directory of *.jsonl records")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--details", type=Path, help="the file of every cell (default: DETAILS.md next to --out)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if --out or --details differs from what the records give")
    args = p.parse_args(argv)
    details = args.details or args.out.parent / "DETAILS.md"
    texts = render(load(args.results), Path(os.path.relpath(details, args.out.parent)).as_posix(),
                   Path(os.path.relpath(args.out, details.parent)).as_posix())
    stale = False
    for path, text in zip((args.out, details), texts):
        if not args.check:
            path.write_text(text)
        elif (path.read_text() if path.exists() else "") != text:
            print(f"{path} is stale: run python benchmarks/summarize.py", file=sys.stderr)
            stale = True
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
