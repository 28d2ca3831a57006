"""benchmarks/probe_stalls.py's CPU side: its case syntax and the records it reads from ncu's CSV."""

from __future__ import annotations

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import probe_stalls  # noqa: E402

HEAD = ["ID", "Kernel Name", "gpu__time_duration.sum", "dram__bytes.sum.per_second", "smsp__inst_executed.sum",
        "launch__registers_per_thread",
        "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",
        "smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio"]


def _csv(units: list[str], rows: list[list[str]]) -> str:
    line = lambda cells: ",".join(f'"{c}"' for c in cells)  # noqa: E731
    # what the child and ncu print before the table stays out of it
    return "==PROF== Connected\n" + "\n".join(line(r) for r in [HEAD, units, *rows]) + "\n"


def test_cases_name_a_scheme_a_forced_choice_and_a_recipe():
    assert probe_stalls.parse_case("fp8_per_token") == ("fp8_per_token", {}, "")
    assert probe_stalls.parse_case("fp8_per_token vectors=4 row_stages=1 recipe=floor_at=scale,eps=1e-06") == (
        "fp8_per_token", {"vectors": 4, "row_stages": 1}, "floor_at=scale,eps=1e-06")
    with pytest.raises(SystemExit, match="unknown case field 'blocks'"):
        probe_stalls.parse_case("fp8_per_group blocks=2")


def test_records_convert_units_and_keep_the_stalls_that_count():
    units = ["", "", "ns", "byte/s", "inst", "register/thread", "", ""]
    rows = [["0", "kernel_a(x)", "51,456", "2,711,567,164,179.10", "27,340,264", "128", "1.26", "0.04"],
            ["1", "kernel_a(x)", "51,264", "2,700,000,000,000", "27,340,264", "128", "1.25", "0.19"],
            ["2", "kernel_b(x)", "42,752", "3,300,000,000,000", "30,007,296", "64", "1.46", "0.23"]]
    recs = probe_stalls.records(_csv(units, rows), ["case a", "case b"])
    assert [(r["case"], r["call"]) for r in recs] == [("case a", 0), ("case a", 1), ("case b", 0)]
    assert recs[0]["duration_us"] == pytest.approx(51.456)
    assert recs[0]["dram_gbs"] == pytest.approx(2711.567164)
    assert recs[0]["warp_instructions"] == 27340264 and recs[2]["registers"] == 64
    # below 0.05 cycles per issue a stall reason is left out
    assert recs[0]["stalls_per_issue"] == {"wait": 1.26}
    assert recs[1]["stalls_per_issue"] == {"wait": 1.25, "no_instruction": 0.19}


def test_records_refuse_units_they_would_misread():
    units = ["", "", "us", "Tbyte/s", "inst", "register/thread", "", ""]
    with pytest.raises(ValueError, match="gpu__time_duration.sum in 'us'"):
        probe_stalls.records(_csv(units, [["0", "k", "51.4", "2.7", "1", "1", "1", "1"]]), ["a"])
