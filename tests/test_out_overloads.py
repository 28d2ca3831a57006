"""The ops' ``out`` overloads (``catalog.OpEntry.out_schema``): every op of the catalog, written
into given outputs, equals the op's own result bit for bit; outputs that are not exactly what
the op allocates are refused with a message naming the argument, in the real and the fake
kernel. Runs on the CPU (the torch backend): the CUDA kernels write into the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import quantfuse  # noqa: F401  (registers the ops)
from quantfuse import catalog
from helpers import example_call, poisoned_like, same_bits

TOKENS, HIDDEN = 6, 256


def _call(entry):
    """(args, kwargs) of one call of ``entry`` at TOKENS x HIDDEN, from the catalog's examples."""
    return example_call(entry, TOKENS, HIDDEN, expert_counts=(2, TOKENS - 2)), {}


ENTRIES = [pytest.param(e, id=name) for name, e in catalog.OPS.items()]


@pytest.mark.parametrize("entry", ENTRIES)
def test_out_overload_writes_what_the_op_returns(entry):
    args, kwargs = _call(entry)
    ops = getattr(torch.ops.quantfuse, entry.name)
    want = ops.default(*args, **kwargs)
    want = want if isinstance(want, tuple) else (want,)
    outs = {name: poisoned_like(w) for name, w in zip(entry.out_names, want)}
    assert ops.out(*args, **kwargs, **outs) is None
    assert len(outs) == len(want)
    for name, w in zip(entry.out_names, want):
        got = outs[name]
        assert got.stride() == w.stride() or got.numel() <= 1
        assert same_bits(got, w), f"{entry.name}.out: {name} differs from the op's output"


def _scheme_entry():
    return catalog.OPS["silu_and_mul_per_block_quant"]


@pytest.mark.parametrize("change, message", [
    (lambda q, s: (q.view(torch.uint8), s), "out must be torch.float8_e4m3fn, got torch.uint8"),
    (lambda q, s: (q, s[:, :1]), "out_scales must have shape (6, 2), got (6, 1)"),
    # the catalog's example call has column-major scales: a row-major buffer is not that
    (lambda q, s: (q, s.contiguous()), "out_scales must have strides (1, 6), got (2, 1)"),
    (lambda q, s: (q, None), "out_scales must be a tensor, got NoneType"),
])
def test_out_overload_refuses_other_outputs(change, message):
    entry = _scheme_entry()
    args, _ = _call(entry)
    q, s = getattr(torch.ops.quantfuse, entry.name).default(*args)
    q, s = change(q, s)
    op = getattr(torch.ops.quantfuse, entry.name).out
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        op(*args, out=q, out_scales=s)
    if s is None:
        return
    with FakeTensorMode() as mode:  # the fake kernel: the same check, at trace time
        fx, fq, fs = mode.from_tensor(args[0]), mode.from_tensor(q), mode.from_tensor(s)
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            op(fx, *args[1:], out=fq, out_scales=fs)


def test_out_schema_is_the_op_schema_and_its_outputs():
    entry = _scheme_entry()
    schema = getattr(torch.ops.quantfuse, entry.name).out._schema
    names = [a.name for a in schema.arguments]
    default = [a.name for a in getattr(torch.ops.quantfuse, entry.name).default._schema.arguments]
    assert names == default + ["out", "out_scales"]
    assert [a.name for a in schema.arguments if a.is_write] == ["out", "out_scales"]
    assert all(a.kwarg_only for a in schema.arguments[-2:]) and not schema.returns
