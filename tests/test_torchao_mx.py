"""torchao's real ``to_mx`` (MXFP8 and MXFP4, every scale calculation mode) after SiLU×Mul, under
the pass (issue 17: code from other projects). None of these is fused yet; each must be
reported as a near miss with its reason, and the graph left exactly as it was.

``to_mx`` (``torchao/prototype/mx_formats/mx_tensor.py``) derives its FLOOR / CEIL / EVEN scales
from the amax's bits (``view(int32)``, shifts, masks) and selects its RCEIL exponent with
``where``s the recogniser does not read. Tested on traced post-grad graphs: Inductor's CPU code
generation itself cannot compile the FLOOR / CEIL / EVEN modes in torch 2.13 (no C++ type for
``float8_e8m0fnu``; ``DtypeView`` of a pointwise buffer not implemented), with or without the pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from helpers import post_grad_graph

pytest.importorskip("torchao")
from torchao.prototype.mx_formats.config import ScaleCalculationMode  # noqa: E402
from torchao.prototype.mx_formats.mx_tensor import to_mx  # noqa: E402

#: (element dtype, mode) -> what the near miss says
REASONS = {
    **{(torch.float8_e4m3fn, m): "(aten.view.dtype) is not an op the recogniser reads" for m in ("FLOOR", "CEIL", "EVEN")},
    (torch.float8_e4m3fn, "RCEIL"): "selects with a condition the recogniser does not read",
    **{(torch.float4_e2m1fn_x2, m): "computed from the float's bits, as torchao's to_mx does" for m in ("FLOOR", "CEIL", "EVEN")},
    (torch.float4_e2m1fn_x2, "RCEIL"): "the E2M1 codes are not computed from y / 2^e in float32",
}


@pytest.mark.parametrize("elem,mode", list(REASONS), ids=lambda v: str(v).replace("torch.", ""))
def test_torchao_to_mx_is_reported_not_fused(elem, mode):
    def fn(x):
        gate, up = x.chunk(2, dim=-1)
        scale, q = to_mx(F.silu(gate) * up, elem, 32, ScaleCalculationMode[mode])
        return q, scale

    x = torch.randn(8, 512, dtype=torch.bfloat16) * 3
    gm = post_grad_graph(fn, x)
    code = gm.code
    fusion = quantfuse.FusionPass(quantfuse.FusionConfig(native_on_cpu=True))
    fusion(gm.graph)
    gm.recompile()
    report = fusion.report
    assert report.rewrites == [] and gm.code == code
    (miss,) = report.near_misses
    assert miss.pattern == "recognised" and REASONS[(elem, mode)] in miss.reason, miss.reason
