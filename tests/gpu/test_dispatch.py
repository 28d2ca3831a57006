"""The C++ dispatcher path (csrc/dispatch.cpp): calls on CUDA tensors launch from C++ with
the launch arguments Python decided once per call signature. Its outputs must be the
Python kernel's, bit for bit and in shape, strides and dtype (the C++ side restates
CallPlan._output_specs), and every call it does not take must reach the Python kernel."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from helpers import poisoned_like  # noqa: E402
from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend, oracle, ops  # noqa: E402
from quantfuse.custom_ops.plan import expert_offsets  # noqa: E402

if torch.cuda.is_available() and not cuda_backend.is_available():
    pytestmark = pytest.mark.skip(reason=f"CUDA extension unavailable: {cuda_backend.unavailable_reason()}")

#: per scheme: argument sets covering every scale layout
SCHEME_ARGS = {"fp8_per_group": [(128,), (64, True), (128, False, True)], "fp8_per_token": [()],
               "fp8_static": ["scale"], "fp8_per_tensor": [()], "mxfp8": [("floor",), ("rceil", True)],
               "mxfp4": [("floor",), ("rceil", True)]}
assert set(SCHEME_ARGS) == set(catalog.SCHEMES), "a catalog scheme without dispatcher test arguments"
LEADS = [(0,), (1,), (37,), (2, 129)]
DISPATCHED = [e for e in catalog.OPS.values() if cuda_backend.implements(e)]


def _calls(entry, lead, dtype, gen):
    width = 512 * (2 if entry.activation.gated else 1)
    if entry.experts:  # 2-d x; the tokens over three experts, one empty
        lead = (math.prod(lead),)
    x = (torch.randn(*lead, width, device="cuda", generator=gen) * 3).to(dtype)
    if entry.experts:
        t = lead[0]
        for rounding, odtype in (("floor", torch.int32), ("rceil", torch.int64)):
            yield x, (*expert_offsets([t // 2, 0, t - t // 2], odtype, "cuda"), 3, 8, rounding)
        return
    if entry.scheme is None:
        yield x, ()
        return
    for args in SCHEME_ARGS[entry.scheme.key]:
        if args == "scale":
            args = (torch.rand(1, device="cuda", generator=gen) + 0.01,)
        yield x, args


def _same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype), what
    # bitwise: NaN payloads and the sign of zero count
    if a.numel():
        assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), what


@pytest.mark.parametrize("entry", DISPATCHED, ids=lambda e: e.name)
def test_dispatcher_path_equals_the_python_kernel(entry):
    gen = torch.Generator(device="cuda").manual_seed(7)
    op, python = ops.OPS[entry.name], ops.PYTHON_KERNELS[entry.name]
    for dtype in catalog.INPUT_DTYPES:
        for lead in LEADS:
            for x, args in _calls(entry, lead, dtype, gen):
                op(x, *args)  # first call of a signature: decided in Python
                oracle.reset_counts()
                got = op(x, *args)
                assert cuda_backend.dispatch_counts() == {entry.name: 1}, (entry.name, lead, dtype, args)
                want = python(x, *args)
                got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
                for i, (g, w) in enumerate(zip(got, want)):
                    _same(g, w, f"{entry.name}{lead} {dtype} {args} output {i}")


def test_calls_it_does_not_take_reach_the_python_kernel(monkeypatch):
    x = torch.randn(16, 1024, device="cuda", dtype=torch.bfloat16)
    op = ops.OPS["silu_and_mul_per_block_quant"]
    op(x, 128)
    # a bad call: the Python kernel's error, through the C++ kernel, and the process goes on
    with pytest.raises(ValueError, match="not divisible by group_size 128"):
        op(torch.randn(16, 2 * 320, device="cuda", dtype=torch.bfloat16), 128)
    with pytest.raises(ValueError, match="must be contiguous"):
        op(x.t().contiguous().t(), 128)
    # another backend forced: Python runs it
    monkeypatch.setenv(oracle.BACKEND_ENV, "torch")
    oracle.reset_counts()
    op(x, 128)
    assert oracle.call_counts() == {("silu_and_mul_per_block_quant", "torch"): 1}
    monkeypatch.delenv(oracle.BACKEND_ENV)
    oracle.reset_counts()
    op(x, 128)
    assert oracle.call_counts() == {("silu_and_mul_per_block_quant", "cuda"): 1}
    assert cuda_backend.dispatch_counts() == {"silu_and_mul_per_block_quant": 1}


def test_the_ops_with_cuda_kernels_are_on_the_dispatcher():
    """Exactly the ops with CUDA kernels are registered (the experts ops too: their offsets'
    values are checked by the kernel, so the C++ path needs no copy to the host)."""
    assert set(cuda_backend._module.dispatch_counts()) == {e.name for e in DISPATCHED}
    x = torch.randn(300, 512, device="cuda", dtype=torch.bfloat16)
    offsets = torch.tensor([0, 100, 300], device="cuda", dtype=torch.int32)
    blocks = torch.tensor([0, 128, 384], device="cuda", dtype=torch.int32)
    op = ops.OPS["mxfp8_experts_quant"]
    op(x, offsets, blocks, 2, 1)
    oracle.reset_counts()
    op(x, offsets, blocks, 2, 1)
    assert cuda_backend.dispatch_counts() == {"mxfp8_experts_quant": 1}


def test_clear_cache_forgets_the_decisions():
    x = torch.randn(4, 1024, device="cuda", dtype=torch.float16)
    op = ops.OPS["silu_and_mul_per_token_quant_fp8"]
    op(x)
    oracle.clear_cache()
    oracle.reset_counts()
    op(x)  # decided again in Python, then run from C++
    assert oracle.call_counts() == {("silu_and_mul_per_token_quant_fp8", "cuda"): 1}


@pytest.mark.parametrize("entry", DISPATCHED, ids=lambda e: e.name)
def test_out_overload_runs_from_cpp_into_the_given_outputs(entry):
    """The out overload takes the C++ path too, for every scale layout and lead shape, and
    writes what the Python kernel returns into the given (poisoned) outputs."""
    gen = torch.Generator(device="cuda").manual_seed(11)
    op, python = ops.OPS[entry.name], ops.PYTHON_KERNELS[entry.name]
    for lead in LEADS:
        for x, args in _calls(entry, lead, torch.bfloat16, gen):
            want = python(x, *args)
            want = want if isinstance(want, tuple) else (want,)
            outs = {n: poisoned_like(w) for n, w in zip(entry.out_names, want)}
            op.out(x, *args, **outs)  # first call of a signature: decided in Python
            for t in outs.values():
                t.copy_(poisoned_like(t))
            oracle.reset_counts()
            op.out(x, *args, **outs)
            assert cuda_backend.dispatch_counts() == {entry.name: 1}, (entry.name, lead, args)
            for i, (name, w) in enumerate(zip(entry.out_names, want)):
                _same(outs[name], w, f"{entry.name}.out{lead} {args} {name}")


def test_out_overload_with_other_outputs_gets_the_python_error():
    # the signature key holds the outputs' dtype and last dim; a shape or stride that differs
    # is caught in C++ per call, and the Python kernel raises the error naming it
    x = torch.randn(16, 1024, device="cuda", dtype=torch.bfloat16)
    op = ops.OPS["silu_and_mul_per_block_quant"]
    q, s = op(x, 128)
    op.out(x, 128, out=q, out_scales=s)
    with pytest.raises(ValueError, match=r"out must have shape \(16, 512\), got \(8, 512\)"):
        op.out(x, 128, out=q[:8], out_scales=s)
    with pytest.raises(ValueError, match=r"out_scales must have strides \(4, 1\), got \(1, 16\)"):
        op.out(x, 128, out=q, out_scales=s.t().contiguous().t())
    oracle.reset_counts()
    op.out(x, 128, out=q, out_scales=s)
    assert cuda_backend.dispatch_counts() == {"silu_and_mul_per_block_quant": 1}
