"""Op registration, fake impls, validation errors and the backend oracle (CPU)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import quantfuse
from quantfuse.custom_ops import oracle

qf = torch.ops.quantfuse
CASES = [
    (qf.silu_and_mul, (torch.randn(3, 256, dtype=torch.bfloat16),)),
    (qf.silu_and_mul, (torch.randn(2, 3, 128, dtype=torch.float32),)),
    (qf.per_token_group_quant_fp8, (torch.randn(5, 256, dtype=torch.float16), 64, False, False)),
    (qf.per_token_group_quant_fp8, (torch.randn(2, 3, 256, dtype=torch.bfloat16), 128, True, True)),
    (qf.silu_and_mul_per_block_quant, (torch.randn(4, 512, dtype=torch.bfloat16), 128, True, False)),
    (qf.silu_and_mul_per_block_quant, (torch.randn(2, 2, 256, dtype=torch.float32), 64, False, True)),
    (qf.relu2_mxfp4_quant, (torch.randn(130, 96, dtype=torch.bfloat16), "floor", True)),
    (qf.mxfp8_quant, (torch.randn(2, 3, 160, dtype=torch.float16), "rceil", True)),
]


@pytest.mark.parametrize("op,args", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_opcheck(op, args):
    # each overload on its own (opcheck takes no packet with overloads): the op, then its out
    # overload on outputs shaped like the op's (its schema and AOT checks compare the mutated
    # outputs with arithmetic that FP8 tensors do not have on the CPU)
    torch.library.opcheck(op.default, args)
    outs = op.default(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    names = [a.name for a in op.out._schema.arguments if a.is_write]
    torch.library.opcheck(op.out, args, {n: torch.empty_like(o) for n, o in zip(names, outs)},
                          test_utils=("test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("op,args", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_fake_impl_matches_real_shapes_and_strides(op, args):
    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(mode.from_tensor(args[0]), *args[1:])
    for r, f in zip(real if isinstance(real, tuple) else (real,), fake if isinstance(fake, tuple) else (fake,)):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)


BAD = [
    (lambda: qf.silu_and_mul(torch.randn(4, 6).double()), TypeError, "dtype torch.float64"),
    (lambda: qf.silu_and_mul(torch.randn(4, 7)), ValueError, "last dim 7 must be even"),
    (lambda: qf.silu_and_mul(torch.randn(8, 4).t()), ValueError, "must be contiguous"),
    (lambda: qf.per_token_group_quant_fp8(torch.randn(2, 192), 128), ValueError,
     "hidden size 192 is not divisible by group_size 128"),
    (lambda: qf.per_token_group_quant_fp8(torch.randn(2, 128), 0), ValueError, "group_size must be positive"),
    (lambda: qf.per_token_group_quant_fp8(torch.randint(0, 3, (2, 128)), 64), TypeError, "dtype torch.int64"),
    (lambda: qf.silu_and_mul_per_block_quant(torch.randn(2, 384), 128), ValueError,
     "hidden size 192 is not divisible by group_size 128"),
    (lambda: qf.silu_and_mul_per_block_quant(torch.randn(256, 4).t(), 64), ValueError, "must be contiguous"),
]


@pytest.mark.parametrize("call,exc,message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input_raises_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_bad_input_is_caught_at_trace_time_too():
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(2, 192))
        with pytest.raises(ValueError, match="not divisible by group_size 128"):
            qf.per_token_group_quant_fp8(x, 128)


def test_reference_functions_are_exported():
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    q, s = quantfuse.reference.silu_and_mul_per_block_quant(x, 64)
    q2, s2 = qf.silu_and_mul_per_block_quant(x, 64)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)


def test_oracle_uses_torch_on_cpu_and_counts_calls():
    oracle.reset_counts()
    qf.silu_and_mul(torch.randn(2, 64))
    qf.silu_and_mul_per_block_quant(torch.randn(2, 256), 128)
    assert oracle.call_counts() == {("silu_and_mul", "torch"): 1, ("silu_and_mul_per_block_quant", "torch"): 1}


def test_forced_backend_that_cannot_run_falls_back_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv(oracle.BACKEND_ENV, "cuda")
    oracle.reset_counts()
    oracle.clear_cache()
    with caplog.at_level(logging.WARNING, logger="quantfuse.backend"):
        q, s = qf.per_token_group_quant_fp8(torch.randn(2, 256), 128)
    assert oracle.call_counts() == {("per_token_group_quant_fp8", "torch"): 1}
    assert "QUANTFUSE_BACKEND=cuda cannot run this call (input is on cpu" in caplog.text


def test_unknown_forced_backend_is_an_error(monkeypatch):
    monkeypatch.setenv(oracle.BACKEND_ENV, "tpu")
    with pytest.raises(ValueError, match="QUANTFUSE_BACKEND='tpu': expected one of cuda, triton, torch"):
        qf.silu_and_mul(torch.randn(2, 64))


def test_backend_choice_is_logged_once(caplog):
    oracle.clear_cache()
    with caplog.at_level(logging.INFO, logger="quantfuse.backend"):
        for _ in range(3):
            qf.silu_and_mul(torch.randn(2, 64, dtype=torch.float16))
    assert caplog.text.count("silu_and_mul: using the torch backend") == 1


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown fusion"):
        quantfuse.FusionConfig(fusions=(("gelu", "fp8_per_group"),))
    with pytest.raises(ValueError, match="unknown pattern forms"):
        quantfuse.FusionConfig(forms=("nativ",))
    with pytest.raises(ValueError, match="unknown dtype name"):
        quantfuse.FusionConfig(dtypes=("bf16",))


def test_per_tensor_scale_of_an_empty_tensor_is_that_of_zeros():
    """Dynamic per-tensor FP8 of no elements: the amax is taken as 0 (eager's amax of an empty
    tensor raises), so the one scale is the recipe's for an all-zero tensor, and q is empty."""
    x = torch.randn(0, 512, dtype=torch.bfloat16)
    q, s = torch.ops.quantfuse.silu_and_mul_per_tensor_quant_fp8(x)
    assert q.shape == (0, 256) and q.dtype == torch.float8_e4m3fn and s.shape == (1,)
    assert torch.equal(s, torch.tensor([1e-10], dtype=torch.float32) / 448.0)  # max(0, eps) / 448
    q, s = torch.ops.quantfuse.dynamic_scaled_fp8_quant(x[:, :256], recipe="floor_at=none")
    assert torch.equal(s, torch.zeros(1))
