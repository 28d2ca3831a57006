"""Generate benchmarks/RESULTS.md from the benchmark records in benchmarks/results/*.jsonl.

    python benchmarks/summarize.py            # rewrite benchmarks/RESULTS.md
    python benchmarks/summarize.py --check    # exit 1 if RESULTS.md is not what the records give
    python benchmarks/summarize.py --results DIR --out FILE

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
  gemm, backend, without_pass_us, with_pass_us, max_abs_diff``.
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
timestamps of its own, so the same records always give the same file.
"""

from __future__ import annotations

import argparse
import json
import math
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

METHOD = """\
## Method

- **Timing.** Every kernel cell is the median of CUDA-graph replays
  (`triton.testing.do_bench_cudagraph`) of a loop that rotates over fresh random inputs
  (`torch.randn(...) * 3`), enough copies to move more than the L2 between two uses of
  one copy (`QUANTFUSE_BENCH_ROTATE_MB`, default 60 MB), so no input is L2-resident and
  there are no launch gaps. End-to-end cells time a compiled model the same way (or as
  stated by their `mode`).
- **Bytes** are the minimum a cell must move: the input, the encoded output and the
  scales (`bench_pairs.cell_bytes`, from the catalog).
- **%BW** is bytes / time / the device-to-device copy bandwidth measured in the same run
  (a 1 GiB `copy_`, read plus write). **copy %BW** is a copy of the cell's own bytes,
  rotated and timed like the cell: the ceiling at that size (above 100% where L2 serves
  part of it). **x unfused** = unfused pair / fused op; **x Inductor** = Inductor's code
  for the plain-PyTorch graph / fused op.
- **Provenance.** Each row names its run (table below). Records converted from the
  hand-written history keep `"source": "converted from RESULTS.md history"`; the history
  itself is in git, and what it decided is in `docs/decisions/`.
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


def pairs_section(cells: dict[tuple, dict], run: dict) -> list[str]:
    """One row per (pair, dtype, H, backend), one column per token count: the fused op's %BW, its
    copy's %BW (the ceiling at that size) and its time; the ratios at the row's largest T."""
    rows_of: dict[tuple, dict[int, dict]] = {}
    for r in cells.values():
        key = (_pair_label(r), DTYPES.get(r.get("dtype"), str(r.get("dtype", "-"))), r.get("hidden"),
               str(r.get("backend") or "-"))
        rows_of.setdefault(key, {})[r.get("tokens")] = r
    token_counts = sorted({t for by_t in rows_of.values() for t in by_t}, key=lambda t: sort_key([t]))
    rows = []
    for key in sorted(rows_of, key=sort_key):
        by_t = rows_of[key]
        per_t = []
        for t in token_counts:
            r = by_t.get(t)
            if r is None:
                per_t.append("-")
                continue
            copy = pct(r, "copy_pct_bw", "copy_us")
            per_t.append(f"{fnum(pct(r, 'fused_pct_bw', 'fused_us'), '.0%')}"
                         + ("" if missing(copy) else f" of {copy:.0%}") + f", {fnum(r.get('fused_us'), '.1f')}")
        big = by_t[max(by_t, key=lambda t: sort_key([t]))]
        x_unfused = big.get("x_unfused")
        if missing(x_unfused):
            x_unfused = ratio(big.get("unfused_us"), big.get("fused_us"))
        runs = sorted({run[run_of(r)] for r in by_t.values()}, key=_run_number)
        rows.append([key[0], key[1], fnum(key[2], "d"), key[3], *per_t, fnum(x_unfused, ".2f"),
                     fnum(ratio(big.get("triton_us"), big.get("fused_us")), ".2f"),
                     fnum(ratio(big.get("inductor_us"), big.get("fused_us")), ".2f"), ", ".join(runs)])
    return ["Per T: the fused op's %BW of its same-size copy's %BW, then its µs. Ratios: at the row's "
            "largest T.", ""] + table(["op", "dtype", "H", "backend", *[f"T={fnum(t, 'd')}" for t in token_counts],
                                       "x unfused", "Triton / fused", "x Inductor", "runs"], rows)


def model_section(cells: dict[tuple, dict], run: dict) -> list[str]:
    rows = []
    for k in sorted(cells, key=sort_key):
        r = cells[k]
        speedup = r.get("speedup")
        if missing(speedup):
            speedup = ratio(r.get("without_pass_us"), r.get("with_pass_us"))
        shape = "-" if missing(r.get("hidden")) else f"{r['hidden']} -> {fnum(r.get('intermediate'), 'd')}"
        rows.append([str(r.get("case") or "-"), str(r.get("mode") or "-"), fnum(r.get("tokens"), "d"), shape,
                     fnum(r.get("without_pass_us"), ".1f"), fnum(r.get("with_pass_us"), ".1f"),
                     "-" if missing(speedup) else f"{speedup:.3f}x", str(r.get("error") or "-"), run[run_of(r)]])
    return table(["case", "mode", "T", "D -> I", "without pass µs", "with pass µs", "speedup", "note", "run"], rows)


def moe_section(cells: dict[tuple, dict], run: dict) -> list[str]:
    rows = []
    for k in sorted(cells, key=sort_key):
        r = cells[k]
        speedup = ratio(r.get("without_pass_us"), r.get("with_pass_us"))
        shape = "-" if missing(r.get("hidden")) else (f"{r['hidden']} -> {fnum(r.get('intermediate'), 'd')}, "
                                                      f"{fnum(r.get('experts'), 'd')} top-{fnum(r.get('topk'), 'd')}")
        rows.append([str(r.get("case") or "-"), str(r.get("mode") or "-"), fnum(r.get("tokens"), "d"), shape,
                     str(r.get("gemm") or "-"), str(r.get("backend") or "-"), fnum(r.get("without_pass_us"), ".1f"),
                     fnum(r.get("with_pass_us"), ".1f"), "-" if missing(speedup) else f"{speedup:.3f}x",
                     run[run_of(r)]])
    return table(["case", "mode", "T", "D -> I, experts top-k", "GEMMs", "fused op on", "without pass µs",
                  "with pass µs", "speedup", "run"], rows)


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


def render(records: list[dict]) -> str:
    groups = latest(records)
    # constants rest on their own runs (named in their table), not listed as runs
    shown = [r for (bench, _), cells in groups.items() if bench != "constants" for r in cells.values()]
    # the device calls a baseline was timed in are runs too, when a later run replaced their cells
    shown += [m for (bench, _), cells in groups.items() if bench == "pairs_baseline"
              for m in baseline_matches(cells, records).values()]
    runs = sorted({run_of(r) for r in shown}, key=sort_key)
    run = {key: f"R{i + 1}" for i, key in enumerate(runs)}
    by_bench: dict[str, list[tuple[str, dict]]] = {}
    for (bench, device), cells in sorted(groups.items()):
        by_bench.setdefault(bench, []).append((device, cells))

    out = ["# Benchmark results", "",
           "Generated by `python benchmarks/summarize.py` from `benchmarks/results/*.jsonl`: edit the",
           "records, not this file (`--check` fails when it is stale). What these numbers decided is in",
           "`docs/decisions/`; the run-by-run history is in git.", "", METHOD.rstrip(), "", "## Runs", ""]
    run_rows = []
    for key in runs:
        sample = next(r for r in shown if run_of(r) == key)
        bw = sample.get("copy_bw_gbs")
        rng = sample.get("copy_bw_gbs_range")
        copy = f"{bw:.0f}" if not missing(bw) else f"{rng[0]}-{rng[1]}" if rng else "-"
        versions = ", ".join(f"{n} {sample[f]}" for n, f in (("torch", "torch"), ("driver", "driver")) if sample.get(f))
        note = " (converted)" if sample.get("source") == "converted from RESULTS.md history" else ""
        run_rows.append([run[key], key[0], key[1], f"`{key[2]}`" if key[2] else
                         (f"recorded in `{sample['recorded_in']}`" if sample.get("recorded_in") else "-"),
                         versions or "-", copy, f"`{key[3]}`{note}" if key[3] else "-"])
    out += table(["run", "date", "device", "commit", "versions", "copy GB/s", "command"], run_rows, drop_empty=False)

    out += ["", "## Kernels (`bench_pairs.py`)", ""]
    for device, cells in by_bench.get("pairs", []):
        out += [device_line(cells), ""] + pairs_section(cells, run) + [""]
    if "pairs" not in by_bench:
        out += ['No records (`bench="pairs"`).', ""]
    for bench, title in (("mlp", "End to end (`bench_mlp.py`)"), ("host", "Host cost")):
        out += [f"## {title}", ""]
        for device, cells in by_bench.get(bench, []):
            # an experiment's A/B rounds ("[A/B ...]" cases) stay in the records and its decision
            ab = {k for k, r in cells.items() if "[A/B" in str(r.get("case"))}
            note = [f"{len(ab)} row(s) of A/B experiments are in the records only.", ""] if ab else []
            out += [f"### {device or 'unknown device'}", ""] + note + \
                model_section({k: r for k, r in cells.items() if k not in ab}, run) + [""]
        if bench not in by_bench:
            out += [f'No records (`bench="{bench}"`).', ""]
    out += ["## Mixture of experts (`bench_moe.py`)", ""]
    for device, cells in by_bench.get("moe", []):
        out += [f"### {device or 'unknown device'}", ""] + moe_section(cells, run) + [""]
    if "moe" not in by_bench:
        out += ['No records (`bench="moe"`).', ""]
    out += ["## Pass overhead (`bench_pass_overhead.py`)", ""]
    out += overhead_section(by_bench["pass_overhead"], run) if "pass_overhead" in by_bench else \
        ['No records (`bench="pass_overhead"`).']
    out += ["", "## Vectors per thread tuned per device (`custom_ops/tuning.py`, `tuning_records.py`)", ""]
    for device, cells in by_bench.get("tuning", []):
        out += [f"### {device or 'unknown device'}", ""] + tuning_section(cells, run) + [""]
    if "tuning" not in by_bench:
        out += ['No records (`bench="tuning"`).', ""]
    out += ["", "## Against a baseline checkout in the same device call (`gpu_session.sh` baseline stage)", ""]
    for device, cells in by_bench.get("pairs_baseline", []):
        out += [f"### {device or 'unknown device'}", ""] + baseline_section(cells, records, run) + [""]
    if "pairs_baseline" not in by_bench:
        out += ['No records (`bench="pairs_baseline"`).', ""]
    out += ["", "## Measured constants", ""]
    out += constants_section(by_bench["constants"], run) if "constants" in by_bench else \
        ['No records (`bench="constants"`).']
    for bench in sorted(b for b in by_bench if b not in KNOWN):
        out += ["", f"## Other: `{bench}`", ""]
        for device, cells in by_bench[bench]:
            out += [f"### {device or 'unknown device'}", ""] + generic_section(cells, run) + [""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=HERE / "results", help="directory of *.jsonl records")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--check", action="store_true", help="exit 1 if --out differs from what the records give")
    args = p.parse_args(argv)
    text = render(load(args.results))
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python benchmarks/summarize.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
