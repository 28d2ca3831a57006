"""End to end on real ``torch.compile`` (CPU): results, report, uuid, options, logging, dumps."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from corpus import SliceSiluView
from helpers import fp8_step_close, post_grad_graph
from quantfuse.passes import fusion_pass, report as report_mod

FP8 = torch.float8_e4m3fn
qf = torch.ops.quantfuse


class NativeMLP(torch.nn.Module):
    """gate_up -> SiLU×Mul -> FP8 group quant -> dequantised down projection, plain PyTorch."""

    def __init__(self, hidden=256, inter=512, group=128):
        super().__init__()
        self.gate_up = torch.nn.Linear(hidden, 2 * inter, bias=False, dtype=torch.bfloat16)
        self.down = torch.nn.Linear(inter, hidden, bias=False, dtype=torch.bfloat16)
        self.group = group

    def forward(self, x):
        h = self.gate_up(x)
        gate, up = h.chunk(2, dim=-1)
        y = F.silu(gate) * up
        yg = y.unflatten(-1, (-1, self.group)).float()
        s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
        q = (yg / s).clamp(-448, 448).to(FP8)
        deq = (q.float() * s).flatten(-2).to(torch.bfloat16)
        return self.down(deq), q.flatten(-2), s.squeeze(-1)


class OpMLP(NativeMLP):
    def forward(self, x):
        h = self.gate_up(x)
        q, s = qf.per_token_group_quant_fp8(qf.silu_and_mul(h), self.group, True, True)
        deq = (q.float().unflatten(-1, (-1, self.group)) * s.unsqueeze(-1)).flatten(-2).to(torch.bfloat16)
        return self.down(deq), q, s


@torch.no_grad()
def _compile_both(model, x, **kw):
    torch._dynamo.reset()
    plain = torch.compile(model, **kw)(x)
    torch._dynamo.reset()
    fused = torch.compile(model, options=quantfuse.inductor_options(), **kw)(x)
    return plain, fused, quantfuse.last_report()


def test_native_mlp_compiled_with_pass_matches_without():
    torch.manual_seed(0)
    model, x = NativeMLP(), torch.randn(2, 17, 256, dtype=torch.bfloat16)
    plain, fused, report = _compile_both(model, x)
    assert len(report.rewrites) == 1 and report.near_misses == []
    r = report.rewrites[0]
    assert r.input_shape == (2, 17, 1024) and r.input_dtype == "bfloat16"
    assert "test_compile.py" in r.source and "F.silu(gate) * up" in r.source
    fp8_step_close(plain[1], plain[2], fused[1], fused[2])
    rel = ((plain[0].float() - fused[0].float()).norm() / plain[0].float().norm()).item()
    assert rel < 2e-2


def test_op_form_is_bit_identical_with_and_without_pass():
    torch.manual_seed(1)
    model, x = OpMLP(group=64), torch.randn(9, 256, dtype=torch.bfloat16)
    plain, fused, report = _compile_both(model, x)
    assert [r.params for r in report.rewrites] == [
        {"group_size": 64, "column_major_scales": True, "use_ue8m0": True}]
    assert torch.equal(plain[1].view(torch.uint8), fused[1].view(torch.uint8))
    assert torch.equal(plain[2], fused[2]) and fused[2].stride() == plain[2].stride()
    assert torch.equal(plain[0], fused[0])


def test_activation_saved_for_backward_is_a_near_miss():
    """With grad enabled the activation is also saved for backward: not fused, explained."""
    torch._dynamo.reset()
    model = NativeMLP()
    torch.compile(model, options=quantfuse.inductor_options())(torch.randn(4, 256, dtype=torch.bfloat16))
    report = quantfuse.last_report()
    assert report.rewrites == [] and len(report.near_misses) == 1
    assert "has a consumer outside the pattern: output" in report.near_misses[0].reason


@pytest.mark.parametrize("model_cls", [NativeMLP, OpMLP])
@torch.no_grad()
def test_dynamic_token_count_is_fused(model_cls):
    torch.manual_seed(2)
    model = model_cls()
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=True, options=quantfuse.inductor_options())
    for t in (5, 12):
        x = torch.randn(t, 256, dtype=torch.bfloat16)
        out = compiled(x)
        assert len(quantfuse.last_report().rewrites) == 1
        eager = model(x)
        fp8_step_close(eager[1], eager[2], out[1], out[2])


def test_report_str_lists_rewrites_and_near_misses():
    gm = post_grad_graph(SliceSiluView(), SliceSiluView().make_input())
    fusion = quantfuse.FusionPass()
    fusion(gm.graph)
    text = str(fusion.report)
    assert text.startswith("quantfuse: 1 rewrite(s), 0 near miss(es)")
    assert "corpus.py" in text and "silu_and_mul_per_block_quant(group_size=128" in text
    assert fusion.report is quantfuse.last_report()
    assert fusion.report.nodes_after < fusion.report.nodes_before and fusion.report.seconds > 0


def test_uuid_is_stable_and_changes_with_config():
    a, b = quantfuse.FusionPass(), quantfuse.FusionPass()
    assert a.uuid() == b.uuid()
    assert quantfuse.FusionPass(quantfuse.FusionConfig(group_sizes=(128,))).uuid() != a.uuid()
    assert quantfuse.FusionPass(quantfuse.FusionConfig(forms=("op",))).uuid() != a.uuid()


def test_uuid_changes_with_package_source(tmp_path, monkeypatch):
    import shutil
    copy = tmp_path / "quantfuse"
    shutil.copytree(fusion_pass._PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fusion_pass, "_PACKAGE_ROOT", copy)
    fusion_pass._source_hash.cache_clear()
    try:
        before = quantfuse.FusionPass().uuid()
        with open(copy / "patterns" / "native.py", "a") as f:
            f.write("\n# a pattern changed\n")
        fusion_pass._source_hash.cache_clear()
        assert quantfuse.FusionPass().uuid() != before
    finally:
        fusion_pass._source_hash.cache_clear()


def test_inductor_options_composes_with_an_existing_pass():
    seen = []

    class UserPass(torch._inductor.custom_graph_pass.CustomGraphPass):
        def __call__(self, graph):
            seen.append(sum(1 for n in graph.nodes if "amax" in str(n.target)))

        def uuid(self):
            return "user-pass-v1"

    opts = quantfuse.inductor_options(existing=UserPass())
    composed = opts["post_grad_custom_post_pass"]
    assert isinstance(composed, quantfuse.ComposedPass)
    gm = post_grad_graph(SliceSiluView(), SliceSiluView().make_input())
    composed(gm.graph)
    assert seen == [1]  # the user's pass saw the graph before quantfuse rewrote it
    assert len(composed.second.report.rewrites) == 1
    assert composed.uuid() != quantfuse.FusionPass().uuid()
    assert quantfuse.inductor_options(existing=UserPass())["post_grad_custom_post_pass"].uuid() == composed.uuid()


def test_quantfuse_log_env_prints_the_report(monkeypatch, capsys):
    monkeypatch.setenv(report_mod.LOG_ENV, "info")
    logger = logging.getLogger("quantfuse")
    old = (logger.level, list(logger.handlers))
    try:
        fusion = quantfuse.FusionPass()  # reads QUANTFUSE_LOG
        gm = post_grad_graph(SliceSiluView(), SliceSiluView().make_input())
        fusion(gm.graph)
        err = capsys.readouterr().err
        assert "[quantfuse] quantfuse: 1 rewrite(s)" in err and "corpus.py" in err
    finally:
        logger.setLevel(old[0])
        logger.handlers[:] = old[1]


def test_debug_dumps_depyf_code_and_graphs(tmp_path):
    pytest.importorskip("depyf")
    torch._dynamo.reset()
    model = SliceSiluView()
    x = model.make_input()
    compiled = torch.compile(model, options=quantfuse.inductor_options())
    with quantfuse.debug(tmp_path):
        compiled(x)
    (run,) = sorted(tmp_path.glob("quantfuse_pass_*"))
    assert "aten.amax" in (run / "before.txt").read_text()
    after = (run / "after.txt").read_text()
    assert "silu_and_mul_per_block_quant" in after and "aten.amax" not in after
    assert "1 rewrite(s)" in (run / "report.txt").read_text()
    decompiled = [p for p in tmp_path.rglob("*.py") if "__compiled_fn" in p.read_text(errors="ignore")]
    assert decompiled, "depyf wrote no decompiled bytecode"


@torch.no_grad()
def test_fx_graph_cache_keys_on_the_pass_uuid(tmp_path, monkeypatch):
    """A cache hit skips the pass; a changed config must be a miss, not a stale graph."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = SliceSiluView()
    x = model.make_input()

    def compile_with(config):
        torch._dynamo.reset()
        fusion = quantfuse.FusionPass(config)
        with torch._inductor.config.patch(fx_graph_cache=True, force_disable_caches=False):
            torch.compile(model, options={"post_grad_custom_post_pass": fusion})(x)
        return fusion

    assert compile_with(None)._runs == 1
    assert compile_with(None)._runs == 0  # served from the cache: same uuid
    changed = compile_with(quantfuse.FusionConfig(group_sizes=(64,)))
    assert changed._runs == 1 and changed.report.rewrites == []


@torch.no_grad()
def test_dynamic_token_count_with_swizzled_mx_scales():
    """The fused op's fake impl gives the padded 128x4 scale shape for a symbolic T: one
    compile serves T=5 and T=130 (one and two row tiles), bit-identical to eager."""
    qf = torch.ops.quantfuse

    def fn(x):
        return qf.mxfp4_quant(qf.relu2(x), "rceil", True)

    torch._dynamo.reset()
    compiled = torch.compile(fn, dynamic=True, options=quantfuse.inductor_options())
    for t in (5, 130):
        x = torch.randn(t, 256, dtype=torch.bfloat16) * 3
        q, s = compiled(x)
        report = quantfuse.last_report()
        assert [r.fused_op for r in report.rewrites] == ["quantfuse.relu2_mxfp4_quant"]
        assert report.rewrites[0].params == {"scale_rounding": "rceil", "is_sf_swizzled_layout": True}
        eq, es = fn(x)
        assert s.shape == (128 * (1 + t // 128), 8)
        assert torch.equal(q, eq) and torch.equal(s, es)
