"""What the spelling generator (``test_recognise_generated.py``) found, pinned as fixed cases:
spellings the recogniser now fuses bit for bit (``2 ** e`` and ``torch.pow(2, e)`` MX scales,
the power-of-two scale cast to ``float8_e8m0fnu``, E2M1 by ``torch.bucketize`` /
``torch.searchsorted`` on a constant table, static ``y * (1 / s)``), and the exact reasons of
the near sites it reported vaguely or not at all."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import quantfuse
from helpers import count_targets, post_grad_graph_and_inputs
from spellings_mx import MxSpelling, bucketize_codes
from spellings_static import StaticSpelling
from test_recognise_mxfp4 import pack_lanes

FP8 = torch.float8_e4m3fn


def _run(fn, *xs):
    gm, inputs = post_grad_graph_and_inputs(fn, *xs)
    code = gm.code
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig())
    fusion(gm.graph)
    gm.recompile()
    return gm, inputs, code, fusion.report


def _bits(t):
    return t.view(torch.uint8) if t.is_floating_point() and t.dtype.itemsize == 1 else t


def assert_fused_equals_eager(spelling, op):
    xs = spelling.make_inputs()
    gm, inputs, _, report = _run(spelling.fn, *xs)
    assert report.near_misses == [] and len(report.rewrites) == 1, str(report)
    assert report.rewrites[0].fused_op == f"quantfuse.{op}"
    eager, fused = spelling.fn(*xs), gm(*inputs)
    eager = eager if isinstance(eager, tuple) else (eager,)
    for e, f in zip(eager, fused, strict=True):
        assert e.dtype == f.dtype and e.shape == f.shape
        assert torch.equal(_bits(e), _bits(f))
    return gm, eager


def near_miss(spelling) -> str:
    xs = spelling.make_inputs()
    gm, _, code, report = _run(spelling.fn, *xs)
    assert report.rewrites == [] and gm.code == code, str(report)
    (m,) = report.near_misses
    return m.reason


@pytest.mark.parametrize("scale_form", ["pow", "pow_fn"])
@pytest.mark.parametrize("element", ["e4m3", "e2m1"])
def test_mx_scale_as_a_power_of_two(scale_form, element):
    """``2 ** e`` and ``torch.pow(2, e)`` are ``exp2(e)`` for the integer e of an MX exponent."""
    sp = MxSpelling(element=element, scale_form=scale_form, rounding="floor")
    assert_fused_equals_eager(sp, f"silu_and_mul_{sp.scheme.key}_quant")


@pytest.mark.parametrize("element", ["e4m3", "e2m1"])
def test_mx_scale_cast_to_e8m0(element):
    """``s.to(torch.float8_e8m0fnu)`` of the power-of-two scale: the fused op's bytes viewed as
    E8M0 (an all-zero block is byte 0, an inf block byte 254, as eager's cast gives them)."""
    sp = MxSpelling(element=element, bytes_form="e8m0_cast", act="relu2")
    gm, eager = assert_fused_equals_eager(sp, f"relu2_{sp.scheme.key}_quant")
    s = eager[1].view(torch.uint8)
    assert bool((s == 0).any()) and bool((s == 254).any())
    assert count_targets(gm, "exp2") == 0 and count_targets(gm, "view.dtype") == 1


def _bucketize_site(table, ties_even=True, search=False):
    def fn(x, *bounds):
        d = x.shape[-1] // 2
        y = torch.nn.functional.silu(x[..., :d]) * x[..., d:]
        yg = y.float().unflatten(-1, (-1, 32))
        e = torch.floor(torch.log2(yg.abs().amax(-1, keepdim=True))).sub(2).clamp(-127, 127)
        v = (yg / torch.exp2(e)).flatten(-2)
        if bounds:  # the table an argument: a graph input
            codes = torch.bucketize(v.abs(), bounds[0]).to(torch.uint8) | (torch.signbit(v).to(torch.uint8) << 3)
        elif table is not None:
            b = torch.tensor(table, device=v.device)
            idx = torch.searchsorted(b, v.abs()) if search else torch.bucketize(v.abs(), b)
            codes = idx.to(torch.uint8) | (torch.signbit(v).to(torch.uint8) << 3)
        else:
            codes = bucketize_codes(v, ties_even)
        return pack_lanes(codes), (e.squeeze(-1) + 127).to(torch.uint8)
    return fn


X = MxSpelling(element="e2m1").make_inputs()[0]
EVEN = [0.25, float(torch.nextafter(torch.tensor(0.75), torch.tensor(0.0))), 1.25,
        float(torch.nextafter(torch.tensor(1.75), torch.tensor(0.0))), 2.5,
        float(torch.nextafter(torch.tensor(3.5), torch.tensor(0.0))), 5.0]


@pytest.mark.parametrize("search", [False, True])
def test_e2m1_by_a_lookup_in_a_constant_table(search):
    """The table is a tensor literal (a ``get_attr`` constant post-grad): the lookup is evaluated
    on every probe value and equals E2M1's codes."""
    fn = _bucketize_site(EVEN, search=search)
    gm, inputs, _, report = _run(fn, X)
    assert report.near_misses == [] and report.rewrites[0].fused_op == "quantfuse.silu_and_mul_mxfp4_quant"
    assert count_targets(gm, "bucketize", "searchsorted", "lift_fresh") == 0
    (eq, es), (fq, fs) = fn(X), gm(*inputs)
    assert torch.equal(eq, fq) and torch.equal(es, fs)


def test_lookup_table_read_in_inductors_own_graph():
    """In Inductor's post-grad graph itself (``quantfuse.explain``, not a copy) the literal is an
    attribute of the graph's module, which the recogniser reads."""
    with torch.no_grad():
        (site,) = quantfuse.explain(_bucketize_site(EVEN), X).sites
    assert site.status == "fused" and site.fused_op == "quantfuse.silu_and_mul_mxfp4_quant", str(site)


def test_lookups_that_are_not_e2m1_are_near_misses():
    def reason(fn, *xs):
        gm, _, code, report = _run(fn, *xs)
        assert report.rewrites == [] and gm.code == code, str(report)
        return report.near_misses[0].reason
    # the thresholds themselves: bucketize counts a tie into the lower bucket
    assert reason(_bucketize_site(None, ties_even=False), X).startswith(
        "the E2M1 encoding rounds ties toward zero where E2M1 rounds them to even (at |v| = 0.75, 1.75, 3.5")
    # the table passed in (a module buffer is a graph input too): its values are not known
    assert reason(_bucketize_site(None), X, torch.tensor(EVEN)).startswith(
        "the E2M1 encoding looks the values up in `arg") and "a graph input (a module buffer or an argument)" in \
        reason(_bucketize_site(None), X, torch.tensor(EVEN))
    assert reason(_bucketize_site(EVEN[::-1]), X) == (
        "the E2M1 encoding's lookup table `lift_fresh_copy` is not sorted (its lookups are then undefined)")


def test_the_checked_encodings_are_keyed_by_the_table_values():
    """Two graphs whose lookups differ only in the table's values: each checked on its own."""
    assert _run(_bucketize_site(EVEN), X)[3].rewrites
    other = list(EVEN)
    other[3] = 1.75  # ties at 1.75 toward zero
    report = _run(_bucketize_site(other), X)[3]
    assert report.rewrites == [] and "rounds ties toward zero" in report.near_misses[0].reason


def test_mx_near_reasons():
    assert near_miss(MxSpelling(rounding="frexp")).startswith(
        "the exponent is read by torch.frexp (`frexp`), which gives 0 for an all-zero block and for inf")
    assert near_miss(MxSpelling(element="e2m1", rounding="frexp", apply="one_over")).startswith(
        "the activation is multiplied by `mul_")
    assert near_miss(MxSpelling(block=16)) == (
        "the scale is a power of two 2^e over groups of 16: MX scales blocks of 32, and an FP8 UE8M0 scale is "
        "exp2(ceil(log2(amax / 448.0)))")


def test_static_one_over_scale_is_fused():
    """``y * (1 / s)`` is ``y * reciprocal(s) * 1`` post-grad: found and fused (it was not a candidate)."""
    assert_fused_equals_eager(StaticSpelling(apply="one_over"), "silu_and_mul_quant")


@pytest.mark.parametrize("change,reason", [
    ({"scale_shape": "channel"}, "the static scale `s` has 512 elements (shape (512,)): a static FP8 scale is "
                                 "one value for the tensor"),
    ({"apply": "div_promote", "scale_shape": "0d", "cast_first": False},
     "y / s is rounded to bfloat16 before the FP8 cast (compute it in float32, e.g. y.float() / s): no recipe "
     "computes that"),
    ({"apply": "inv_input"}, "the activation is multiplied by the input `s` (a reciprocal computed outside the "
                             "graph?): the static op takes the scale s and computes y / s or y * (1 / s), which "
                             "round unlike y times a given 1 / s"),
    ({"scale_dtype": torch.bfloat16, "apply": "recip"}, "the static scale is torch.bfloat16; the fused op takes a "
                                                        "float32 scale"),
])
def test_static_near_reasons(change, reason):
    """Sites the recogniser did not find (a per-channel scale, a bf16 quotient) or reported by
    the expression they compute."""
    sp = dataclasses.replace(StaticSpelling(), **change)
    assert re.sub(r"`arg\d+_1`", "`s`", near_miss(sp)) == reason
