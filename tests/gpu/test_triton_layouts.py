"""GPU tests of the Triton backend through its protocol (``supports`` / ``run``): every op of
:data:`catalog.OPS` in every gated :class:`catalog.Layout`, every kernel parameter set of its
scheme, every input dtype, against ``reference`` on the same GPU, bit for bit.

Outputs are poisoned (0xAB bytes / NaN) before each call so unwritten elements show; the
inputs hold NaN / inf / zero / tie rows; the static scheme also runs scales outside the
kernels' Markstein range (the uniform ``div.rn`` branch). SiLU x Mul's two roundings
(``ActRounding.SILU_THEN_MUL``) are checked over every bf16 / fp16 gate value. The soft
(integer-bit) casts the interpreter uses are checked against the hardware casts here.
Skipped cleanly without CUDA.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import reference as ref  # noqa: E402
from quantfuse.custom_ops import triton_schemes as ts  # noqa: E402
from quantfuse.custom_ops.plan import make_plan  # noqa: E402
from helpers import layout_inputs  # noqa: E402

FP8 = catalog.E4M3.dtype
TOKENS = {torch.bfloat16: [7, 130], torch.float16: [33], torch.float32: [33]}
HIDDEN = [256, 2048]


def _layouts(entry):
    return tuple(catalog.Layout) if entry.activation.gated else (catalog.Layout.HALVES,)


# the experts ops take offsets and write a per-expert scale buffer: tests/gpu/test_experts_gpu.py
CASES = [(e.name, lay) for e in catalog.OPS.values() if not e.experts for lay in _layouts(e)]


@pytest.fixture(scope="module", autouse=True)
def _available():
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "GPU tests must not run under the interpreter"
    assert ts.is_available(), ts._failed


def make(lead, width, dtype, specials=True):
    x = torch.randn(*lead, width, device="cuda")
    x = x * torch.pow(10.0, torch.empty(*lead, 1, device="cuda").uniform_(-3, 3))
    x = torch.where(torch.rand(*lead, width, device="cuda") < 1e-2, x * 50, x).reshape(-1, width)
    if specials and x.shape[0] >= 6:
        x[0, 5] = float("nan")
        x[1, width // 3] = float("inf")
        x[2, :64] = 0.0
        x[3, 7] = -float("inf")
        ties = torch.tensor([4.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5,
                             -5.0, -0.0, 256.0, 1.0625, 1.1875, 2.0 ** -10, 3 * 2.0 ** -10, 500.0, -500.0, 104.0,
                             0.0, -0.0, 2.0 ** -11, 15.0 * 2.0 ** -10, 232.0, 240.0, 1e-3, -1e-3], device="cuda")
        x[4] = ties.repeat(width // 32 + 1)[:width]
        x[5] = (ties * 0.013).repeat(width // 32 + 1)[:width]
    return x.reshape(*lead, width).to(dtype)


def inputs(entry, layout, lead, h, dtype):
    return layout_inputs(make, entry, layout, lead, h, dtype)


def assert_same(name, a, b):
    assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, a.dtype, b.shape, b.dtype)
    if a.dtype == FP8:
        a, b = a.view(torch.uint8).clone(), b.view(torch.uint8).clone()
        a[(a & 0x7F) == 0x7F] = 0x7F  # NaN, sign-blind
        b[(b & 0x7F) == 0x7F] = 0x7F
    if a.is_floating_point():
        ib = {4: torch.int32, 2: torch.int16}[a.element_size()]
        na, nb = torch.isnan(a), torch.isnan(b)
        ok = torch.equal(na, nb) and torch.equal(a.masked_fill(na, 0).contiguous().view(ib),
                                                 b.masked_fill(nb, 0).contiguous().view(ib))
    else:
        ok = torch.equal(a, b)
    if not ok:
        bad = (a != b) if not a.is_floating_point() else ~((a == b) | (torch.isnan(a) & torch.isnan(b)))
        idx = bad.nonzero()[:4].tolist()
        raise AssertionError(f"{name}: {int(bad.sum())} of {a.numel()} differ, e.g. at {idx}: "
                             f"{[a[tuple(i)].item() for i in idx]} vs {[b[tuple(i)].item() for i in idx]}")


def call(entry, x, params, up, interleaved, scale):
    plan = make_plan(entry, x, params, up=up, interleaved=interleaved, scale=scale)
    assert ts.supports(plan) is None, ts.supports(plan)
    outs = plan.empty_outputs(x.device)
    for t in outs:
        if t.element_size() == 1:
            t.view(torch.uint8).fill_(0xAB)
        else:
            t.fill_(float("nan"))
    ts.run(plan, outs, x, up, scale)
    return plan, outs


def param_sets(scheme):
    if scheme is None:
        return [()]
    return list(itertools.product(*(p.kernel_values for p in scheme.params)))


STATIC_SCALES = (0.013, 1.0, 2.0 ** -70, 2.0 ** 70, 0.0)


@pytest.mark.parametrize("dtype", catalog.INPUT_DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name,layout", CASES, ids=[f"{n}-{lay.value}" for n, lay in CASES])
def test_op_layout(name, layout, dtype):
    entry = catalog.OPS[name]
    scheme = entry.scheme
    for t, h in itertools.product(TOKENS[dtype], HIDDEN):
        x, up, interleaved = inputs(entry, layout, (t,), h, dtype)
        y_ref = ref.activate(entry.activation.name, x, up, interleaved)
        scales = [torch.tensor([v], device="cuda") for v in STATIC_SCALES] if scheme and scheme.tensor_inputs \
            else [None]
        for params, scale in itertools.product(param_sets(scheme), scales):
            plan, outs = call(entry, x, params, up, interleaved, scale)
            want = (y_ref,) if scheme is None else ref.quantize(y_ref, plan.recipe, scale)
            want = want if isinstance(want, tuple) else (want,)
            for i, (got, exp) in enumerate(zip(outs, want)):
                assert_same(f"{name}[{t}x{h}]{params} scale={scale} out{i}", got, exp)
            if entry.fused:
                _, y = call(catalog.OPS[entry.activation.name], x, (), up, interleaved, None)
                _, unf = call(catalog.OPS[scheme.unfused_name], y[0], params, None, False, scale)
                for i, (got, exp) in enumerate(zip(outs, unf)):
                    assert_same(f"{name}[{t}x{h}]{params} fused==unfused out{i}", got, exp)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_silu_then_mul_every_gate(dtype):
    """Every 16-bit gate value against eager's F.silu(g) * u (two roundings), with random up."""
    g = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32, device="cuda").to(torch.int16).view(dtype)
    g = g.reshape(256, 256)
    u = torch.randn(256, 256, device="cuda").to(dtype)
    eager = (torch.nn.functional.silu(g) * u)
    _, (out,) = call(catalog.OPS["silu_and_mul"], g, (), u, False, None)
    assert_same(f"silu_and_mul {dtype} every gate vs eager", out, eager)
    assert_same(f"silu_and_mul {dtype} every gate vs reference", out, ref.silu_and_mul(g, u))


@pytest.mark.parametrize("name", ["silu_and_mul", "silu_and_mul_per_block_quant", "silu_and_mul_mxfp4_quant",
                                  "silu_and_mul_quant", "relu2_mxfp8_quant"])
def test_soft_casts_match_hardware(name, monkeypatch):
    """The interpreter's integer-bit bf16 rounding / e4m3 encoding == the hardware cvt.rn."""
    entry = catalog.OPS[name]
    params = tuple(p.example for p in entry.scheme.params[:entry.scheme.required_params]) if entry.scheme else ()
    scale = torch.tensor([0.013], device="cuda") if entry.scheme and entry.scheme.tensor_inputs else None
    for layout in _layouts(entry):
        x, up, interleaved = inputs(entry, layout, (130,), 256, torch.bfloat16)
        _, hard = call(entry, x, params, up, interleaved, scale)
        monkeypatch.setattr(ts, "_SOFT_CASTS", True)
        monkeypatch.setattr(ts, "_launchers", {})  # the closures fixed the cast path
        _, soft = call(entry, x, params, up, interleaved, scale)
        monkeypatch.setattr(ts, "_SOFT_CASTS", None)
        monkeypatch.setattr(ts, "_launchers", {})
        for i, (a, b) in enumerate(zip(soft, hard)):
            assert_same(f"{name} {layout.value} soft vs hardware out{i}", a, b)
