"""benchmarks/summarize.py: RESULTS.md generated from the JSON Lines records (CPU, no torch)."""

from __future__ import annotations

import importlib.util
import json
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


def run(tmp_path, *extra) -> tuple[int, str]:
    out = tmp_path / "RESULTS.md"
    rc = summarize.main(["--results", str(tmp_path / "results"), "--out", str(out), *extra])
    return rc, out.read_text() if out.exists() else ""


def test_pairs_rows_and_latest_record_per_cell(tmp_path):
    d = tmp_path / "results"
    write(d, "2026-12-01_H100_aaaaaaa.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0),
                                               pair("2026-12-01", "aaaaaaa", 2.0, tokens=64)])
    # a later run of one cell replaces that cell only; a bf16 and an f16 cell are distinct
    write(d, "2026-12-02_H100_bbbbbbb.jsonl", [pair("2026-12-02", "bbbbbbb", 15.0),
                                               pair("2026-12-02", "bbbbbbb", 17.5, dtype="float16")])
    rc, text = run(tmp_path)
    assert rc == 0
    lines = text.splitlines()
    assert "### NVIDIA H100 80GB HBM3 (sm 90, 132 SMs, L2 50 MiB)" in lines
    # one column per T; all-empty columns (Triton, Inductor: NaN) are left out
    assert "| op | dtype | H | backend | T=64 | T=4096 | x unfused | runs |" in lines
    # per T: fused %BW of the same-size copy's %BW, then µs; x unfused at the row's largest T
    assert ("| silu_and_mul_per_block_quant | bf16 | 2048 | cuda | 700% of 100%, 2.0 | 93% of 100%, 15.0 | 2.00 "
            "| R1, R2 |") in lines
    assert "| silu_and_mul_per_block_quant | f16 | 2048 | cuda | - | 80% of 100%, 17.5 | 1.71 | R2 |" in lines
    assert ", 20.0 |" not in text  # the superseded 4096 x 2048 record
    assert ("| R2 | 2026-12-02 | NVIDIA H100 80GB HBM3 | `bbbbbbb` | torch 2.11.0+cu130 | 3000 | "
            "`benchmarks/bench_pairs.py --jsonl x.jsonl` |") in lines
    # sorted: bf16 before f16
    assert text.index("| bf16 | 2048 |") < text.index("| f16 | 2048 |")
    assert 'No records (`bench="host"`).' in lines


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
    rc, text = run(tmp_path)
    lines = text.splitlines()
    assert "| fp8 mlp stack | default | 16 | 7168 -> 2048 | 926.0 | 1970.0 | 0.470x | R1 |" in lines
    assert ("| evict-first gate | 1 L2 | `csrc/x.cuh` | NVIDIA H100 80GB HBM3, 2026-12-01, ccccccc | "
            "[001](../docs/decisions/001-x.md) |") in lines
    assert "## Other: `mystery`" in lines
    assert "| knob | size | time_us | run |" in lines
    assert "| a | 3 | 1.25 | R1 |" in lines


def test_deterministic_and_check_detects_staleness(tmp_path):
    d = tmp_path / "results"
    write(d, "b.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0, hidden=7168)])
    write(d, "a.jsonl", [pair("2026-12-01", "aaaaaaa", 20.0)])
    rc, first = run(tmp_path)
    assert rc == 0
    assert run(tmp_path, "--check")[0] == 0
    rc, again = run(tmp_path)
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
    assert summarize.main(["--check"]) == 0, "run: python benchmarks/summarize.py"


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
             with_pass_us=1500.0)])
    rc, text = run(tmp_path)
    lines = text.splitlines()
    assert rc == 0 and 'No records (`bench="moe"`).' not in lines
    assert ("| case | mode | T | D -> I, experts top-k | GEMMs | fused op on | without pass µs | with pass µs | "
            "speedup | run |") in lines
    assert ("| qwen3-30b-a3b token scales | cuda graph | 4096 | 2048 -> 768, 128 top-8 | _scaled_grouped_mm | cuda "
            "| 1904.0 | 1825.0 | 1.043x | R1 |") in lines
    assert ("| qwen3-30b-a3b token scales | plain calls | 4096 | 2048 -> 768, 128 top-8 | _scaled_grouped_mm | cuda "
            "| 2100.0 | 1500.0 | 1.400x | R2 |") in lines
    assert "| 2000.0 |" not in text
    assert text.index("## Mixture of experts (`bench_moe.py`)") < text.index("### NVIDIA H200\n\n| case | mode | T | D")


def test_group_variants_are_cells_of_their_own_and_a_later_time_wins(tmp_path):
    d = tmp_path / "results"
    # two variants of one op and shape (bench_pairs --group-variants), and a run of one of them
    # later the same day (in a file that sorts first by name): the UTC time decides
    write(d, "2026-12-01_H100_bbbbbbb.jsonl", [pair("2026-12-01", "bbbbbbb", 20.0, time="10:00:00"),
                                               pair("2026-12-01", "bbbbbbb", 25.0, time="10:00:00",
                                                    variant="g64:col")])
    write(d, "2026-12-01_H100_aaaaaaa.jsonl", [pair("2026-12-01", "aaaaaaa", 30.0, time="11:00:00",
                                                    variant="g64:col")])
    rc, text = run(tmp_path)
    assert rc == 0
    rows = [line for line in text.splitlines() if line.startswith("| silu_and_mul_per_block_quant")]
    assert len(rows) == 2
    assert any(r.startswith("| silu_and_mul_per_block_quant(g64:col) |") and ", 30.0 |" in r for r in rows)
    assert any(r.startswith("| silu_and_mul_per_block_quant |") and ", 20.0 |" in r for r in rows)


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
    rc, text = run(tmp_path)
    assert rc == 0
    section = text.split("## Vectors per thread")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| silu")]
    assert "| mxfp4_quant" not in section and "| mxfp8_experts_quant" not in section
    assert "2 plan(s) of rows narrower than 2048 (test shapes) are in the records only." in section
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
    rc, text = run(tmp_path)
    assert rc == 0
    section = text.split("## Against a baseline checkout")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `0ld0000`")]
    assert rows == ["| `0ld0000` | `abc1234` | 1 | +7 | +7 .. +7 | none | R3 |"]
    assert "| R3 | 2026-12-01 | NVIDIA H100 80GB HBM3 | `abc1234` |" in text


def test_ab_experiment_rows_stay_in_the_records(tmp_path):
    """Host rows of an A/B experiment ("[A/B ...]" in the case) are counted, not tabled."""
    ctx = dict(H100, date="2026-12-01", commit="ccccccc", command="c", bench="host", mode="eager", tokens=16,
               hidden=4096, intermediate=2048)
    write(tmp_path / "results", "a.jsonl", [
        dict(ctx, case="eager op", without_pass_us=7.0, with_pass_us=9.0),
        dict(ctx, case="eager op [A/B new vs old, round 1]", without_pass_us=7.0, with_pass_us=8.0)])
    rc, text = run(tmp_path)
    section = text.split("## Host cost")[1].split("\n## ")[0]
    assert rc == 0 and "1 row(s) of A/B experiments are in the records only." in section
    assert "| eager op | eager | 16 | 4096 -> 2048 | 7.0 | 9.0 | 0.778x | R1 |" in section and "[A/B" not in section
