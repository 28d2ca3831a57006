"""benchmarks/summarize.py: RESULTS.md and DETAILS.md generated from the JSON Lines records (CPU, no torch)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("summarize", ROOT / "benchmarks" / "summarize.py")
summarize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summarize)

H100 = dict(device="NVIDIA H100 80GB HBM3", sm="90", sms=132, l2_bytes=50 * 2**20, torch="2.11.0+cu130",
            cuda="13.0")


def pair(date, commit, fused_us, **kw):
    """A bench_pairs record as write_records writes it (64 x 2048 SiLU x FP8 per-group)."""
    rec = dict(H100, date=date, commit=commit, command="benchmarks/bench_pairs.py --jsonl x.jsonl", bench="pairs",
               op="silu_and_mul_per_block_quant", layout="halves", tokens=4096, hidden=2048, dtype="bfloat16",
               backend="cuda", bytes=42_000_000, fused_us=fused_us, triton_us=float("nan"), unfused_us=30.0,
               inductor_us=float("nan"), copy_us=14.0, copy_bw_gbs=3000.0, fused_pct_bw=42e6 / (fused_us * 1e3) / 3000)
    rec.update(kw)
    return rec


def write(d: Path, name: str, records: list[dict]) -> None:
    d.mkdir(exist_ok=True)
    (d / name).write_text("".join(json.dumps(r) + "\n" for r in records))


def run(tmp_path, *extra) -> tuple[int, str, str]:
    """summarize.main on tmp_path/results: its exit status, RESULTS.md and DETAILS.md ("" if absent)."""
    out, details = tmp_path / "RESULTS.md", tmp_path / "DETAILS.md"
    rc = summarize.main(["--results", str(tmp_path / "results"), "--out", str(out), *extra])
    return rc, *(p.read_text() if p.exists() else "" for p in (out, details))


def section(text: str, title: str) -> str:
    """The body of the ``## title...`` section of a generated file."""
    return text.split(f"\n## {title}")[1].split("\n## ")[0]


def committed() -> tuple[str, str]:
    """(RESULTS.md, DETAILS.md) of the committed records."""
    return summarize.render(summarize.load(summarize.HERE / "results"))


def test_pairs_rows_and_latest_record_per_cell(tmp_path):
    d = tmp_path / "results"
    write(d, "2026-12-01_H100_aaaaaaa.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0),
                                               pair("2026-12-01", "aaaaaaa", 2.0, tokens=64)])
    # a later run of one cell replaces that cell only; a bf16 and an f16 cell are distinct
    write(d, "2026-12-02_H100_bbbbbbb.jsonl", [pair("2026-12-02", "bbbbbbb", 15.0),
                                               pair("2026-12-02", "bbbbbbb", 17.5, dtype="float16")])
    rc, text, details = run(tmp_path)
    assert rc == 0
    bf16 = ("| silu_and_mul_per_block_quant | bf16 | 2048 | cuda | 700% of 100%, 2.0 | 93% of 100%, 15.0 | 2.00 "
            "| R1, R2 |")
    f16 = "| silu_and_mul_per_block_quant | f16 | 2048 | cuda | - | 80% of 100%, 17.5 | 1.71 | R2 |"
    for lines in (text.splitlines(), details.splitlines()):
        assert "### NVIDIA H100 80GB HBM3 (sm 90, 132 SMs, L2 50 MiB)" in lines
        # one column per T; all-empty columns (Triton, Inductor: NaN) are left out
        assert "| op | dtype | H | backend | T=64 | T=4096 | x unfused | runs |" in lines
        # per T: fused %BW of the same-size copy's %BW, then µs; x unfused at the row's largest T
        assert bf16 in lines
        assert ("| R2 | 2026-12-02 | NVIDIA H100 80GB HBM3 | `bbbbbbb` | torch 2.11.0+cu130 | 3000 | "
                "`benchmarks/bench_pairs.py --jsonl x.jsonl` |") in lines
        assert 'No records (`bench="host"`).' in lines
    # RESULTS.md's kernel rows are bf16 (the default call); the f16 row is in DETAILS.md
    assert f16 in details.splitlines() and f16 not in text
    assert ", 20.0 |" not in text + details  # the superseded 4096 x 2048 record
    # sorted: bf16 before f16
    assert details.index("| bf16 | 2048 |") < details.index("| f16 | 2048 |")


def test_other_benches_and_generic(tmp_path):
    d = tmp_path / "results"
    ctx = dict(H100, date="2026-12-01", commit="ccccccc", command="c")
    write(d, "2026-12-01_H100_ccccccc.jsonl", [
        dict(ctx, bench="host", case="fp8 mlp stack", mode="default", tokens=16, hidden=7168, intermediate=2048,
             without_pass_us=926.0, with_pass_us=1970.0),
        dict(ctx, bench="constants", name="evict-first gate", value="1 L2", where="csrc/x.cuh",
             decision="docs/decisions/001-x.md"),
        dict(ctx, bench="mystery", knob="a", size=3, time_us=1.25),
    ])
    rc, text, details = run(tmp_path)
    lines, detail_lines = text.splitlines(), details.splitlines()
    # RESULTS.md: the host cost per T (µs without / with the pass); DETAILS.md: the whole row
    assert "| NVIDIA H100 80GB HBM3 | fp8 mlp stack | default | 7168 -> 2048 | 926.0 / 1970.0 | R1 |" in lines
    assert "| fp8 mlp stack | default | 16 | 7168 -> 2048 | 926.0 | 1970.0 | 0.470x | R1 |" in detail_lines
    assert ("| evict-first gate | 1 L2 | `csrc/x.cuh` | NVIDIA H100 80GB HBM3, 2026-12-01, ccccccc | "
            "[001](../docs/decisions/001-x.md) |") in lines
    assert "## Other: `mystery`" in detail_lines and "mystery" not in text
    assert "| knob | size | time_us | run |" in detail_lines
    assert "| a | 3 | 1.25 | R1 |" in detail_lines


def test_deterministic_and_check_detects_staleness(tmp_path):
    d = tmp_path / "results"
    write(d, "b.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0, hidden=7168)])
    write(d, "a.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0)])
    rc, *first = run(tmp_path)
    assert rc == 0
    assert run(tmp_path, "--check")[0] == 0
    rc, *again = run(tmp_path)
    assert again == first
    write(d, "c.jsonl", [pair("2026-12-03", "ddddddd", 14.0)])
    assert run(tmp_path, "--check")[0] == 1
    (tmp_path / "RESULTS.md").unlink()
    assert run(tmp_path, "--check")[0] == 1


def test_bad_line_names_the_file(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    (d / "x.jsonl").write_text("{not json\n")
    with pytest.raises(SystemExit, match="x.jsonl:1"):
        run(tmp_path)


def test_committed_results_md_is_up_to_date():
    """Both committed files are what the committed records give."""
    assert summarize.main(["--check"]) == 0, "run: python benchmarks/summarize.py"
    results, details = committed()
    assert (summarize.HERE / "RESULTS.md").read_text() == results
    assert (summarize.HERE / "DETAILS.md").read_text() == details


def test_moe_table(tmp_path):
    """bench_moe.py's records: one row per (case, mode, T), the latest run of a cell replacing it."""
    ctx = dict(H100, device="NVIDIA H200", date="2026-12-02", command="benchmarks/bench_moe.py --jsonl x.jsonl")
    cell = dict(bench="moe", case="qwen3-30b-a3b token scales", tokens=4096, hidden=2048, intermediate=768,
                experts=128, topk=8, gemm="_scaled_grouped_mm", backend="cuda", max_abs_diff=0.0)
    write(tmp_path / "results", "2026-12-02_H200_ddddddd.jsonl", [
        dict(ctx, commit="ddddddd", **cell, mode="cuda graph", without_pass_us=1904.0, with_pass_us=1825.0),
        dict(ctx, commit="ddddddd", **cell, mode="plain calls", without_pass_us=2100.0, with_pass_us=2000.0)])
    write(tmp_path / "results", "2026-12-03_H200_eeeeeee.jsonl", [
        dict(ctx, date="2026-12-03", commit="eeeeeee", **cell, mode="plain calls", without_pass_us=2100.0,
             with_pass_us=1500.0, default_config="kept for speed: ...")])
    rc, text, details = run(tmp_path)
    lines = details.splitlines()
    assert rc == 0 and 'No records (`bench="moe"`).' not in lines + text.splitlines()
    assert ("| case | mode | T | D -> I, experts top-k | GEMMs | fused op on | without pass µs | with pass µs | "
            "speedup | run |") in lines
    assert ("| qwen3-30b-a3b token scales | cuda graph | 4096 | 2048 -> 768, 128 top-8 | _scaled_grouped_mm | cuda "
            "| 1904.0 | 1825.0 | 1.043x | R1 |") in lines
    assert ("| qwen3-30b-a3b token scales | plain calls | 4096 | 2048 -> 768, 128 top-8 | _scaled_grouped_mm | cuda "
            "| 2100.0 | 1500.0 | 1.400x (kept) | R2 |") in lines
    assert "| 2000.0 |" not in details
    assert details.index("## Mixture of experts (`bench_moe.py`)") < details.index(
        "### NVIDIA H200\n\n" + summarize.MOE_KEPT_NOTE + "\n\n| case | mode | T | D")
    # RESULTS.md: a row per (device, case, mode, shape), the speedup per T
    moe = section(text, "Mixture of experts").splitlines()
    assert ("| device | case | mode | D -> I, experts top-k | GEMMs | fused op on | T=4096 | runs |") in moe
    assert ("| NVIDIA H200 | qwen3-30b-a3b token scales | plain calls | 2048 -> 768, 128 top-8 | _scaled_grouped_mm "
            "| cuda | 1.400x (kept) | R2 |") in moe
    assert summarize.MOE_KEPT_NOTE in moe and summarize.MOE_KEPT_NOTE in lines


def test_group_variants_are_cells_of_their_own_and_a_later_time_wins(tmp_path):
    d = tmp_path / "results"
    # two variants of one op and shape (bench_pairs --group-variants), and a run of one of them
    # later the same day (in a file that sorts first by name): the UTC time decides
    write(d, "2026-12-01_H100_bbbbbbb.jsonl", [pair("2026-12-01", "bbbbbbb", 20.0, time="10:00:00"),
                                               pair("2026-12-01", "bbbbbbb", 25.0, time="10:00:00",
                                                    variant="g64:col")])
    write(d, "2026-12-01_H100_aaaaaaa.jsonl", [pair("2026-12-01", "aaaaaaa", 30.0, time="11:00:00",
                                                    variant="g64:col")])
    rc, text, details = run(tmp_path)
    assert rc == 0
    rows = [line for line in details.splitlines() if line.startswith("| silu_and_mul_per_block_quant")]
    assert len(rows) == 2
    assert any(r.startswith("| silu_and_mul_per_block_quant(g64:col) |") and ", 30.0 |" in r for r in rows)
    assert any(r.startswith("| silu_and_mul_per_block_quant |") and ", 20.0 |" in r for r in rows)
    # RESULTS.md shows the default call only
    assert [line for line in text.splitlines() if line.startswith("| silu_and_mul_per_block_quant")] == \
        [r for r in rows if r.startswith("| silu_and_mul_per_block_quant |")]


def test_tuning_table_becomes_records_and_a_section(tmp_path):
    """benchmarks/tuning_records.py: one record per (plan, class) of a tuning table; the section
    shows every count's µs, the choice and slowest / chosen; a newer run of a class replaces it."""
    spec = importlib.util.spec_from_file_location("tuning_records", ROOT / "benchmarks" / "tuning_records.py")
    tr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tr)
    table = {"silu_and_mul_per_block_quant||halves|torch.bfloat16|7168": {"torch": "2.11", "classes": [
        {"min_tokens": 2195, "tokens": 4389, "vectors": 2, "us": {"1": 47.0, "2": 45.5, "4": 49.7}},
        {"min_tokens": 8778, "tokens": 17555, "vectors": 2, "us": {"1": 170.2, "2": 162.5, "4": 180.0}}]},
        # a GPU test's narrow shape: in the records, not in the table (an experts op's too)
        "mxfp4_quant||halves|torch.bfloat16|256": {"torch": "2.11", "classes": [
            {"min_tokens": 122880, "tokens": 245760, "vectors": 2, "us": {"1": 57.9, "2": 45.0, "4": 47.3}}]},
        "mxfp8_experts_quant||halves|torch.bfloat16|512|E3": {"torch": "2.11", "classes": [
            {"min_tokens": 61440, "tokens": 122880, "vectors": 2, "us": {"1": 80.0, "2": 56.0}}]}}
    recs = tr.records(table)
    assert sorted((r["min_tokens"], r["vectors"]) for r in recs) == [(2195, 2), (8778, 2), (61440, 2), (122880, 2)]
    ctx = dict(H100, date="2026-12-01", commit="abc1234", command="tuning_records.py t.json")
    newer = dict(next(r for r in recs if r["min_tokens"] == 8778), **dict(ctx, date="2026-12-02", commit="def5678"), vectors=4, choice="4", us={"1": 170.0, "2": 160.0, "4": 150.0})
    write(tmp_path / "results", "a.jsonl", [dict(r, **ctx) for r in recs] + [newer])
    rc, text, details = run(tmp_path)
    assert rc == 0 and "## Vectors per thread" not in text
    tuning = section(details, "Vectors per thread")
    rows = [line for line in tuning.splitlines() if line.startswith("| silu")]
    assert "| mxfp4_quant" not in tuning and "| mxfp8_experts_quant" not in tuning
    assert "2 plan(s) of rows narrower than 2048 (test shapes) are in the records only." in tuning
    # one row per plan: per token class the count chosen and slowest / chosen (the newer class record)
    assert rows == ["| silu_and_mul_per_block_quant, halves, torch.bfloat16, 7168 | 1 | "
                    "T >= 2195: 2 (1.09x); T >= 8778: 4 (1.13x) | R1, R2 |"]


def test_baseline_cells_beside_their_device_calls_cells(tmp_path):
    """A pairs_baseline cell is shown beside the pairs cell of the device call its command names
    (not a later run of that cell), with the difference in points of copy bandwidth."""
    main_cell = pair("2026-12-01", "abc1234", 50.0, fused_pct_bw=0.85)
    later = pair("2026-12-02", "def5678", 40.0, fused_pct_bw=0.95)
    base = dict(pair("2026-12-01", "0ld0000", 55.0, fused_pct_bw=0.78), bench="pairs_baseline",
                command="_baseline/benchmarks/bench_pairs.py (same device call as abc1234)")
    orphan = dict(base, tokens=16384, command="_baseline/benchmarks/bench_pairs.py")
    write(tmp_path / "results", "a.jsonl", [main_cell, later, base, orphan])
    rc, text, details = run(tmp_path)
    assert rc == 0 and "## Against a baseline checkout" not in text
    baseline = section(details, "Against a baseline checkout")
    rows = [line for line in baseline.splitlines() if line.startswith("| `0ld0000`")]
    assert rows == ["| `0ld0000` | `abc1234` | 1 | +7 | +7 .. +7 | none | R3 |"]
    assert "| R3 | 2026-12-01 | NVIDIA H100 80GB HBM3 | `abc1234` |" in details


def test_ab_experiment_rows_stay_in_the_records(tmp_path):
    """Host rows of an A/B experiment ("[A/B ...]" in the case) are counted, not tabled."""
    ctx = dict(H100, date="2026-12-01", commit="ccccccc", command="c", bench="host", mode="eager", tokens=16,
               hidden=4096, intermediate=2048)
    write(tmp_path / "results", "a.jsonl", [
        dict(ctx, case="eager op", without_pass_us=7.0, with_pass_us=9.0),
        dict(ctx, case="eager op [A/B new vs old, round 1]", without_pass_us=7.0, with_pass_us=8.0)])
    rc, text, details = run(tmp_path)
    host = section(details, "Host cost")
    assert rc == 0 and "1 row(s) of A/B experiments are in the records only." in host
    assert "| eager op | eager | 16 | 4096 -> 2048 | 7.0 | 9.0 | 0.778x | R1 |" in host and "[A/B" not in host
    assert "| NVIDIA H100 80GB HBM3 | eager op | eager | 4096 -> 2048 | 7.0 / 9.0 | R1 |" in text
    assert "[A/B" not in text


def test_committed_results_md_is_at_most_170_lines():
    """The issue's "about 150 lines": the committed records' RESULTS.md stays a summary."""
    results, details = committed()
    assert len(results.splitlines()) <= 170
    assert len(details.splitlines()) > len(results.splitlines())


def test_pointers_name_sections_of_details():
    """Every compacted table of RESULTS.md ends with a link to a section DETAILS.md has."""
    results, details = committed()
    anchors = {summarize.slug(line) for line in details.splitlines() if line.startswith("#")}
    pointers = re.findall(r"^All cells: \[DETAILS\.md#([^\]]+)\]\(DETAILS\.md#\1\)$", results, re.M)
    assert sorted(pointers) == sorted(summarize.slug(t) for t in (summarize.KERNELS, summarize.MLP,
                                                                   summarize.HOST, summarize.MOE))
    assert set(pointers) <= anchors


def test_a_cell_left_out_of_the_kernel_summary_is_in_details(tmp_path):
    """The kernel summary: the decode size, 4096 and 16384 tokens of the default call; every other
    token count, layout, recipe and width is in DETAILS.md."""
    write(tmp_path / "results", "a.jsonl", [
        pair("2026-12-01", "aaaaaaa", 2.0, tokens=64), pair("2026-12-01", "aaaaaaa", 20.0),
        pair("2026-12-01", "aaaaaaa", 7.5, tokens=1024),  # between the decode size and 4096
        pair("2026-12-01", "aaaaaaa", 21.5, layout="separate"),
        pair("2026-12-01", "aaaaaaa", 22.5, recipe="ue8m0=exp2"),
        pair("2026-12-01", "aaaaaaa", 23.5, hidden=4096)])
    rc, text, details = run(tmp_path)
    kernels, all_kernels = section(text, "Kernels"), section(details, "Kernels")
    assert rc == 0
    assert "| op | dtype | H | backend | T=64 | T=4096 | x unfused | runs |" in kernels.splitlines()
    for left_out in (", 7.5 |", ", 21.5 |", ", 22.5 |", ", 23.5 |"):
        assert left_out not in kernels and left_out in all_kernels
    assert "| T=64 | T=1024 | T=4096 |" in all_kernels
    assert "All cells: [DETAILS.md#kernels-bench_pairspy](DETAILS.md#kernels-bench_pairspy)" in kernels


def test_default_group_cell_and_unnamed_cell_are_one_summary_row(tmp_path):
    """An unnamed FP8 per-group cell and a newer g128 one (the default group, named) are one row of
    the summary, the newer winning; DETAILS.md keeps both rows."""
    write(tmp_path / "results", "a.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0),
                                            pair("2026-12-02", "bbbbbbb", 16.0, variant="g128")])
    rc, text, details = run(tmp_path)
    rows = [line for line in section(text, "Kernels").splitlines() if line.startswith("| silu")]
    assert rc == 0 and rows == ["| silu_and_mul_per_block_quant | bf16 | 2048 | cuda | 88% of 100%, 16.0 | 1.88 | R2 |"]
    assert sum(line.startswith("| silu") for line in section(details, "Kernels").splitlines()) == 2


def test_check_fails_when_only_details_is_stale(tmp_path, capsys):
    write(tmp_path / "results", "a.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0)])
    assert run(tmp_path)[0] == 0
    details = tmp_path / "DETAILS.md"
    details.write_text(details.read_text() + "edited by hand\n")
    capsys.readouterr()
    assert run(tmp_path, "--check")[0] == 1
    err = capsys.readouterr().err
    assert "DETAILS.md is stale" in err and "RESULTS.md" not in err
    details.unlink()
    assert run(tmp_path, "--check")[0] == 1


def test_details_path_option(tmp_path):
    """--details puts DETAILS.md elsewhere; RESULTS.md links to it by its relative path."""
    write(tmp_path / "results", "a.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0)])
    (tmp_path / "more").mkdir()
    rc = summarize.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "RESULTS.md"),
                         "--details", str(tmp_path / "more" / "ALL.md")])
    assert rc == 0
    assert "(more/ALL.md#kernels-bench_pairspy)" in (tmp_path / "RESULTS.md").read_text()
    assert "[RESULTS.md](../RESULTS.md)" in (tmp_path / "more" / "ALL.md").read_text()


def _runs_listed(text: str) -> set[str]:
    return set(re.findall(r"^\| (R\d+) \|", section(text, "Runs"), re.M))


def _runs_named(text: str) -> set[str]:
    """The run names the table rows after the runs table cite."""
    rows = [line for line in text.split("\n## Runs")[1].split("\n## ", 1)[1].splitlines() if line.startswith("|")]
    return {name for line in rows for name in re.findall(r"\bR\d+\b", line)}


def test_results_runs_table_lists_only_the_runs_its_rows_name(tmp_path):
    results, details = committed()
    assert _runs_listed(results) == _runs_named(results)
    assert _runs_listed(results) < _runs_listed(details)
    assert _runs_listed(details) >= _runs_named(details)
    # a run whose cells only DETAILS.md shows (a recipe's) is listed there only
    write(tmp_path / "results", "a.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0),
                                            pair("2026-12-02", "bbbbbbb", 21.0, recipe="ue8m0=exp2")])
    rc, text, details = run(tmp_path)
    assert rc == 0 and _runs_listed(text) == {"R1"} and _runs_listed(details) == {"R1", "R2"}


def test_host_summary_keeps_the_cases_of_the_latest_date(tmp_path):
    """RESULTS.md's host cost: the cases measured on the device's latest host date, every T; an
    older case is history, in DETAILS.md."""
    ctx = dict(H100, command="c", bench="host", mode="eager", hidden=4096, intermediate=2048)
    write(tmp_path / "results", "a.jsonl", [
        dict(ctx, date="2026-12-01", commit="aaaaaaa", case="old spelling", tokens=16, without_pass_us=7.0,
             with_pass_us=30.0),
        dict(ctx, date="2026-12-02", commit="bbbbbbb", case="dispatcher", tokens=16, without_pass_us=7.0,
             with_pass_us=12.0),
        dict(ctx, date="2026-12-01", commit="aaaaaaa", case="dispatcher", tokens=4096, without_pass_us=18.0,
             with_pass_us=16.0)])
    rc, text, details = run(tmp_path)
    host = section(text, "Host cost")
    assert rc == 0 and "old spelling" not in host and "old spelling" in section(details, "Host cost")
    assert "| NVIDIA H100 80GB HBM3 | dispatcher | eager | 4096 -> 2048 | 7.0 / 12.0 | 18.0 / 16.0 | R1, R2 |" in host


def test_converted_history_is_in_details_only(tmp_path):
    """The compacted tables summarise what the benchmark scripts recorded; the cells converted from
    the hand-written history (the code of their day) are in DETAILS.md, the constants stay."""
    old = dict(source="converted from RESULTS.md history")
    write(tmp_path / "results", "a.jsonl", [
        pair("2026-11-23", "aaaaaaa", 20.0, **old), pair("2026-12-01", "bbbbbbb", 2.0, tokens=64),
        dict(H100, **old, date="2026-11-23", commit="aaaaaaa", command="c", bench="mlp", case="fp8 mlp",
             mode="cudagraph", tokens=16, hidden=7168, intermediate=2048, without_pass_us=250.0, with_pass_us=240.0),
        dict(H100, **old, date="2026-11-23", commit="aaaaaaa", command="c", bench="constants", name="gate",
             value="1 L2", where="csrc/x.cuh", decision="-")])
    rc, text, details = run(tmp_path)
    assert rc == 0
    assert ", 20.0 |" in section(details, "Kernels") and ", 20.0 |" not in text
    assert "| fp8 mlp |" in section(details, "End to end") and "fp8 mlp" not in text
    assert "| gate | 1 L2 |" in section(text, "Measured constants")
    # R1, R2: the converted pairs and mlp runs (by their commands); R3: the measured pairs run
    assert _runs_listed(text) == {"R3"} and _runs_listed(details) == {"R1", "R2", "R3"}
