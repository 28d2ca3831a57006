"""Why a kernel is as fast as it is: ncu's warp stall reasons, instructions and occupancy of
fused-op launch choices, side by side in one profiled process.

    python benchmarks/probe_stalls.py [--tokens 4096] [--hidden 7168] [--act silu_and_mul]
        [--cases "fp8_per_token;fp8_per_token vectors=2;fp8_per_group recipe=floor_at=scale,eps=1e-06"]
        [--jsonl FILE]

Each case is a scheme key, then optional ``vectors=N`` / ``row_stages=N`` (a forced launch choice,
``tuning.Choice``) and ``recipe=SPEC`` (``catalog.Recipe.spec``); FP8 per-group takes its default
group of 128. The script runs itself under ``ncu`` (which must be on PATH): the child calls each
case's plan through the CUDA backend twice, inside ``cudaProfilerStart`` / ``Stop``, on fresh random
inputs (``randn * 3``), after warm-up calls outside it. Per launch: duration, DRAM bytes per second,
warp instructions, issue and warp occupancy, registers, grid and block, and every stall reason of
at least 0.05 cycles per issued instruction (``smsp__average_warps_issue_stalled_*_per_issue_active``:
``wait`` fixed-latency dependencies, ``long_scoreboard`` memory, ``no_instruction`` instruction fetch,
``not_selected`` a ready warp another one beat, i.e. issue-bound). ``--jsonl`` appends one record
per launch (``bench="ncu"``, ``case``, ``call``, with ``bench_pairs.run_info``'s context).
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

METRICS = ("gpu__time_duration.sum,dram__bytes.sum.per_second,smsp__inst_executed.sum,"
           "smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,"
           "launch__registers_per_thread,launch__block_size,launch__grid_size,"
           "regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio")
STALL = ("smsp__average_warps_issue_stalled_", "_per_issue_active.ratio")
#: the units the records' conversions assume
BASE_UNITS = {"gpu__time_duration.sum": "ns", "dram__bytes.sum.per_second": "byte/s"}
CALLS = 2
DEFAULT_CASES = ("fp8_per_token;fp8_per_token vectors=2;fp8_per_token vectors=4 row_stages=1;"
                 "fp8_per_token recipe=floor_at=scale,eps=1e-06;fp8_per_group;"
                 "fp8_per_group recipe=floor_at=scale,eps=1e-06")


def parse_case(text: str) -> tuple[str, dict, str]:
    """(scheme key, tuning.Choice fields, recipe spec) of one ``--cases`` entry."""
    scheme, *fields = text.split()
    choice, recipe = {}, ""
    for f in fields:
        key, _, value = f.partition("=")
        if key == "recipe":
            recipe = value
        elif key in ("vectors", "row_stages"):
            choice[key] = int(value)
        else:
            raise SystemExit(f"probe_stalls: unknown case field {key!r} in {text!r}")
    return scheme, choice, recipe


def child(args) -> None:
    """Run the cases under the profiler (the process ncu profiles)."""
    import torch

    from quantfuse import catalog
    from quantfuse.custom_ops import cuda_backend, tuning
    from quantfuse.custom_ops import plan as plans

    act = catalog.ACTIVATIONS[args.act]
    width = args.hidden * (2 if act.gated else 1)
    xs = [torch.randn(args.tokens, width, device="cuda", dtype=torch.bfloat16) * 3 for _ in range(CALLS + 2)]
    launches = []
    for text in args.cases.split(";"):
        scheme, choice, recipe = parse_case(text)
        name = catalog.fused_op_name(args.act, scheme)
        params = (128,) if scheme == "fp8_per_group" else ()
        plan = plans.make_plan(catalog.OPS[name], xs[0], params, recipe=recipe)
        outputs = plan.empty_outputs(xs[0].device)
        pick = tuning.Choice(**choice)
        launches.append(lambda x, plan=plan, outputs=outputs, pick=pick: cuda_backend._launch(
            plan, outputs, x, None, None, pick))
    for launch in launches:
        for x in xs:
            err = launch(x)
            assert not err, err
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for launch in launches:
        for x in xs[:CALLS]:
            launch(x)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def records(csv_text: str, cases: list[str]) -> list[dict]:
    """One record per profiled launch of ncu's raw CSV page, in launch order (CALLS per case)."""
    rows = list(csv.reader(io.StringIO(csv_text[csv_text.index('"ID"'):])))
    head, units, data = rows[0], rows[1], [r for r in rows[2:] if len(rows[0]) == len(r)]
    col = {h: i for i, h in enumerate(head)}
    for name, unit in BASE_UNITS.items():
        if name in col and units[col[name]] != unit:
            raise ValueError(f"probe_stalls: {name} in {units[col[name]]!r}, not {unit!r} (ncu --print-units base)")
    out = []
    for i, r in enumerate(data):
        get = lambda name: _number(r[col[name]]) if name in col else None  # noqa: E731
        dram = get("dram__bytes.sum.per_second")
        out.append(dict(
            bench="ncu", case=cases[i // CALLS], call=i % CALLS, kernel=r[col["Kernel Name"]][:120],
            duration_us=(get("gpu__time_duration.sum") or 0) / 1000, dram_gbs=dram / 1e9 if dram else None,
            warp_instructions=get("smsp__inst_executed.sum"),
            issue_active_pct=get("smsp__issue_active.avg.pct_of_peak_sustained_active"),
            warps_active_pct=get("sm__warps_active.avg.pct_of_peak_sustained_active"),
            registers=get("launch__registers_per_thread"), grid=get("launch__grid_size"),
            block=get("launch__block_size"),
            stalls_per_issue={h[len(STALL[0]):-len(STALL[1])]: v for h in head
                              if h.startswith(STALL[0]) and (v := get(h)) is not None and v >= 0.05}))
    return out


def catalog_op(act: str, scheme: str) -> str:
    """The fused op a case runs."""
    from quantfuse import catalog

    return catalog.fused_op_name(act, scheme)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--act", default="silu_and_mul")
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--jsonl")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    from bench_pairs import run_info, write_records

    cmd = ["ncu", "--clock-control", "none", "--profile-from-start", "off", "--metrics", METRICS, "--csv",
           "--page", "raw", "--print-units", "base", sys.executable, __file__, "--child", "--tokens", str(args.tokens), "--hidden",
           str(args.hidden), "--act", args.act, "--cases", args.cases]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or '"ID"' not in done.stdout:
        raise SystemExit(f"probe_stalls: ncu failed ({done.returncode}):\n{done.stderr[-2000:]}")
    cases = args.cases.split(";")
    recs = [dict(r, op=catalog_op(args.act, parse_case(r["case"])[0]), tokens=args.tokens, hidden=args.hidden,
                 dtype="bfloat16") for r in records(done.stdout, cases)]
    for r in recs:
        top = sorted(r["stalls_per_issue"].items(), key=lambda kv: -kv[1])[:5]
        print(f"{r['case']:<48} {r['duration_us']:7.1f} µs  regs {r['registers']:.0f}  issue {r['issue_active_pct']:.0f}%"
              f"  warps {r['warps_active_pct']:.0f}%  " + " ".join(f"{k}={v:.2f}" for k, v in top))
    if args.jsonl:
        write_records(args.jsonl, recs, run_info())


if __name__ == "__main__":
    main()
