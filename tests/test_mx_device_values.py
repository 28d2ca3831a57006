"""MX scales spelled from the byte with ``torch.exp2`` (tests/mx_device_spelled.py): the recogniser
reads where the factor is the device's own ``exp2(-127.)`` (an inf block's multiplier: MxInf.EXP2;
a byte-0 block's divisor: MxByte0.EXP2) by evaluating the scale with that value moved one ulp
(quantfuse/patterns/mx_scale.py _device_form), and the fused op equals eager on the CPU (where
exp2(-127.) is 2^-127). tests/gpu/test_recognise_spellings_gpu.py checks them against eager CUDA."""

from __future__ import annotations

import pytest
import torch

import quantfuse
from helpers import compiled_with_pass, count_targets, post_grad_graph
from mx_device_spelled import SPECS, device_inputs, mx_fp8

from quantfuse import catalog
from quantfuse.custom_ops import reference


@pytest.mark.parametrize("spelling", sorted(SPECS))
def test_device_exp2_factor_is_read(spelling):
    gm = post_grad_graph(lambda x: mx_fp8(x, spelling), device_inputs(8, 256, 0))
    assert count_targets(gm, "exp2") == 1
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    fusion(gm.graph)
    (r,) = fusion.report.rewrites
    assert fusion.report.near_misses == []
    assert r.fused_op == "quantfuse.silu_and_mul_mxfp8_quant"
    assert r.params == {"scale_rounding": "rceil", "is_sf_swizzled_layout": False, "recipe": SPECS[spelling]}
    assert count_targets(gm, "exp2") == 0


@pytest.mark.parametrize("spelling", sorted(SPECS))
def test_compiled_equals_eager_on_cpu(spelling):
    x = device_inputs(16, 512, 1)
    eq, es = mx_fp8(x, spelling)
    (cq, cs), report = compiled_with_pass(lambda t: mx_fp8(t, spelling), x,
                                          config=quantfuse.FusionConfig(native_on_cpu=True))
    assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
    assert torch.equal(cs, es) and torch.equal(cq.view(torch.uint8), eq.view(torch.uint8))
    assert (es == 254).any() and (es == 0).any() and (es == 255).any()  # inf, byte-0 and NaN blocks ran


def test_device_factor_names_one_field():
    """A recipe has at most one device value (the kernels take one); its multiplier is RN(1 / d) for
    a byte-0 block, d for an inf block (on the CPU d is 2^-127)."""
    base = catalog.MXFP8.base
    with pytest.raises(ValueError, match="two of the device's values"):
        base.with_spec("mx_byte0=exp2,mx_inf=exp2")
    assert base.with_spec("mx_inf=exp2").device_factor is catalog.MxInf.EXP2
    assert base.with_spec("mx_byte0=pow").device_factor is catalog.MxByte0.POW
    assert base.device_factor is None
    assert float(reference.device_factor(catalog.MxInf.EXP2, "cpu")) == 2.0 ** -127
    assert float(reference.device_factor(catalog.MxByte0.EXP2, "cpu")) == 2.0 ** 127
    exp = torch.tensor([127, -127, 3], dtype=torch.int32)
    bad = torch.zeros(3, dtype=torch.bool)
    m = reference.mx_multipliers(exp, bad, base.with_spec("mx_inf=exp2,mx_byte0=one"))
    assert m.tolist() == [2.0 ** -127, 1.0, 2.0 ** -3]


@pytest.mark.parametrize("element", ["e4m3", "e2m1"])
def test_times_exp2_of_minus_e_is_mx_inf_exp2(element):
    """``y * torch.exp2(-e)``, read symbolically (recognise.parse_apply's MX multiplier): the recipe
    is ``mx_inf=exp2`` (an inf block's factor is the device's exp2(-127.); a byte-0 block's exp2(127.)
    is exact), and the fused op equals eager on the CPU; ``y * 2 ** -e`` is a near miss."""
    from spellings_mx import MxSpelling

    x = device_inputs(16, 512, 4)
    # no NaN block: eager's (nan + 127).to(torch.uint8) byte is undefined (docs/numerics.md)
    x = torch.where(torch.isnan(x), 1.0, x).to(x.dtype)
    spelling = MxSpelling(element=element, apply="times_neg")
    want = spelling.fn(x)
    got, report = compiled_with_pass(spelling.fn, x, config=quantfuse.FusionConfig(native_on_cpu=True))
    assert len(report.rewrites) == 1 and report.near_misses == [], str(report)
    assert report.rewrites[0].params["recipe"] == "mx_inf=exp2"
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w.view(torch.uint8), g.view(torch.uint8))
    near = MxSpelling(element=element, apply="times_neg", scale_form="pow")
    assert near.recipe() is None
    _, report = compiled_with_pass(near.fn, x, config=quantfuse.FusionConfig(native_on_cpu=True))
    assert report.rewrites == [] and len(report.near_misses) == 1
