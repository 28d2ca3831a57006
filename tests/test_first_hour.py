"""A new user's first hour: cache hits, ``mode=``, one report per compile, explain, the
config's checks, the debug dumps and the docs (issue 20)."""

from __future__ import annotations

import importlib
import logging
import re
import sys
from pathlib import Path

import pytest
import torch

import quantfuse
from corpus import SliceSiluView
from helpers import post_grad_graph
from quantfuse.custom_ops import oracle
from quantfuse.passes import debug as debug_mod

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
qf = torch.ops.quantfuse


def op_pair(x):
    """SiLU×Mul → FP8 per-group in op form: the fused result is bit-identical to eager."""
    return qf.per_token_group_quant_fp8(qf.silu_and_mul(x), 128)


def _x(t=4):
    torch.manual_seed(0)
    return torch.randn(t, 512, dtype=torch.bfloat16) * 3


@pytest.fixture
def fx_cache(tmp_path, monkeypatch):
    """Inductor's FX graph cache on, in a fresh folder (conftest turns it off)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with torch._inductor.config.patch(fx_graph_cache=True, force_disable_caches=False):
        yield


# --- cache hits ---------------------------------------------------------------------------

@torch.no_grad()
def test_cache_hit_is_reported_as_such_never_as_the_previous_graph(fx_cache):
    torch._dynamo.reset()
    quantfuse.compile(op_pair)(_x())
    first = quantfuse.last_report()
    assert len(first.rewrites) == 1 and first.cache_hits == 0

    torch._dynamo.reset()
    out = quantfuse.compile(op_pair)(_x())  # same graph, same uuid: served from the cache
    hit = quantfuse.last_report()
    assert hit is not first
    assert str(hit) == "quantfuse: " + quantfuse.CACHE_HIT
    assert quantfuse.CACHE_HIT == ("not run: graph served from Inductor's FX graph cache "
                                   "(no rewrite or near miss recorded for it)")
    assert hit.cache_hits == 1 and hit.rewrites == [] and hit.near_misses == []
    eager = op_pair(_x())
    assert torch.equal(out[0].view(torch.uint8), eager[0].view(torch.uint8)) and torch.equal(out[1], eager[1])

    # a compile of another graph after the hit reports that graph, not the hit
    torch._dynamo.reset()
    quantfuse.compile(lambda x: qf.per_token_quant_fp8(qf.relu2(x)))(_x())
    assert [r.fused_op for r in quantfuse.last_report().rewrites] == ["quantfuse.relu2_per_token_quant_fp8"]


@torch.no_grad()
def test_debug_turns_the_cache_off_so_a_cached_graph_is_dumped(fx_cache, tmp_path):
    torch._dynamo.reset()
    quantfuse.compile(op_pair)(_x())  # warms the cache
    torch._dynamo.reset()
    compiled = quantfuse.compile(op_pair)
    with quantfuse.debug(tmp_path / "dump"):
        assert torch._inductor.config.fx_graph_cache is False
        compiled(_x())
    assert torch._inductor.config.fx_graph_cache is True
    report = quantfuse.last_report()
    assert report.cache_hits == 0 and len(report.rewrites) == 1
    (run,) = (tmp_path / "dump").glob("quantfuse_pass_*")
    assert "silu_and_mul_per_block_quant" in (run / "after.txt").read_text()


def test_dump_folders_are_never_reused(tmp_path, monkeypatch):
    a = debug_mod.new_run_dir(tmp_path)
    b = debug_mod.new_run_dir(tmp_path)
    monkeypatch.setattr(debug_mod.os, "getpid", lambda: 999999)  # another process, same second
    c = debug_mod.new_run_dir(tmp_path)
    assert len({a, b, c}) == 3 and all(p.is_dir() for p in (a, b, c))
    assert re.fullmatch(r"quantfuse_pass_\d{8}-\d{6}_p\d+_001", b.name) and "_p999999_" in c.name
    # the name a later run would take is already there (a previous run's): the next one is used
    monkeypatch.setattr(debug_mod.time, "strftime", lambda fmt: "20000101-000000")
    (tmp_path / "quantfuse_pass_20000101-000000_p999999_000").mkdir()
    (tmp_path / "quantfuse_pass_20000101-000000_p999999_000" / "report.txt").write_text("old run")
    d = debug_mod.new_run_dir(tmp_path)
    assert d.name == "quantfuse_pass_20000101-000000_p999999_001"
    assert (tmp_path / "quantfuse_pass_20000101-000000_p999999_000" / "report.txt").read_text() == "old run"


# --- one report per compile ---------------------------------------------------------------

def with_graph_break(x):
    y = qf.relu2(x)
    torch._dynamo.graph_break()
    return qf.mxfp8_quant(y), qf.per_token_quant_fp8(qf.relu2(x * 2))


@torch.no_grad()
def test_graph_break_report_sums_both_graphs_and_shows_each():
    torch._dynamo.reset()
    quantfuse.compile(with_graph_break)(_x())
    report = quantfuse.last_report()
    assert len(report.graphs) == 2
    assert [len(g.rewrites) for g in report.graphs] == [0, 1]
    assert [r.fused_op for r in report.rewrites] == ["quantfuse.relu2_per_token_quant_fp8"]
    assert report.nodes_before == sum(g.nodes_before for g in report.graphs)
    text = str(report)
    assert text.startswith("quantfuse: 1 rewrite(s), 0 near miss(es) in 2 graphs, ")
    assert "\n  graph 1: 0 rewrite(s), 0 near miss(es)" in text and "\n  graph 2: 1 rewrite(s)" in text
    assert "\n    fused  test_first_hour.py:" in text


@torch.no_grad()
def test_recompiles_add_to_the_same_compile_report():
    torch._dynamo.reset()
    compiled = quantfuse.compile(op_pair, dynamic=False)
    compiled(_x(4))
    compiled(_x(6))  # a new static shape: a recompile through the same pass
    report = quantfuse.last_report()
    assert len(report.graphs) == 2 and [r.input_shape for r in report.rewrites] == [(4, 512), (6, 512)]


# --- mode= ----------------------------------------------------------------------------------

class _ConfigProbe(torch._inductor.custom_graph_pass.CustomGraphPass):
    """A user's pass that records Inductor's config as the passes see it."""

    def __init__(self):
        self.seen = []

    def __call__(self, graph):
        cfg = torch._inductor.config
        self.seen.append((cfg.triton.cudagraphs, cfg.max_autotune, cfg.coordinate_descent_tuning))

    def uuid(self):
        return "probe"


@pytest.mark.parametrize("mode, expect", [("reduce-overhead", (True, False, False)),
                                          ("max-autotune-no-cudagraphs", (False, True, True))])
@torch.no_grad()
def test_compile_with_mode_applies_the_mode_and_fuses(mode, expect):
    torch._dynamo.reset()
    probe = _ConfigProbe()
    out = quantfuse.compile(op_pair, mode=mode, options={"post_grad_custom_post_pass": probe})(_x())
    assert probe.seen == [expect]  # the mode's options were in force, the user's pass ran first
    assert [r.fused_op for r in quantfuse.last_report().rewrites] == ["quantfuse.silu_and_mul_per_block_quant"]
    eager = op_pair(_x())
    assert torch.equal(out[0].view(torch.uint8), eager[0].view(torch.uint8)) and torch.equal(out[1], eager[1])


@torch.no_grad()
def test_enable_adds_the_pass_to_torch_compile_with_a_mode():
    torch._dynamo.reset()
    before = torch._inductor.config.post_grad_custom_post_pass
    with quantfuse.enable() as fusion:
        torch.compile(op_pair, mode="max-autotune-no-cudagraphs")(_x())
    assert torch._inductor.config.post_grad_custom_post_pass is before
    assert quantfuse.last_report() is fusion.report and len(fusion.report.rewrites) == 1


def test_inductor_options_with_mode_are_the_modes_options_plus_the_pass():
    opts = quantfuse.inductor_options(mode="reduce-overhead")
    assert isinstance(opts.pop("post_grad_custom_post_pass"), quantfuse.FusionPass)
    assert opts == torch._inductor.list_mode_options("reduce-overhead") == {"triton.cudagraphs": True}


# --- explain and list_patterns ----------------------------------------------------------

def _explain_models():
    import explain_models

    return explain_models.build(256), torch.randn(8, 256, dtype=torch.bfloat16)


@torch.no_grad()
def test_explain_lists_every_site_with_its_line_and_generates_no_code(monkeypatch):
    from torch._inductor import graph as inductor_graph

    def no_lowering(*a, **k):
        raise AssertionError("explain must stop before lowering / code generation")

    monkeypatch.setattr(inductor_graph.GraphLowering, "__init__", no_lowering)
    before = quantfuse.last_report()
    model, x = _explain_models()
    triton = quantfuse.FusionConfig(native_fusions=quantfuse.passes.PROFITABLE_NATIVE_TRITON)
    result = quantfuse.explain(model, x, config=triton)
    assert quantfuse.last_report() is before
    got = [(s.status, s.source.split(" in ")[0], s.activation, s.scheme) for s in result.sites]
    assert got == [("kept for speed", "explain_models.py:56", "silu_and_mul", "mxfp8"),
                   ("fused", "explain_models.py:57", "relu2", "fp8_per_token"),
                   ("near miss", "explain_models.py:59", "silu_and_mul", "fp8_per_group"),
                   ("near miss", "explain_models.py:63", "silu_and_mul", "fp8_per_group")]
    fused = result.by_status("fused")[0]
    assert fused.fused_op == "quantfuse.relu2_per_token_quant_fp8" and fused.params == {}
    assert "consumer outside the pattern: mm" in result.sites[2].reason
    assert result.sites[3].reason == "group size 32 is not supported (supported: 64, 128)"
    text = str(result)
    assert text.startswith("quantfuse explain: 4 candidate site(s) in 1 graph(s) (no grad): "
                           "1 fused, 2 near miss(es), 1 kept for speed")
    assert "y3 = F.silu(gate) * up" in text and "PROFITABLE" not in text


def test_explain_in_grad_mode_names_grad_mode_as_the_reason():
    import fp8_mlp

    result = quantfuse.explain(fp8_mlp.build(layers=1, hidden=256, inter=256), torch.randn(4, 256, dtype=torch.bfloat16))
    (site,) = result.sites
    assert site.status == "near miss" and "F.silu(gate) * up" in site.source
    assert "grad mode is on" in site.hint and "torch.no_grad()" in site.hint
    with torch.no_grad():
        (site,) = quantfuse.explain(fp8_mlp.build(layers=1, hidden=256, inter=256),
                                    torch.randn(4, 256, dtype=torch.bfloat16)).sites
    assert site.status == "fused" and site.params == {"group_size": 128, "column_major_scales": True,
                                                       "use_ue8m0": False}


def test_explain_cli_on_a_file_target(capsys):
    from quantfuse.__main__ import main

    assert main(["explain", str(REPO / "examples" / "explain_models.py") + ":build", "--shape", "8,512"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("quantfuse explain: 4 candidate site(s) in 1 graph(s) (no grad): "
                          "2 fused, 2 near miss(es), 0 kept for speed")
    assert ("quantfuse.silu_and_mul_mxfp8_quant(scale_rounding=rceil, is_sf_swizzled_layout=False, "
            "recipe=mx_byte0=exp2)") in out  # the model divides by torch.exp2(e): the device's 2^-127


def test_explain_cli_on_a_cpu_keeps_native_sites_unless_asked(capsys, monkeypatch):
    from quantfuse.__main__ import main

    monkeypatch.setenv("QUANTFUSE_NATIVE_ON_CPU", "0")
    target = str(REPO / "examples" / "explain_models.py") + ":build"
    assert main(["explain", target, "--shape", "8,512"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("quantfuse explain: 4 candidate site(s) in 1 graph(s) (no grad): 0 fused, ")
    assert "kept for speed: on the CPU the fused op runs the torch reference" in out
    assert main(["explain", target, "--shape", "8,512", "--as-on-gpu"]) == 0
    assert capsys.readouterr().out.startswith("quantfuse explain: 4 candidate site(s) in 1 graph(s) (no grad): "
                                              "2 fused, 2 near miss(es), 0 kept for speed")


def test_cli_target_forms():
    from quantfuse.__main__ import load_target

    assert isinstance(load_target("explain_models:build"), torch.nn.Module)  # factory: called
    assert isinstance(load_target("explain_models:Sites"), torch.nn.Module)  # class: instantiated
    assert load_target("explain_models:fp8_tokens").__name__ == "fp8_tokens"  # function: itself
    with pytest.raises(SystemExit, match="not module:callable"):
        load_target("explain_models")


def test_list_patterns_has_one_family_per_pair():
    families = quantfuse.list_patterns()
    assert [(f.activation, f.scheme) for f in families] == list(quantfuse.passes.ALL_PAIRS)
    fp8 = families[0]
    assert fp8.fused_op == "silu_and_mul_per_block_quant" and fp8.native_by_default
    assert fp8.op_patterns == tuple(f"op:silu_and_mul+per_token_group_quant_fp8/{n}args" for n in (1, 2, 3))
    assert all(n.startswith("native:silu_and_mul[") for n in fp8.native_patterns) and len(fp8.native_patterns) > 4
    assert str(fp8).startswith("silu_and_mul -> fp8_per_group: quantfuse.silu_and_mul_per_block_quant; 3 op-form")


# --- configuration, logging, imports ----------------------------------------------------------

def test_fusion_config_accepts_lists_and_equals_the_tuple_config():
    listed = quantfuse.FusionConfig(fusions=[["silu_and_mul", "fp8_per_group"]], group_sizes=[128],
                                    dtypes=[torch.bfloat16], forms=["native"])
    tupled = quantfuse.FusionConfig(fusions=(("silu_and_mul", "fp8_per_group"),), group_sizes=(128,),
                                    dtypes=("bfloat16",), forms=("native",))
    assert listed == tupled and hash(listed) == hash(tupled)
    assert quantfuse.FusionPass(listed).uuid() == quantfuse.FusionPass(tupled).uuid()


@pytest.mark.parametrize("kwargs, message", [
    ({"group_sizes": (32,)}, r"group size\(s\) \[32\] are not supported by the fused kernels \(supported: 64, 128\)"),
    ({"dtypes": ("float64",)}, r"dtype 'float64' is not supported by the fused kernels"),
    ({"fusions": [("silu_and_mul", "fp4")]}, r"unknown fusion \('silu_and_mul', 'fp4'\)"),
    ({"forms": ["graph"]}, r"unknown pattern forms \['graph'\]"),
])
def test_fusion_config_rejects_what_the_kernels_do_not_support(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantfuse.FusionConfig(**kwargs)


def test_fusion_config_rejects_malformed_pairs():
    with pytest.raises(TypeError, match="is not an \\(activation, scheme\\) pair"):
        quantfuse.FusionConfig(fusions=["silu_and_mul"])


def test_tracing_patterns_logs_no_backend_choice(caplog):
    gm = post_grad_graph(SliceSiluView(), SliceSiluView().make_input())
    logged, calls = dict(oracle._choices), oracle.calls.copy()
    config = quantfuse.FusionConfig(dtypes=("bfloat16", "float16"))  # a config not built yet: traces
    with caplog.at_level(logging.INFO, logger="quantfuse.backend"):
        fusion = quantfuse.FusionPass(config)
        fusion(gm.graph)
    assert len(fusion.report.rewrites) == 1
    assert [r.message for r in caplog.records if r.name == "quantfuse.backend"] == []
    assert oracle._choices == logged and oracle.calls == calls


def test_import_quantfuse_reference_is_the_reference_module():
    ref = importlib.import_module("quantfuse.reference")
    from quantfuse.custom_ops import reference as impl

    assert ref.mxfp4_quant is impl.mxfp4_quant and ref.swizzle_128x4 is impl.swizzle_128x4
    assert ref.FP8_MAX == 448.0 and ref.EPS == 1e-10


# --- the docs a user reads ---------------------------------------------------------------

_DOCS = ["README.md", "docs/numerics.md", "docs/architecture.md"]


def test_nothing_in_the_repository_points_at_a_design_file_it_does_not_carry():
    hits = []
    for path in REPO.rglob("*"):
        if ".git" in path.parts or not path.is_file() or path.suffix not in (".py", ".md", ".cuh", ".h", ".cpp",
                                                                               ".cu", ".sh", ".toml"):
            continue
        text = path.read_text(errors="ignore")
        if "DESIGN" + ".md" in text or "../" + "shared" in text:
            hits.append(str(path.relative_to(REPO)))
    assert hits == []


@pytest.mark.parametrize("doc", _DOCS)
def test_every_file_and_name_the_docs_mention_exists(doc):
    text = (REPO / doc).read_text()
    paths = set(re.findall(r"`((?:quantfuse|docs|benchmarks|examples|tests|csrc|\.ci)/[\w./-]*)`", text))
    paths |= set(re.findall(r"\]\(((?:\.\./)?[\w./-]+\.\w+)\)", text))
    missing = [p for p in paths if not (REPO / p).exists() and not (REPO / doc).parent.joinpath(p).exists()]
    assert missing == []
    names = set(re.findall(r"`quantfuse\.((?:[a-z_]+\.)*[A-Za-z_0-9]+)", text)) - {"py"}
    unknown = []
    for name in names:
        obj = quantfuse
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                try:
                    obj = importlib.import_module(f"quantfuse.{name}")
                except ImportError:
                    pass
                break
        if obj is None:
            unknown.append(name)
    assert unknown == []


def test_readme_documents_every_environment_variable():
    text = (REPO / "README.md").read_text()
    for var in ("QUANTFUSE_CACHE_DIR", "QUANTFUSE_VERBOSE_BUILD", "QUANTFUSE_LOG", "QUANTFUSE_BACKEND",
                "QUANTFUSE_PDL", "QUANTFUSE_DUMP_DIR"):
        assert f"`{var}" in text, var
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in text  # the README's test command is what CI runs
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
