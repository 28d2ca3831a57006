"""Launch choices tuned on this GPU (quantfuse/custom_ops/tuning.py) with the real timer: every
candidate runs, the table is written, and calls in a tuned class give the reference's bits
through both the C++ dispatcher path and the Python kernel; every per-token row staging gives
them."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import kernel_calls as kc  # noqa: E402

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend, oracle, ops, plan, tuning  # noqa: E402

if torch.cuda.is_available() and not cuda_backend.is_available():
    pytestmark = pytest.mark.skip(reason=f"CUDA extension unavailable: {cuda_backend.unavailable_reason()}")

CASES = [("silu_and_mul_per_block_quant", (128,), torch.bfloat16, 7168),
         ("relu2_mxfp8_quant", ("rceil",), torch.bfloat16, 7168),
         ("silu_and_mul_mxfp4_quant", ("floor", True), torch.float16, 2048),
         ("swigluoai_and_mul_per_token_quant_fp8", (), torch.bfloat16, 7168),
         ("silu_and_mul_per_token_quant_fp8", (), torch.float16, 2048)]


@pytest.fixture
def fresh_tuning(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTFUSE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("QUANTFUSE_TUNE", raising=False)
    cuda_backend.reset_dispatch(decisions=True)
    oracle.clear_cache()
    yield tmp_path
    cuda_backend.reset_dispatch(decisions=True)
    oracle.clear_cache()


def _same(a, b, what):
    assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype), what
    assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), what


@pytest.mark.parametrize("name,params,dtype,hidden", CASES, ids=[c[0] for c in CASES])
def test_tuned_calls_equal_the_reference(fresh_tuning, monkeypatch, name, params, dtype, hidden):
    entry = catalog.OPS[name]
    width = hidden * (2 if entry.activation.gated else 1)
    small = torch.randn(4, width, device="cuda", dtype=dtype)
    p = plan.make_plan(entry, small, params)
    device = tuning.Device.current()
    classes, final = tuning.token_classes(p, device, cuda_backend._time_choice)
    assert final and len(classes) == len(tuning.class_tokens(p, device.l2_bytes, device.sms)), classes
    assert all(c in tuning.candidates(p) for _, c in classes)
    table = json.loads(next(fresh_tuning.glob("tuning-*.json")).read_text())
    for c in table[tuning.tuning_key(p)]["classes"]:
        assert sorted(c["us"]) == sorted(x.label for x in tuning.candidates(p)), c  # every choice ran
    tokens = classes[-1][0] + 3  # inside the last class, not a multiple of anything
    x = (torch.randn(tokens, width, device="cuda", dtype=dtype) * 4).to(dtype)
    x[0, :64] = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0] * 16, dtype=dtype)
    op = ops.OPS[name]
    args = (x, *params)
    op(*args)
    oracle.reset_counts()
    got = op(*args)  # the C++ path, with the tuned count
    assert cuda_backend.dispatch_counts() == {name: 1}
    python = ops.PYTHON_KERNELS[name](*args)  # the Python kernel, with the tuned count
    monkeypatch.setenv(oracle.BACKEND_ENV, "torch")
    want = op(*args)
    for i, (g, py, w) in enumerate(zip(got, python, want)):
        _same(g, w, f"{name} output {i}: C++ path vs reference")
        _same(py, w, f"{name} output {i}: Python kernel vs reference")


@pytest.mark.parametrize("name,dtype,hidden,tokens", [
    # enough rows that every row slot of the persistent grid walks several (both stages cycle)
    ("silu_and_mul_per_token_quant_fp8", torch.bfloat16, 7168, 1999),
    ("swigluoai_and_mul_per_token_quant_fp8", torch.float16, 2048, 12001),
    ("relu2_per_token_quant_fp8", torch.bfloat16, 4096, 263),
    ("relu2_per_token_quant_fp8", torch.bfloat16, 4096, 9001),
    # decode sizes: fewer rows than SMs, one or two rows per block (launch_unit.cuh rows_per_block)
    ("silu_and_mul_per_token_quant_fp8", torch.bfloat16, 768, 128),
    ("silu_and_mul_per_token_quant_fp8", torch.float16, 7168, 16),
    ("relu2_per_token_quant_fp8", torch.bfloat16, 2048, 263)])
def test_every_row_staging_equals_the_reference(monkeypatch, name, dtype, hidden, tokens):
    """The per-token kernel with the next row in registers and one or two rows staged in shared
    memory, at every vector count, on the default kernel and the runtime-recipe one: the
    reference's bits each way (rows past the first rounds of the persistent grid included)."""
    entry = catalog.OPS[name]
    width = hidden * (2 if entry.activation.gated else 1)
    x = (torch.randn(tokens, width, device="cuda", dtype=dtype) * 4).to(dtype)
    x[1, :64] = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0] * 16, dtype=dtype)
    p = plan.make_plan(entry, x, ())
    monkeypatch.setenv(oracle.BACKEND_ENV, "torch")
    want = ops.OPS[name](x)
    # every staging the kernels take, also those tuning does not time yet
    for choice in (tuning.Choice(v, r, k) for v in (0, *tuning.CANDIDATES) for r in tuning.KERNEL_ROW_STAGES
                   for k in (False, True)):
        got = p.empty_outputs(x.device)
        for g in got:
            g.view(torch.uint8).fill_(0x5A)  # poisoned: every byte must be written
        assert not cuda_backend._launch(p, got, x, None, None, choice)
        for i, (g, w) in enumerate(zip(got, want)):
            # NaN by position (the NaN row's sign of NaN is the kernel's), every other byte exact
            gn, wn = g.float().isnan(), w.float().isnan()
            assert torch.equal(gn, wn), (choice.label, name, i)
            assert torch.equal(g[~wn].view(torch.uint8), w[~wn].view(torch.uint8)), (choice.label, name, i)


DECODE_CASES = [
    # (op, dtype, hidden, tokens, layout, recipe): decode batches (no more rows than SMs, or a few
    # per SM; launch_unit.cuh rows_per_block), every gated layout, a recipe of each scale step;
    # 1000 leaves lanes of a row's last warp idle
    ("silu_and_mul_per_token_quant_fp8", torch.bfloat16, 768, 16, "halves", ""),
    ("silu_and_mul_per_token_quant_fp8", torch.float16, 2048, 131, "separate", "floor_at=scale,eps=1e-06"),
    ("swigluoai_and_mul_per_token_quant_fp8", torch.bfloat16, 1000, 7, "interleaved", ""),
    ("relu2_per_token_quant_fp8", torch.bfloat16, 2048, 1, "halves", "ue8m0=exp2"),
    ("per_token_quant_fp8", torch.float16, 264, 33, "halves", "step_dtype=input,floor_at=none"),
]


@pytest.mark.parametrize("name,dtype,hidden,tokens,layout,recipe", DECODE_CASES,
                         ids=[f"{c[0]}-{c[4]}-{c[3]}x{c[2]}" for c in DECODE_CASES])
def test_decode_kernel_equals_the_reference(name, dtype, hidden, tokens, layout, recipe):
    """Decode batches: the launcher's own choice and a forced vector count give the reference's
    bits, for every gated layout and for recipes of each scale step, non-finite and all-zero rows
    included."""
    entry = catalog.OPS[name]
    width = hidden * (2 if entry.activation.gated and layout != "separate" else 1)
    x = (torch.randn(tokens, width, device="cuda", dtype=dtype) * 4).to(dtype)
    x[0, :8] = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0] * 2, dtype=dtype)
    if tokens > 2:
        x[2] = 0.0  # an all-zero row: the scale's floor
    layout_args = kc.layout_kwargs(catalog.Layout(layout), x) if entry.activation.gated else {}
    p = kc.make(name, x, recipe=recipe, **layout_args)
    want = kc.reference(name, x, recipe=recipe, **layout_args)
    up = layout_args.get("up")
    for choice in (tuning.Choice(), tuning.Choice(1)):
        got = tuple(kc.poison(t) for t in p.empty_outputs(x.device))
        assert not cuda_backend._launch(p, got, x, up, None, choice)
        for i, (g, w) in enumerate(zip(got, want)):
            gn, wn = g.float().isnan(), w.float().isnan()
            assert torch.equal(gn, wn), (choice.label, name, i)
            assert torch.equal(g[~wn].view(torch.uint8), w[~wn].view(torch.uint8)), (choice.label, name, i)


GROUP_STAGING_CASES = [
    # (op, params, dtype, hidden, tokens, layout, recipe): tokens enough that every sub-warp of the
    # persistent grid walks more groups than it stages (the slots cycle), and a row count that
    # leaves the last step partial
    ("silu_and_mul_per_block_quant", (128,), torch.bfloat16, 7168, 1999, "halves", ""),
    ("silu_and_mul_per_block_quant", (64, True), torch.float16, 2048, 3001, "separate", ""),
    ("silu_and_mul_per_block_quant", (128,), torch.bfloat16, 4096, 1031, "halves", "floor_at=scale,eps=1e-06"),
    ("relu2_per_block_quant", (128,), torch.bfloat16, 4096, 2053, "halves", ""),
    ("silu_and_mul_mxfp8_quant", ("rceil",), torch.bfloat16, 7168, 1999, "halves", ""),
    ("swigluoai_and_mul_mxfp8_quant", ("floor",), torch.float16, 2048, 3001, "halves", ""),
    ("silu_and_mul_mxfp4_quant", ("floor", True), torch.bfloat16, 2048, 4099, "separate", ""),
    ("relu2_mxfp4_quant", ("rceil",), torch.bfloat16, 7168, 1031, "halves", "mx_byte0=exp2"),
]


@pytest.mark.parametrize("name,params,dtype,hidden,tokens,layout,recipe", GROUP_STAGING_CASES,
                         ids=[f"{c[0]}-{c[5]}-{c[4]}" for c in GROUP_STAGING_CASES])
def test_every_group_staging_equals_the_reference(monkeypatch, name, params, dtype, hidden, tokens, layout,
                                                  recipe):
    """The per-group and MX kernels with the next group in registers and with groups staged in
    shared memory (every staging the kernels take, at every vector count they are built for): the
    reference's bits each way, into poisoned outputs (every byte written)."""
    entry = catalog.OPS[name]
    separate = layout == "separate"
    width = hidden * (2 if entry.activation.gated and not separate else 1)
    x = (torch.randn(tokens, width, device="cuda", dtype=dtype) * 4).to(dtype)
    x[1, :64] = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0] * 16, dtype=dtype)
    x[2, :32] = 2.0 ** -140  # a block of tiny values (MX: the byte-0 scale)
    up = (torch.randn(tokens, hidden, device="cuda", dtype=dtype) * 4).to(dtype) if separate else None
    p = plan.make_plan(entry, x, params, up=up, recipe=recipe)
    monkeypatch.setenv(oracle.BACKEND_ENV, "torch")
    want = ops.run_reference(p, x, up)
    choices = [tuning.Choice(v) for v in tuning.CANDIDATES]
    choices += [tuning.Choice(v, r) for v in tuning.STAGED_VECTORS for r in tuning.GROUP_ROW_STAGES]
    for choice in choices:
        got = p.empty_outputs(x.device)
        for g in got:  # poisoned: every byte must be written (fp32 scales: NaN; column-major ones too)
            g.fill_(float("nan")) if g.dtype == torch.float32 else g.view(torch.uint8).fill_(0x5A)
        err = cuda_backend._launch(p, got, x, up, None, choice)
        assert not err, (choice.label, err)
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.shape == w.shape, (choice.label, i)
            gc, wc = g.contiguous(), w.contiguous()
            if gc.dtype in (torch.float8_e4m3fn, torch.float32):  # NaN by position, every other byte exact
                gn, wn = gc.float().isnan(), wc.float().isnan()
                assert torch.equal(gn, wn), (choice.label, name, i)
                gc, wc = gc[~wn], wc[~wn]
            gb, wb = gc.view(torch.uint8), wc.view(torch.uint8)
            assert torch.equal(gb, wb), (choice.label, name, i, (gb != wb).sum().item())
    # the kernels take no other staging: a clear error, no launch
    got = p.empty_outputs(x.device)
    assert "stage 2 groups ahead" in cuda_backend._launch(p, got, x, up, None, tuning.Choice(1, 1))


