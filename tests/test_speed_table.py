"""The measured profitability rule (quantfuse.passes.profitability.measured_reason): its table is
derived from the benchmark records, and a native site of a GPU graph is kept exactly where that
table says the fused op is the slower one at the site's size (kernel time in a CUDA graph, kernel
plus host time without one). GPU graphs are traced on the CPU and their values moved to fake CUDA
tensors, so the whole pass runs here."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import quantfuse
from corpus import SiluPerToken, SliceSiluView
from helpers import count_targets, post_grad_graph
from quantfuse.passes import profitability, speed_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import speed_table as generator  # noqa: E402

TOKEN_OP = "silu_and_mul_per_token_quant_fp8"
GROUP_OP = "silu_and_mul_per_block_quant"
#: a table of one device: the per-token op slower at 16 x 768 in both runs, faster at 16 x 2048; a
#: host cost of 8 µs per fused per-token call; per-group measured with row-major scales only
TABLE = {"GPU A": {
    "cells": {(TOKEN_OP, ""): {(16, 768): (1.8, 1.6, 2, 1.1), (16, 2048): (2.1, 2.7, 2, 0.76),
                               (256, 768): (2.2, 1.9, 2, 1.01), (4096, 7168): (50.0, 98.0, 1, 0.51)},
              (GROUP_OP, "g128"): {(16, 768): (1.9, 1.8, 2, 1.05), (256, 768): (2.0, 4.0, 1, 0.5)},
              (GROUP_OP, "g128:col"): {(16, 768): (2.0, 2.2, 1, 0.9)}},
    "host_added_us": {("fp8_per_token", ""): 8.0, ("fp8_per_group", "g128:col"): -5.0},
    "commits": ("abc",),
}}


def test_the_table_is_what_the_records_give():
    assert generator.main(["--check"]) == 0


def _record(**fields):
    base = dict(bench="pairs", device="GPU A", date="2026-12-03", time="09:00:00", commit="c1", backend="cuda",
                layout="halves", dtype="bfloat16", op=TOKEN_OP, tokens=16, hidden=768)
    base.update(fields)
    return base


def _moe(tokens, without_host, paired, **fields):
    base = dict(bench="moe", device="GPU A", date="2026-12-03", time="09:00:00", commit="c3", mode="plain calls",
                case="qwen3 token scales", tokens=tokens, planned_outputs=True, without_pass_host_us=without_host,
                with_pass_host_us=without_host / paired, paired_speedup=paired)
    base.update(fields)
    return base


def test_cells_and_host_cost_are_derived_from_the_records(monkeypatch):
    # the records' dates are set against these SINCE values, not the generator's current ones
    monkeypatch.setattr(generator, "SINCE", {"fp8_per_token": ("2026-12-03", "07:20:45"),
                                             "host": ("2026-12-03", "07:20:45")})
    monkeypatch.setattr(generator, "SINCE_KERNELS", ("2026-12-02", "16:42:43"))
    records = [
        _record(fused_us=1.8, inductor_us=1.6), _record(fused_us=2.0, inductor_us=1.9, commit="c2"),
        _record(fused_us=3.0, inductor_us=9.0, tokens=4096),
        _record(fused_us=1.0, inductor_us=9.0, layout="separate"),  # not a default cell: dropped
        _record(fused_us=1.0, inductor_us=9.0, recipe="eps=1e-06"),
        _record(fused_us=1.0, inductor_us=9.0, time="07:00:00"),  # before the per-token kernels' SINCE
        _record(op=GROUP_OP, variant="g128", fused_us=2.2, inductor_us=2.0, time="07:00:00"),  # after the group's
        _record(op=GROUP_OP, variant="g128", fused_us=9.0, inductor_us=1.0, date="2026-12-01"),  # before it
        _record(fused_us=1.0, inductor_us=9.0, commit=next(iter(generator.EXCLUDED))),
        _record(fused_us=1.0, inductor_us=float("nan")),
        _record(op=GROUP_OP, variant="g128", fused_us=1.9, inductor_us=1.8),
        _record(op=GROUP_OP, variant="g128:col", fused_us=9.0, inductor_us=1.0),  # SKIPPED_VARIANTS: dropped
        _record(op=GROUP_OP, fused_us=2.0, inductor_us=1.0, tokens=32),  # an older record: the default group unnamed
        _record(op=GROUP_OP, variant="g64", fused_us=2.0, inductor_us=float("nan")),  # no native cell: dropped
        _moe(16, 300.0, 0.96), _moe(16, 250.0, 0.95), _moe(16, 400.0, 0.5, time="07:00:00"),  # before SINCE
        _moe(256, 600.0, 0.9),  # not the decode size
        _moe(16, 400.0, 0.98, case="qwen3 block scales"),
        _moe(16, 400.0, 0.5, planned_outputs=False),  # not today's host path
        dict(_moe(16, 800.0, 1.06), bench="mlp", case="fp8 mlp x8"),
    ]
    (device, table), = generator.build(records).items()
    assert device == "GPU A"
    assert table["cells"] == {
        (TOKEN_OP, ""): {(16, 768): (1.9, 1.75, 2, round(2.0 / 1.9, 3)), (4096, 768): (3.0, 9.0, 1, 0.333)},
        (GROUP_OP, "g128"): {(16, 768): (2.05, 1.9, 2, round(1.9 / 1.8, 3)), (32, 768): (2.0, 1.0, 1, 2.0)}}
    assert "g128:col" in generator.SKIPPED_VARIANTS
    # the median of 300 * (1 / 0.96 - 1) = 12.5 and 250 * (1 / 0.95 - 1) = 13.16; bench_mlp's x8 stack
    # over its 8 column-major g128 sites: 800 * (1 / 1.06 - 1) / 8
    assert table["host_added_us"] == {("fp8_per_token", ""): round((12.5 + 250 * (1 / 0.95 - 1)) / 2, 1),
                                      ("fp8_per_group", "g128"): round(400 * (1 / 0.98 - 1), 1),
                                      ("fp8_per_group", "g128:col"): round(800 * (1 / 1.06 - 1) / 8, 1)}
    assert table["commits"] == ("c1", "c2", "c3")
    # the rendered module holds the same data
    ns: dict = {}
    exec(generator.render({device: table}), ns)
    assert ns["TABLES"] == {device: table}


@pytest.mark.parametrize("rows,hidden,want", [
    (16, 768, (16, 768)), (8, 700, (16, 768)), (17, 768, (256, 768)), (16, 1024, (16, 2048)),
    (300, 768, (4096, 7168)), (5000, 768, None), (16, 8192, None)])
def test_the_nearest_cell_at_or_above_the_site(rows, hidden, want):
    found = profitability.nearest_cell(TABLE["GPU A"]["cells"][(TOKEN_OP, "")], rows, hidden)
    assert (found and found[0]) == want


@pytest.fixture
def gpu_a(monkeypatch):
    monkeypatch.setattr(speed_table, "TABLES", TABLE)
    monkeypatch.setattr(profitability, "DEFAULT_DEVICE", "GPU A")
    monkeypatch.setattr(profitability, "device_name", lambda device: "GPU A")


def _cuda_val(rows, hidden, dtype=torch.bfloat16):
    with FakeTensorMode():
        return torch.empty(rows, hidden, dtype=dtype, device="cuda")


@pytest.mark.parametrize("graphs,rows,hidden,kept", [
    (True, 16, 768, True), (True, 16, 2048, False), (True, 200, 768, False),  # 1.01: within MARGIN
    (True, 5000, 768, False),
    (False, 16, 768, True), (False, 16, 2048, True),  # saves 0.6 µs, adds 8 of host time
    (False, 4096, 7168, False)])  # saves 48 µs
def test_kept_where_the_table_says_the_fused_op_is_slower(gpu_a, graphs, rows, hidden, kept):
    config = quantfuse.FusionConfig(cuda_graphs=graphs, speed_table=True)
    why = profitability.measured_reason(TOKEN_OP, "fp8_per_token", {}, _cuda_val(rows, hidden), config)
    assert (why is not None) == kept, why
    if kept:
        assert why.startswith(profitability.KEPT_FOR_SPEED)
        assert ("CUDA graph the fused kernel is slower" in why) == graphs
        assert "GPU A" in why and f"{rows} x {hidden}" in why


def test_what_the_rule_does_not_decide(gpu_a, monkeypatch):
    on = quantfuse.FusionConfig(cuda_graphs=True, speed_table=True)
    val = _cuda_val(16, 768)
    assert profitability.measured_reason(TOKEN_OP, "fp8_per_token", {}, val, on) is not None
    assert profitability.measured_reason(TOKEN_OP, "fp8_per_token", {}, val,
                                         quantfuse.FusionConfig(cuda_graphs=True, speed_table=False)) is None
    assert profitability.measured_reason(TOKEN_OP, "fp8_per_token", {}, torch.empty(16, 768), on) is None  # CPU
    # per-group: by group size and scale layout (column-major never measured: rewritten)
    assert profitability.measured_reason(GROUP_OP, "fp8_per_group", {"group_size": 128}, val, on) is not None
    assert profitability.measured_reason(GROUP_OP, "fp8_per_group", {"group_size": 128, "column_major_scales": True},
                                         val, on) is None
    assert profitability.measured_reason(GROUP_OP, "fp8_per_group", {"group_size": 64}, val, on) is None
    # no host cost measured for row-major per-group: without CUDA graphs a slower kernel is kept, a faster
    # one fused
    plain = quantfuse.FusionConfig(cuda_graphs=False, speed_table=True)
    why = profitability.measured_reason(GROUP_OP, "fp8_per_group", {"group_size": 128}, val, plain)
    assert why.startswith(f"{profitability.KEPT_FOR_SPEED}: without CUDA graphs the fused kernel is slower"), why
    assert profitability.measured_reason(GROUP_OP, "fp8_per_group", {"group_size": 128}, _cuda_val(256, 768),
                                         plain) is None
    # the host cost is the variant's: column-major calls save host time (a 0.2 µs kernel gain is kept
    # only under the per-token host cost, which is not this variant's)
    col = {"group_size": 128, "column_major_scales": True}
    assert profitability.measured_reason(GROUP_OP, "fp8_per_group", col, val, plain) is None
    speed_table.TABLES["GPU A"]["host_added_us"][("fp8_per_group", "g128:col")] = 1.0
    try:
        assert profitability.measured_reason(GROUP_OP, "fp8_per_group", col, val, plain) is not None
    finally:
        speed_table.TABLES["GPU A"]["host_added_us"][("fp8_per_group", "g128:col")] = -5.0
    # a device without a table reads the default device's, and says so
    monkeypatch.setattr(profitability, "device_name", lambda device: "GPU B")
    why = profitability.measured_reason(TOKEN_OP, "fp8_per_token", {}, val, on)
    assert "GPU A (no table for GPU B)" in why
    monkeypatch.setattr(profitability, "DEFAULT_DEVICE", "GPU C")
    assert profitability.measured_reason(TOKEN_OP, "fp8_per_token", {}, val, on) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a graph traced for a GPU this process cannot see")
def test_a_gpu_this_process_cannot_see_reads_the_default_table(monkeypatch):
    monkeypatch.setattr(speed_table, "TABLES", TABLE)
    monkeypatch.setattr(profitability, "DEFAULT_DEVICE", "GPU A")
    assert profitability.device_name(torch.device("cuda")) == "an unseen GPU"
    why = profitability.measured_reason(TOKEN_OP, "fp8_per_token", {}, _cuda_val(16, 768),
                                        quantfuse.FusionConfig(cuda_graphs=True, speed_table=True))
    assert "GPU A (no table for an unseen GPU)" in why


def test_cuda_graphs_default_follows_inductor():
    config = quantfuse.FusionConfig()
    assert config.cuda_graphs is None
    with torch._inductor.config.patch({"triton.cudagraphs": True}):
        assert profitability.cuda_graphs(config)
    with torch._inductor.config.patch({"triton.cudagraphs": False}):
        assert not profitability.cuda_graphs(config)
        assert profitability.cuda_graphs(quantfuse.FusionConfig(cuda_graphs=True))


def test_speed_table_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("QUANTFUSE_SPEED_TABLE", "0")
    assert quantfuse.FusionConfig().speed_table is False
    monkeypatch.delenv("QUANTFUSE_SPEED_TABLE")
    assert quantfuse.FusionConfig().speed_table is True


def _on_cuda(gm: torch.fx.GraphModule) -> None:
    """Every tensor value of the graph as a fake CUDA tensor of the same shape, strides and dtype."""
    mode = FakeTensorMode()
    with mode:
        for node in gm.graph.nodes:
            v = node.meta.get("val")
            if isinstance(v, torch.Tensor):
                node.meta["val"] = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="cuda")


@pytest.mark.parametrize("module,rows,hidden,op,kept", [
    (SiluPerToken(), 16, 768, TOKEN_OP, True), (SiluPerToken(), 16, 2048, TOKEN_OP, False),
    (SliceSiluView(), 16, 768, GROUP_OP, True)])
def test_the_pass_keeps_a_gpu_site_the_table_calls_slower(gpu_a, module, rows, hidden, op, kept):
    """The whole pass on a GPU graph (both of its readers of native sites: the recogniser and the
    patterns reach the same decision): kept means the graph is untouched and the report says why."""
    gm = post_grad_graph(module, torch.randn(rows, 2 * hidden, dtype=torch.bfloat16))
    _on_cuda(gm)
    before = str(gm.graph)
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(cuda_graphs=True, speed_table=True))
    with torch.no_grad():
        fusion(gm.graph)
    report = fusion.report
    if kept:
        assert report.rewrites == [] and str(gm.graph) == before, str(report)
        assert [m.reason.split(":")[0] for m in report.near_misses] == [profitability.KEPT_FOR_SPEED], str(report)
        assert f"{rows} x {hidden}" in report.near_misses[0].reason
    else:
        assert len(report.rewrites) == 1 and count_targets(gm, f"quantfuse.{op}") == 1, str(report)
    # the same graph with the rule off is rewritten
    gm = post_grad_graph(module, torch.randn(rows, 2 * hidden, dtype=torch.bfloat16))
    _on_cuda(gm)
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(cuda_graphs=True, speed_table=False))
    with torch.no_grad():
        fusion(gm.graph)
    assert count_targets(gm, f"quantfuse.{op}") == 1, str(fusion.report)


@pytest.mark.parametrize("mode,want", [("reduce-overhead", True), (None, False)])
def test_the_pass_sees_cuda_graphs_of_the_compile_mode(mode, want):
    """``quantfuse.compile(mode="reduce-overhead")`` replays the graph in a CUDA graph: the rule's
    default (``FusionConfig(cuda_graphs=None)``) reads that from Inductor's config at pass time."""
    seen = []

    def probe(graph):
        seen.append(profitability.cuda_graphs(quantfuse.FusionConfig()))

    torch._dynamo.reset()
    try:
        with torch._inductor.config.patch(fx_graph_cache=False):
            quantfuse.compile(lambda x: x * 2 + 1, mode=mode, options={"post_grad_custom_post_pass": probe})(
                torch.randn(8))
    finally:
        torch._dynamo.reset()
    assert seen == [want]
