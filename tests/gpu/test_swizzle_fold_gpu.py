"""The 128x4 swizzle of MX scale bytes folded into the fused op on a GPU graph
(quantfuse/patterns/swizzle.py; tests/test_swizzle_fold.py on the CPU): plain-torch spellings of
the swizzle (tests/swizzle_spelled.py) after ``to_mx_torch`` (tests/torchao_spelled.py, torchao's
computation) compiled with the pass are fused to the CUDA kernel writing the swizzled layout
(``is_sf_swizzled_layout=True``), and give eager's bytes, data and scales; the real torchao
``to_mx(..., is_swizzled_scales=True)`` too where torchao is installed; a 64x4 tiling is a near
miss that keeps its chain and still gives eager's bytes."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

import swizzle_spelled  # noqa: E402
from helpers import compiled_with_pass  # noqa: E402

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend, oracle  # noqa: E402
from torchao_spelled import assert_mxfp4_equal_but_nan, mx_inputs, silu_mul, to_mx_torch  # noqa: E402

SCHEMES = {"e4m3": "mxfp8", "e2m1": "mxfp4"}
SHAPES = [(1, 8), (127, 5), (128, 4), (129, 8), (300, 6)]


def _inputs(rows, groups):
    seed = int.from_bytes(os.urandom(4), "little")
    return mx_inputs(max(rows, 16), 32 * groups, seed, "cuda")[:rows].contiguous(), seed


def _skip(element, mode):
    if not cuda_backend.is_available():
        pytest.skip(f"CUDA extension unavailable: {cuda_backend.unavailable_reason()}")
    if element == "e4m3" and mode != "RCEIL" and not catalog.E4M3_CAST_SATURATES:
        pytest.skip("under compile to_mx leaves the E4M3 overflow to the cast, which NaNs on this torch")


def _assert_same(element, mode, x, got, want, what):
    (q, s), (wq, ws) = got, want
    assert s.dtype == ws.dtype and s.shape == ws.shape, what
    assert torch.equal(s.view(torch.uint8), ws.view(torch.uint8)), \
        f"{what}: scales differ at {(s.view(torch.uint8) != ws.view(torch.uint8)).nonzero()[:4].tolist()}"
    if element == "e4m3":
        assert torch.equal(q.view(torch.uint8), wq.view(torch.uint8)), f"{what}: q differs"
    else:
        assert_mxfp4_equal_but_nan(q, wq, silu_mul(x), mode, what)


@pytest.mark.parametrize("rows,groups", SHAPES)
@pytest.mark.parametrize("layout", ["padded", "into_zeros"])
@pytest.mark.parametrize("element,mode", [("e4m3", "RCEIL"), ("e4m3", "FLOOR"), ("e2m1", "FLOOR"), ("e2m1", "RCEIL")])
def test_swizzle_is_folded_into_the_cuda_kernel(element, mode, layout, rows, groups):
    _skip(element, mode)
    spell = getattr(swizzle_spelled, layout)

    def fn(x):
        s, q = to_mx_torch(silu_mul(x), element, mode)
        return q, spell(s)
    x, seed = _inputs(rows, groups)
    want = fn(x)
    oracle.reset_counts()
    got, report = compiled_with_pass(fn, x)
    (r,) = report.rewrites
    assert r.params["is_sf_swizzled_layout"] is True and report.near_misses == [], str(report)
    assert oracle.call_counts().get((f"silu_and_mul_{SCHEMES[element]}_quant", "cuda"), 0) >= 1
    _assert_same(element, mode, x, got, want, f"{layout} {rows}x{groups} seed {seed}")


@pytest.mark.parametrize("rows,groups", [(129, 5), (300, 8)])
@pytest.mark.parametrize("element,mode", [("e4m3", "RCEIL"), ("e2m1", "FLOOR")])
def test_real_torchao_swizzled_scales_on_the_gpu(element, mode, rows, groups):
    pytest.importorskip("torchao")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx

    _skip(element, mode)
    elem = torch.float8_e4m3fn if element == "e4m3" else torch.float4_e2m1fn_x2

    def fn(x):
        s, q = to_mx(silu_mul(x), elem, 32, ScaleCalculationMode[mode], is_swizzled_scales=True)
        return q, s
    x, seed = _inputs(rows, groups)
    want = fn(x)
    got, report = compiled_with_pass(fn, x)
    (r,) = report.rewrites
    assert r.params["is_sf_swizzled_layout"] is True and report.near_misses == [], str(report)
    _assert_same(element, mode, x, got, want, f"torchao {rows}x{groups} seed {seed}")


def test_64x4_tiles_are_a_near_miss_on_the_gpu():
    _skip("e4m3", "RCEIL")

    def fn(x):
        s, q = to_mx_torch(silu_mul(x), "e4m3", "RCEIL")
        return q, swizzle_spelled.padded(s, rows=64)
    x, seed = _inputs(129, 5)
    want = fn(x)
    got, report = compiled_with_pass(fn, x)
    (r,) = report.rewrites
    assert r.params["is_sf_swizzled_layout"] is False
    assert [m.reason for m in report.near_misses] == [
        "the scale chain lays the scales out in 64x4 tiles; the fused op's swizzled layout has 128x4 tiles"]
    _assert_same("e4m3", "RCEIL", x, got, want, f"64x4 seed {seed}")
