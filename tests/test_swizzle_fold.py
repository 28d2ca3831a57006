"""The 128x4 swizzle of MX scale bytes after a fused site (torchao's ``to_blocked``, or any
spelling of the same index map) is folded into the fused op (``is_sf_swizzled_layout=True``),
decided by evaluating the chain on an index tensor (quantfuse/patterns/swizzle.py); a chain that
lays the scales out another way (64x4 tiles, another padding byte) is a near miss and stays."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import quantfuse
import swizzle_spelled
from helpers import compiled_with_pass, count_targets, post_grad_graph
from quantfuse.custom_ops import reference
from quantfuse.patterns import swizzle
from torchao_spelled import assert_mxfp4_equal_but_nan, mx_inputs, silu_mul, to_mx_torch

FP8, FP4 = torch.float8_e4m3fn, torch.float4_e2m1fn_x2
ROWS = (1, 127, 128, 129, 300)
GROUPS = (8, 5)  # a multiple of 4, and not
CONFIG = quantfuse.FusionConfig(native_on_cpu=True)
#: what the chain's ops lower to in a post-grad graph (none is left once it is folded)
CHAIN_OPS = ("permute", "clone", "slice_scatter", "constant_pad_nd", "aten.copy.", "byte buffer")


def _count(gm, name) -> int:
    if name != "byte buffer":
        return count_targets(gm, name)
    return sum(1 for n in gm.graph.nodes if n.target is torch.ops.aten.full.default
               and n.kwargs.get("dtype") in (torch.uint8, torch.float8_e8m0fnu))


def _inputs(rows, groups, seed=None):
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    return mx_inputs(max(rows, 16), 32 * groups, seed)[:rows].contiguous(), seed


def _assert_bytes(elem, got, want, x, mode, seed):
    (cq, cs), (eq, es) = got, want
    assert cs.dtype == es.dtype and cs.shape == es.shape
    assert torch.equal(cs.view(torch.uint8), es.view(torch.uint8)), seed
    if elem is FP8:
        assert torch.equal(cq.view(torch.uint8), eq.view(torch.uint8)), seed
    else:
        assert_mxfp4_equal_but_nan(cq, eq, silu_mul(x), mode, seed)


def _torchao(elem, mode):
    pytest.importorskip("torchao")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx

    def fn(x):
        scale, q = to_mx(silu_mul(x), elem, 32, ScaleCalculationMode[mode], is_swizzled_scales=True)
        return q, scale
    return fn


def _plain(elem, layout, mode="FLOOR"):
    def fn(x):
        s, q = to_mx_torch(silu_mul(x), "e4m3" if elem is FP8 else "e2m1", mode)
        return q, layout(s)
    return fn


def _passed(fn, x):
    """The post-grad graph of ``fn(x)`` before and after the pass, and the pass's report."""
    gm = post_grad_graph(fn, x)
    before = {name: _count(gm, name) for name in CHAIN_OPS}
    fusion = quantfuse.FusionPass(CONFIG)
    fusion(gm.graph)
    gm.recompile()
    return gm, before, fusion.report


def _swizzled(report) -> bool:
    (r,) = report.rewrites
    return r.params["is_sf_swizzled_layout"]


@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("elem", [FP8, FP4], ids=["mxfp8", "mxfp4"])
def test_torchao_swizzled_scales_are_folded(elem, rows, groups):
    """The real ``to_mx(..., is_swizzled_scales=True)`` compiled whole with the pass (which Inductor's
    CPU code cannot do without it: the swizzle copies e8m0 values) gives eager to_mx's bytes, the
    fused op writing the swizzled layout."""
    mode = "RCEIL" if rows == 129 else "FLOOR"
    fn = _torchao(elem, mode)
    x, seed = _inputs(rows, groups)
    want = fn(x)
    got, report = compiled_with_pass(fn, x, config=CONFIG)
    assert report.near_misses == [] and _swizzled(report), str(report)
    _assert_bytes(elem, got, want, x, mode, seed)


@pytest.mark.parametrize("elem", [FP8, FP4], ids=["mxfp8", "mxfp4"])
def test_torchao_chain_is_gone_from_the_graph(elem):
    """Node counts: torchao's zero buffer, corner write, permutes and copies are all gone; the fused
    op's scales are viewed as e8m0 and reshaped to to_mx's shape."""
    fn = _torchao(elem, "FLOOR")
    x, _ = _inputs(129, 5, seed=3)
    gm, before, report = _passed(fn, x)
    assert before["permute"] == 2 and before["clone"] == 2
    assert before["slice_scatter"] >= 1 and before["byte buffer"] >= 1
    assert _swizzled(report) and report.near_misses == []
    for name in CHAIN_OPS:
        assert _count(gm, name) == 0, name
    assert count_targets(gm, "view.dtype") == 1 and count_targets(gm, "_mx") == 1
    assert report.nodes_before - report.nodes_after > 40, str(report)
    q, s = gm(x)
    eq, es = fn(x)
    assert s.shape == es.shape == (64, 32) and torch.equal(s.view(torch.uint8), es.view(torch.uint8))


@pytest.mark.parametrize("layout", ["padded", "into_zeros"])
@pytest.mark.parametrize("rows,groups", [(1, 8), (129, 5), (300, 8), (127, 6)])
@pytest.mark.parametrize("elem", [FP8, FP4], ids=["mxfp8", "mxfp4"])
def test_plain_torch_swizzles_are_folded(elem, rows, groups, layout):
    """Two plain-torch spellings of the same index map (tests/swizzle_spelled.py: F.pad + unflatten /
    transpose / flatten, ending in an e8m0 view of another shape; a zero buffer + one permute) fold
    too, and the compiled model gives eager's bytes."""
    fn = _plain(elem, getattr(swizzle_spelled, layout))
    x, seed = _inputs(rows, groups)
    gm, _, report = _passed(fn, x)
    assert _swizzled(report) and report.near_misses == [], str(report)
    for name in CHAIN_OPS:
        assert _count(gm, name) == 0, name
    want = fn(x)
    _assert_bytes(elem, gm(x), want, x, "FLOOR", seed)
    if rows == 129:
        got, report = compiled_with_pass(fn, x, config=CONFIG)
        assert _swizzled(report)
        _assert_bytes(elem, got, want, x, "FLOOR", seed)


@pytest.mark.parametrize("case,rows,groups,reason", [
    ("tile64", 129, 5, "the scale chain lays the scales out in 64x4 tiles; the fused op's swizzled layout has "
                       "128x4 tiles"),
    ("tile64", 300, 8, "the scale chain lays the scales out in 64x4 tiles; the fused op's swizzled layout has "
                       "128x4 tiles"),
    ("pad1", 129, 8, "the scale chain is the 128x4 swizzled layout but pads with byte(s) 0x01; the fused op "
                     "writes zero bytes there"),
    ("pad255", 128, 5, "the scale chain is the 128x4 swizzled layout but pads with byte(s) 0xff; the fused op "
                       "writes zero bytes there"),
    ("cols2", 129, 6, "the scale chain lays the scales out in 128x2 tiles; the fused op's swizzled layout has "
                      "128x4 tiles"),
    ("strided", 129, 5, "the scale chain is the 128x4 swizzled layout as a strided view (strides (1024, 4, 8, 256, 1)); "
                        "the fused op writes it contiguous"),
])
def test_other_layouts_are_near_misses(case, rows, groups, reason):
    """A chain close to the swizzle but not equal keeps its nodes (the site is fused with row-major
    scales) and the report names why; the graph still gives eager's bytes."""
    layout = {"tile64": lambda s: swizzle_spelled.padded(s, rows=64),
              "pad1": lambda s: swizzle_spelled.padded(s, value=1),
              "pad255": lambda s: swizzle_spelled.padded(s, value=255),
              "cols2": lambda s: swizzle_spelled.padded(s, cols=2),
              "strided": lambda s: swizzle_spelled.into_zeros(s, contiguous=False)}[case]
    fn = _plain(FP8, layout)
    x, seed = _inputs(rows, groups)
    gm, before, report = _passed(fn, x)
    assert not _swizzled(report), str(report)
    (miss,) = report.near_misses
    assert miss.reason == reason and miss.pattern == "recognised", miss.reason
    assert "swizzle_spelled.py" in miss.source
    for name in ("permute", "constant_pad_nd" if case != "strided" else "slice_scatter"):
        assert _count(gm, name) == before[name] >= 1, name
    _assert_bytes(FP8, gm(x), fn(x), x, "FLOOR", seed)


def test_padding_byte_is_irrelevant_without_padding():
    """Decided by evaluation: padded with 0xff where nothing is padded (128 rows, 8 groups) is the
    swizzled layout, and folds."""
    fn = _plain(FP8, lambda s: swizzle_spelled.padded(s, value=255))
    x, seed = _inputs(128, 8)
    gm, _, report = _passed(fn, x)
    assert _swizzled(report) and report.near_misses == [] and count_targets(gm, "constant_pad_nd") == 0
    _assert_bytes(FP8, gm(x), fn(x), x, "FLOOR", seed)


def test_plain_views_are_not_reported():
    """Row-major scales viewed as e8m0 and reshaped: no layout chain, no near miss, not swizzled."""
    fn = _plain(FP8, lambda s: s.view(torch.float8_e8m0fnu).reshape(-1))
    x, _ = _inputs(129, 8)
    _, _, report = _passed(fn, x)
    assert not _swizzled(report) and report.near_misses == []


@pytest.mark.parametrize("tokens,groups", [(1, 1), (127, 5), (128, 4), (129, 8), (300, 6)])
def test_tiled_map_at_128x4_is_the_reference_swizzle(tokens, groups):
    """The index map the near misses name tiles with is the reference's swizzle at 128x4, and the
    fold's target map holds each scale once and -1 (the fused op's zero byte) elsewhere."""
    want = swizzle._swizzled_map(tokens, groups)
    assert torch.equal(swizzle.tiled_map(tokens, groups, 128, 4), want)
    s = torch.arange(tokens * groups).reshape(tokens, groups)
    assert torch.equal(reference.swizzle_128x4(s + 1).reshape(-1) - 1, want)
    assert torch.equal(want[want >= 0].sort().values, torch.arange(tokens * groups))
    assert F.pad(s, (0, 0)).numel() == tokens * groups
