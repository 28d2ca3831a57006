"""vLLM's names: quant keys as catalog recipes, pattern families, selection in FusionConfig, the report.

The names are vLLM's (``vllm/model_executor/layers/quantization/utils/quant_utils.py`` for the
keys, ``vllm/compilation/activation_quant_fusion.py`` for the pattern classes); the sites are
vLLM's native code re-written in ``test_recognise.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import quantfuse
from quantfuse import catalog, quant_keys
from quantfuse.catalog import Grouping, Recipe
from quantfuse.quant_keys import (kFp8Dynamic64Sym, kFp8Dynamic128Sym, kFp8DynamicTensorSym, kFp8DynamicTokenSym,
                                  kFp8StaticTensorSym, kMxfp4Dynamic, kMxfp8Dynamic)
from helpers import post_grad_graph
from test_recognise import X, _run, vllm_group_quant, vllm_silu_and_mul, vllm_static_quant, vllm_token_quant


def test_keys_are_catalog_recipes():
    assert kFp8Dynamic128Sym.recipe == Recipe(catalog.E4M3, Grouping.PER_GROUP, group_size=128)
    assert kFp8Dynamic64Sym.recipe == Recipe(catalog.E4M3, Grouping.PER_GROUP, group_size=64)
    assert kFp8DynamicTokenSym.recipe == catalog.FP8_PER_TOKEN.base
    assert kFp8DynamicTensorSym.recipe == catalog.FP8_PER_TENSOR.base and not kFp8DynamicTensorSym.recipe.static
    assert kFp8StaticTensorSym.recipe == catalog.FP8_STATIC.base and kFp8StaticTensorSym.recipe.static
    assert kMxfp8Dynamic.recipe == catalog.MXFP8.base and kMxfp4Dynamic.recipe == catalog.MXFP4.base
    assert set(quant_keys.QUANT_KEYS) == {"kFp8Dynamic128Sym", "kFp8Dynamic64Sym", "kFp8DynamicTokenSym",
                                          "kFp8DynamicTensorSym", "kFp8StaticTensorSym", "kMxfp8Dynamic",
                                          "kMxfp4Dynamic"}
    assert all(getattr(quant_keys, name) is key for name, key in quant_keys.QUANT_KEYS.items())
    assert str(kFp8Dynamic128Sym) == "kFp8Dynamic128Sym"


def test_one_family_per_pair_with_vllms_names():
    assert [(f.activation, f.scheme) for f in quant_keys.PATTERNS.values()] == list(catalog.PAIRS)
    block = quant_keys.pattern("SiluMulBlockQuantPattern")
    assert (block.activation, block.scheme, block.in_vllm) == ("silu_and_mul", "fp8_per_group", True)
    assert block.keys == (kFp8Dynamic128Sym, kFp8Dynamic64Sym)
    assert block.fused_op == "silu_and_mul_per_block_quant"
    static = quant_keys.pattern("SiluMulFp8StaticQuantPattern")
    assert (static.scheme, static.keys, static.in_vllm) == ("fp8_static", (kFp8StaticTensorSym,), True)
    assert {f.name for f in quant_keys.PATTERNS.values() if f.in_vllm} == set(quant_keys.VLLM_CLASSES)
    assert block.describe(kFp8Dynamic64Sym, {"column_major_scales": True}) == \
        "SiluMulBlockQuantPattern(kFp8Dynamic64Sym, is_scale_transposed=True, is_e8m0=False)"


def test_unknown_and_unfusable_names_say_why():
    with pytest.raises(ValueError, match="unknown quant key 'kFp8Dynamic32Sym'; known: kFp8Dynamic128Sym"):
        quant_keys.quant_key("kFp8Dynamic32Sym")
    with pytest.raises(ValueError, match="is vLLM's but quantfuse cannot fuse it: static per-token scales"):
        quantfuse.FusionConfig(quant_keys=["kFp8StaticTokenSym"])
    with pytest.raises(ValueError, match="'SiluMulNvfp4QuantPattern' is vLLM's but quantfuse cannot fuse it: NVFP4"):
        quantfuse.FusionConfig(patterns=["SiluMulNvfp4QuantPattern"])
    with pytest.raises(ValueError, match="unknown pattern family 'SiluMulQuantPattern'; known: SiluMulBlockQuant"):
        quantfuse.FusionConfig(patterns=["SiluMulQuantPattern"])
    with pytest.raises(ValueError, match="selects no"):
        quantfuse.FusionConfig(patterns=["SiluMulBlockQuantPattern"], quant_keys=[kMxfp8Dynamic])
    with pytest.raises(ValueError, match="none of them in group_sizes"):
        quantfuse.FusionConfig(quant_keys=[kFp8Dynamic64Sym], group_sizes=[128])
    with pytest.raises(TypeError, match="is not a str"):
        quantfuse.FusionConfig(patterns=[3])


def test_config_selects_by_names():
    block = quantfuse.FusionConfig(patterns=["SiluMulBlockQuantPattern"])
    assert block.fusions == block.native_fusions == (("silu_and_mul", "fp8_per_group"),)
    assert block.group_sizes == (64, 128)
    by_key = quantfuse.FusionConfig(quant_keys=[kFp8Dynamic64Sym, "kFp8StaticTensorSym"])
    assert by_key.quant_keys == ("kFp8Dynamic64Sym", "kFp8StaticTensorSym")  # objects stored as names
    assert set(by_key.fusions) == {(a, s) for a in catalog.ACTIVATIONS for s in ("fp8_per_group", "fp8_static")}
    assert by_key.group_sizes == (64,)
    both = quantfuse.FusionConfig(patterns="SiluMulBlockQuantPattern", quant_keys=kFp8Dynamic128Sym)
    assert both.fusions == (("silu_and_mul", "fp8_per_group"),) and both.group_sizes == (128,)
    # replace() (the pattern cache key) runs the narrowing again: the same config
    assert dataclasses.replace(both, dump_dir=None) == both and hash(both.pattern_key()) == hash(both)
    default = quantfuse.FusionConfig()
    assert default.patterns is None and default.quant_keys is None and default.fusions == catalog.PAIRS


def _report(fn, *args, config=None):
    gm = post_grad_graph(fn, *args)
    return _run(gm, config)


@pytest.mark.parametrize("column_major", [False, True])
def test_report_names_vllms_pattern_and_key(column_major):
    x = torch.randn(7, 1024, dtype=torch.bfloat16)
    report = _report(lambda x: vllm_group_quant(vllm_silu_and_mul(x), 64, column_major), x)
    (r,) = report.rewrites
    assert (r.vllm_pattern, r.quant_key) == ("SiluMulBlockQuantPattern", "kFp8Dynamic64Sym")
    form = f"SiluMulBlockQuantPattern(kFp8Dynamic64Sym, is_scale_transposed={column_major}, is_e8m0=False)"
    assert r.vllm_form == form and f"\n         as {form}" in str(report)


def test_report_names_static_and_per_token():
    scale = torch.tensor([0.02])
    (r,) = _report(lambda x, s: vllm_static_quant(vllm_silu_and_mul(x), s), X, scale).rewrites
    assert (r.vllm_pattern, r.quant_key, r.vllm_form) == (
        "SiluMulFp8StaticQuantPattern", "kFp8StaticTensorSym", "SiluMulFp8StaticQuantPattern(kFp8StaticTensorSym)")
    (r,) = _report(lambda x: vllm_token_quant(vllm_silu_and_mul(x)), X).rewrites
    assert (r.vllm_pattern, r.quant_key) == ("SiluMulFp8DynamicTokenQuantPattern", "kFp8DynamicTokenSym")


def test_op_form_rewrites_carry_the_names():
    """The pattern matcher's rewrites (quantfuse ops called by the model) name them too."""
    def fn(x):
        return torch.ops.quantfuse.per_token_group_quant_fp8(torch.ops.quantfuse.silu_and_mul(x), 128)
    (r,) = _report(fn, X).rewrites
    assert not r.pattern.startswith("recognised")
    assert (r.vllm_pattern, r.quant_key) == ("SiluMulBlockQuantPattern", "kFp8Dynamic128Sym")


def test_a_key_not_selected_is_left_alone():
    fn = lambda x: vllm_group_quant(vllm_silu_and_mul(x), 128)  # noqa: E731
    only64 = _report(fn, X, config=quantfuse.FusionConfig(quant_keys=["kFp8Dynamic64Sym"]))
    assert only64.rewrites == [] and "group size 128 is not supported (supported: 64)" in str(only64)
    static_only = _report(fn, X, config=quantfuse.FusionConfig(patterns=["SiluMulFp8StaticQuantPattern"]))
    assert static_only.rewrites == []
    assert [m.reason for m in static_only.near_misses] == [
        "(silu_and_mul, fp8_per_group) is not enabled in FusionConfig.native_fusions"]
    assert len(_report(fn, X, config=quantfuse.FusionConfig(patterns=["SiluMulBlockQuantPattern"])).rewrites) == 1


def test_list_patterns_lists_the_names():
    families = {f.name: f for f in quantfuse.list_patterns()}
    assert set(families) == set(quant_keys.PATTERNS)
    block = families["SiluMulBlockQuantPattern"]
    assert block.in_vllm and block.quant_keys == ("kFp8Dynamic128Sym", "kFp8Dynamic64Sym")
    assert str(block).endswith("; SiluMulBlockQuantPattern (vLLM's name) for kFp8Dynamic128Sym, kFp8Dynamic64Sym")
    assert not families["Relu2Mxfp8QuantPattern"].in_vllm


def test_explain_shows_the_vllm_form():
    explanation = quantfuse.explain(lambda x: vllm_group_quant(vllm_silu_and_mul(x), 128), X)
    (site,) = explanation.by_status("fused")
    assert site.vllm_form == "SiluMulBlockQuantPattern(kFp8Dynamic128Sym, is_scale_transposed=False, is_e8m0=False)"
    assert "as SiluMulBlockQuantPattern(kFp8Dynamic128Sym" in str(site)
