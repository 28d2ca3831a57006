"""On a GPU: the measured rule reads this device's table (or the default device's) in a real
compile, keeping a decode-size per-token site and fusing a prefill-size one; the kept graph's
output is the native graph's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import quantfuse  # noqa: E402
from helpers import compiled_with_pass  # noqa: E402
from quantfuse.passes import profitability, speed_table  # noqa: E402

OP = "silu_and_mul_per_token_quant_fp8"


def _site(x):
    a, b = x.chunk(2, -1)
    y = (F.silu(a) * b).float()
    s = y.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (y / s).clamp(-448, 448).to(torch.float8_e4m3fn), s


def _decides(rows, hidden, config) -> bool:
    y = torch.empty(rows, hidden, device="cuda", dtype=torch.bfloat16)
    return profitability.measured_reason(OP, "fp8_per_token", {}, y, config) is not None


@pytest.mark.parametrize("graphs", [True, False])
def test_the_table_decides_in_a_real_compile(graphs):
    """A cell the rule keeps and one it fuses, on this device's table (read by its real name), as a
    compile with the pass finds them: kept means Inductor's own code, bit for bit; fused means the
    fused op, with eager's bits."""
    config = quantfuse.FusionConfig(speed_table=True, cuda_graphs=graphs)
    name = torch.cuda.get_device_name()
    cells = (speed_table.TABLES.get(name) or speed_table.TABLES[profitability.DEFAULT_DEVICE])["cells"][(OP, "")]
    kept = [c for c in sorted(cells) if _decides(*c, config)]
    fused = [c for c in sorted(cells) if not _decides(*c, config)]
    assert kept and fused  # both kinds on the H200's table, in both modes
    for (rows, hidden), keep in ((kept[0], True), (fused[-1], False)):
        x = torch.randn(rows, 2 * hidden, device="cuda", dtype=torch.bfloat16) * 3
        (q, s), report = compiled_with_pass(_site, x, config=config)
        if keep:
            assert report.rewrites == [], str(report)
            assert report.near_misses[0].reason.startswith(profitability.KEPT_FOR_SPEED), str(report)
            assert f"{rows} x {hidden}" in report.near_misses[0].reason
            torch._dynamo.reset()
            q0, s0 = torch.compile(_site)(x)
        else:
            assert [r.fused_op.split(".")[-1] for r in report.rewrites] == [OP], str(report)
            q0, s0 = _site(x)
        assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0)
