"""torchao's real ``to_mx`` (MXFP8 and MXFP4, every scale calculation mode) after SiLU×Mul, under
the pass (issue 17: code from other projects).

``to_mx`` (``torchao/prototype/mx_formats/mx_tensor.py``) derives its FLOOR / CEIL / EVEN scales
from the amax's bits (``view(int32)``, shifts, masks, ``where(isnan(amax), 0xFF, ...)``, the byte
shifted back into a float's exponent and floored at ``2^-126``) and its RCEIL multiplier from the
byte with ``where``s (byte 0 -> 1.0, 254 -> 2^-127, 255 -> NaN). The recogniser reads each by
evaluating it (``quantfuse/patterns/mx_scale.py``) and fuses it to the MX op with the recipe
that computes those bits: FLOOR / CEIL / EVEN with ``mx_inf=bits, mx_byte0=min_normal,
mx_nan=div_inf``, RCEIL with ``mx_byte0=one``. The model compiled whole with the pass gives
eager ``to_mx``'s bytes, data and scales; on the CPU Inductor cannot compile FLOOR / CEIL / EVEN
without the pass in torch 2.13 (no C++ type for ``float8_e8m0fnu``), the fused op replaces the
region it fails on. One exception, MXFP4 elements that are NaN (a NaN block's inf and NaN
elements): E2M1 has no NaN, the fused op codes them 0, and torchao's bit trick gives a code that
depends on the NaN's payload bits (``docs/numerics.md``).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from helpers import compiled_with_pass, count_targets, post_grad_graph
from torchao_spelled import BITS_SPEC, SPECS, assert_mxfp4_equal_but_nan, mx_inputs, silu_mul, to_mx_torch

pytest.importorskip("torchao")
from torchao.prototype.mx_formats.config import ScaleCalculationMode  # noqa: E402
from torchao.prototype.mx_formats.mx_tensor import to_mx  # noqa: E402

FP8, FP4 = torch.float8_e4m3fn, torch.float4_e2m1fn_x2
CASES = [(elem, mode) for elem in (FP8, FP4) for mode in SPECS]
IDS = [f"{'mxfp8' if e is FP8 else 'mxfp4'}-{m}" for e, m in CASES]


def _model(elem, mode, block=32, swizzled=False):
    def fn(x):
        gate, up = x.chunk(2, dim=-1)
        scale, q = to_mx(F.silu(gate) * up, elem, block, ScaleCalculationMode[mode], is_swizzled_scales=swizzled)
        return q, scale
    return fn


@pytest.mark.parametrize("elem,mode", CASES, ids=IDS)
def test_torchao_to_mx_is_fused(elem, mode):
    fn = _model(elem, mode)
    gm = post_grad_graph(fn, mx_inputs(16, 256, 0))
    assert count_targets(gm, "where") >= 1 and count_targets(gm, "amax") == 1
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    fusion(gm.graph)
    gm.recompile()
    report = fusion.report
    assert report.near_misses == []
    (r,) = report.rewrites
    op = "mxfp8" if elem is FP8 else "mxfp4"
    assert r.fused_op == f"quantfuse.silu_and_mul_{op}_quant" and r.pattern == f"recognised:silu_and_mul[halves]+{op}"
    assert r.params == {"scale_rounding": mode.lower(), "is_sf_swizzled_layout": False, "recipe": SPECS[mode]}
    assert f"recipe={SPECS[mode]}" in str(report) and "to_mx(" in r.source
    # the whole site is gone: one fused call; no amax, no bit arithmetic, no select, no cast to
    # e4m3 or E2M1 encoding left; the e8m0 view of the bytes (outside the site) stays
    assert count_targets(gm, f"silu_and_mul_{op}_quant") == 1
    for name in ("amax", "bitwise", "rshift", "lshift", "where", "isnan", "log2", "exp2", "neg", "clamp",
                 "convert_element_type", "slice"):
        assert count_targets(gm, name) == 0, name
    assert count_targets(gm, "view.dtype") == 1  # uint8 -> float8_e8m0fnu


@pytest.mark.parametrize("spelling", ["torchao", "plain"])
@pytest.mark.parametrize("elem,mode", CASES, ids=IDS)
def test_compiled_model_gives_eager_to_mx_bytes(elem, mode, spelling):
    """The model compiled whole (Inductor's code generation included) with the pass gives eager
    to_mx's bytes on fresh random inputs with every kind of special block; also for
    tests/torchao_spelled.py's plain-torch spelling of it, a close variant (EVEN's NaN put back by
    ``where`` instead of torchao's masked fill), read by what it computes."""
    seed = int.from_bytes(os.urandom(4), "little")
    x = mx_inputs(24, 512, seed)
    if spelling == "torchao":
        fn = _model(elem, mode)
    else:
        def fn(x):
            s, q = to_mx_torch(silu_mul(x), "e4m3" if elem is FP8 else "e2m1", mode)
            return q, s.view(torch.float8_e8m0fnu)
    eq, es = fn(x)
    (cq, cs), report = compiled_with_pass(fn, x, config=quantfuse.FusionConfig(native_on_cpu=True))
    assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
    assert cs.dtype == es.dtype == torch.float8_e8m0fnu and cs.shape == es.shape
    assert torch.equal(cs.view(torch.uint8), es.view(torch.uint8)), seed
    assert (es.view(torch.uint8) == 0xFF).any() and (es.view(torch.uint8) == 0).any()  # NaN and byte-0 blocks ran
    if elem is FP8:
        assert torch.equal(cq.view(torch.uint8), eq.view(torch.uint8)), seed
    else:
        assert_mxfp4_equal_but_nan(cq, eq, silu_mul(x), mode, seed)


@pytest.mark.parametrize("elem,mode", CASES, ids=IDS)
def test_plain_torch_spelling_is_torchao(elem, mode):
    """tests/torchao_spelled.py's ``to_mx_torch`` (what the GPU tests compare the kernels with, the
    GPU machine having no torchao) gives the real to_mx's bytes, NaN codes included."""
    x = mx_inputs(24, 512, int.from_bytes(os.urandom(4), "little"))
    y = silu_mul(x)
    es, eq = to_mx(y, elem, 32, ScaleCalculationMode[mode])
    s, q = to_mx_torch(y, "e4m3" if elem is FP8 else "e2m1", mode)
    assert torch.equal(s, es.view(torch.uint8)) and torch.equal(q.view(torch.uint8), eq.view(torch.uint8))


def test_swizzled_scales_are_fused_swizzled():
    """``is_swizzled_scales=True``: torchao's ``to_blocked`` after the site is folded into the fused
    op (``is_sf_swizzled_layout=True``, quantfuse/patterns/swizzle.py), which writes the swizzled
    bytes eager's to_blocked gives (tests/test_swizzle_fold.py: more shapes, compiled whole)."""
    x = mx_inputs(256, 256, 1)
    fn = _model(FP8, "FLOOR", swizzled=True)
    eq, es = fn(x)
    gm = post_grad_graph(fn, x)
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    fusion(gm.graph)
    gm.recompile()
    (r,) = fusion.report.rewrites
    assert r.params["is_sf_swizzled_layout"] is True and r.params["recipe"] == BITS_SPEC
    assert count_targets(gm, "permute") == 0 and count_targets(gm, "slice_scatter") == 0
    cq, cs = gm(x)
    assert torch.equal(cq.view(torch.uint8), eq.view(torch.uint8))
    assert torch.equal(cs.view(torch.uint8), es.view(torch.uint8))


@pytest.mark.parametrize("case,reason", [
    ("fp32", "MX of a float32 activation: a block scale the recogniser evaluates is checked on every amax a "
             "16-bit activation can have"),
    ("block16", "ops the recogniser evaluates only for MX blocks of 32 elements (these have 16)"),
])
def test_torchao_to_mx_near_misses(case, reason):
    """What still is not fused says why: a float32 activation (its amax is not probed exhaustively),
    blocks of 16 (no MX recipe)."""
    if case == "fp32":
        fn, x = _model(FP8, "FLOOR"), mx_inputs(16, 256, 2).float()
    else:
        fn, x = _model(FP8, "FLOOR", block=16), mx_inputs(16, 256, 2)
    gm = post_grad_graph(fn, x)
    code = gm.code
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    fusion(gm.graph)
    gm.recompile()
    assert fusion.report.rewrites == [] and gm.code == code
    (miss,) = fusion.report.near_misses
    assert miss.pattern == "recognised" and reason in miss.reason, miss.reason


@pytest.mark.parametrize("mode", list(SPECS))
def test_torchao_mxfp8_is_fused_at_a_symbolic_token_count(mode):
    """torchao's MXFP8 ``to_mx`` with the token count marked dynamic: the evaluating reader reads its
    scale for every count (the probe runs on the amax alone; the site's other reads are checked for
    every count as the canonical reader's are), one graph serves every count, bytes equal eager's."""
    from test_recognise_symbolic import _compiled

    report, runs = _compiled(_model(FP8, mode), lambda t: (mx_inputs(t, 256, 0),), tokens=(12, 17, 40))
    assert len(report.graphs) == 1 and report.near_misses == [], str(report)
    (r,) = report.rewrites
    assert r.fused_op == "quantfuse.silu_and_mul_mxfp8_quant"
    assert r.params == {"scale_rounding": mode.lower(), "is_sf_swizzled_layout": False, "recipe": SPECS[mode]}
    for eager, got in runs:
        for e, g in zip(eager, got):
            assert e.shape == g.shape and torch.equal(e.view(torch.uint8), g.view(torch.uint8))


@pytest.mark.parametrize("mode", list(SPECS))
def test_torchao_mxfp4_is_fused_at_a_symbolic_token_count(mode):
    """torchao's MXFP4 ``to_mx`` with the token count marked dynamic: its packing views the codes
    flattened across the rows (``pack_uint4``), which the analysis accepts because the pairs it packs
    never straddle two rows (e2m1.read_site); one graph serves every count, the scales are eager's
    bytes and the codes eager's in every nibble but NaN elements' (E2M1 has none)."""
    from test_recognise_symbolic import _compiled

    make = lambda t: (mx_inputs(t, 256, t),)  # noqa: E731
    report, runs = _compiled(_model(FP4, mode), make, tokens=(12, 17, 40))
    assert len(report.graphs) == 1 and report.near_misses == [], str(report)
    (r,) = report.rewrites
    assert r.fused_op == "quantfuse.silu_and_mul_mxfp4_quant"
    assert r.params == {"scale_rounding": mode.lower(), "is_sf_swizzled_layout": False, "recipe": SPECS[mode]}
    for t, ((eq, es), (gq, gs)) in zip((12, 17, 40), runs):
        assert gq.shape == eq.shape == (t, 128) and gs.shape == es.shape == (t, 8)
        assert torch.equal(gs.view(torch.uint8), es.view(torch.uint8))
        assert_mxfp4_equal_but_nan(gq, eq, silu_mul(make(t)[0]), mode, f"{mode} at {t} tokens")
