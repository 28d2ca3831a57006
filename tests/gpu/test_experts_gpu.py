"""The experts ops on the GPU: the CUDA and the Triton kernels against the reference on the same
GPU, bit for bit, on poisoned buffers (every op: the plain quant ops and the three activations,
both MX schemes and roundings, bf16 / fp16, every gated layout, experts with 0, 1, 127, 128, 129
tokens: tests/test_experts_ops.py::run_cases), on inputs with NaN, inf, zero blocks, rounding
ties and subnormals (test_schemes.make_input); the ops on the C++ dispatcher path with no copy
to the host; the kernel's own offset check (docs/decisions/021-experts-kernel-checks-offsets.md);
CUDA-graph replays that read new offsets. Skipped cleanly without CUDA."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend, oracle, ops, tuning  # noqa: E402
from quantfuse.custom_ops import triton_schemes as ts  # noqa: E402
from quantfuse.custom_ops.ops import run_reference  # noqa: E402
from quantfuse.custom_ops.plan import make_plan  # noqa: E402
from test_experts_ops import _input, offsets, run_cases  # noqa: E402
from test_schemes import make_input  # noqa: E402

EXPERTS_OPS = sorted(n for n, e in catalog.OPS.items() if e.experts)


@pytest.fixture(scope="module", autouse=True)
def _available():
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "GPU tests must not run under the interpreter"
    assert ts.is_available(), ts._failed


@pytest.fixture(scope="module")
def cuda():
    assert cuda_backend.is_available(), cuda_backend.unavailable_reason()
    return cuda_backend


def _make(lead, width, dtype, specials=True):
    x = _input(lead[0], width, dtype, seed=width + lead[0]) if specials else _input(lead[0], width, dtype, seed=7)
    return x.cuda()


def _make_specials(lead, width, dtype, specials=True):
    """test_schemes.make_input (NaN, +-inf, zero blocks, E2M1 / E4M3 rounding ties, tiny and
    subnormal rows), with a row of fp16 subnormals (2^-20 magnitudes) too."""
    x = make_input(lead, width, dtype, specials)
    if specials and x.shape[0] > 9:
        x[9] = (torch.randn(width, device="cuda") * 2.0 ** -20).to(dtype)
    return x


def test_triton_equals_reference_on_the_gpu():
    checks, failures, ran = run_cases(ts, _make, "cuda")
    assert failures == [], failures[:20]
    assert sorted(ran) == EXPERTS_OPS
    assert checks >= 2 * 250


@pytest.mark.parametrize("make", [_make, _make_specials], ids=["randn", "specials"])
def test_cuda_equals_reference_on_the_gpu(cuda, make, monkeypatch):
    # Each experts plan's tuning key carries its expert count, so these cases' hundreds of keys
    # would each be timed on first call (minutes in all); every launch choice is checked by
    # test_every_launch_choice_equals_the_reference, so these cases run the default one.
    monkeypatch.setenv("QUANTFUSE_TUNE", "0")
    checks, failures, ran = run_cases(cuda, make, "cuda")
    assert failures == [], failures[:20]
    assert sorted(ran) == EXPERTS_OPS
    assert checks >= 2 * 250


def test_triton_equals_reference_with_subnormals():
    """The Triton kernel on the same special inputs as the CUDA one."""
    checks, failures, ran = run_cases(ts, _make_specials, "cuda")
    assert failures == [], failures[:20]
    assert sorted(ran) == EXPERTS_OPS


def _bytes(t):
    """Bytes to compare; FP8 NaN codes sign-blind, as run_cases compares them."""
    b = t.view(torch.uint8)
    return torch.where((b & 0x7F) == 0x7F, 0x7F, b) if t.dtype == torch.float8_e4m3fn else b


def _reference(name, x, eo, bo, *params):
    p = make_plan(catalog.OPS[name], x, params, scale=(eo, bo))
    return run_reference(p, x, None, False, (eo, bo))


def test_many_experts_and_wide_offsets(cuda):
    """300 experts, most empty, a few with 1 / 127 / 128 / 129 / 300 tokens, int64 offsets, a
    hidden size whose groups pad (G = 7): every scale of the binary search and every zero chunk."""
    counts = [0] * 300
    for e, n in ((0, 1), (3, 127), (4, 128), (150, 129), (298, 300), (299, 2)):
        counts[e] = n
    for name in ("mxfp8_experts_quant", "silu_and_mul_mxfp4_experts_quant"):
        entry = catalog.OPS[name]
        hidden = 224
        x = _make_specials((sum(counts),), 2 * hidden if entry.activation.gated else hidden, torch.bfloat16)
        for odtype in (torch.int64, torch.int32):
            eo, bo = offsets(counts, odtype, "cuda")
            p = make_plan(entry, x, (300, 8, "rceil"), scale=(eo, bo))
            assert cuda.supports(p) is None
            outs = p.empty_outputs(x.device)
            for t in outs:
                t.view(torch.uint8).fill_(0xAB)
            cuda.run(p, outs, x, None, (eo, bo))
            want = run_reference(p, x, None, False, (eo, bo))
            for got, exp in zip(outs, want):
                assert torch.equal(_bytes(got), _bytes(exp)), (name, odtype)


def _spread(experts, busy, tokens, seed):
    """``experts`` token counts summing to ``tokens``, ``busy`` of them non-empty."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randperm(experts, generator=g)[:busy]
    cuts = torch.sort(torch.randint(0, tokens + 1, (busy - 1,), generator=g)).values.tolist()
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [tokens])]
    counts = [0] * experts
    for e, n in zip(which.tolist(), sizes):
        counts[e] = n
    return counts


@pytest.mark.parametrize("name", ["mxfp8_experts_quant", "silu_and_mul_mxfp8_experts_quant",
                                  "silu_and_mul_mxfp4_experts_quant", "relu2_mxfp4_experts_quant"])
def test_every_launch_choice_equals_the_reference(cuda, name):
    """Every tuning candidate of an experts plan (tuning.candidates: vectors per thread, the next
    group in registers or staged in shared memory) gives the reference's bytes, where the
    persistent grid walks many steps, a warp's groups straddle rows and experts (G = 7), the
    warp's search takes one round (E = 8) or two (E = 256, 300), and experts are empty; then a
    tuned call through the dispatcher."""
    entry = catalog.OPS[name]
    cases = [(_spread(8, 8, 12001, 1), 2048), (_spread(256, 200, 16411, 2), 2048), (_spread(300, 40, 3001, 3), 224)]
    for counts, hidden in cases:
        x = _make_specials((sum(counts),), 2 * hidden if entry.activation.gated else hidden, torch.bfloat16)
        eo, bo = offsets(counts, torch.int32, "cuda")
        e = len(counts)
        p = make_plan(entry, x, (e, 8, "rceil"), scale=(eo, bo))
        want = run_reference(p, x, None, False, (eo, bo))
        choices = tuning.candidates(p)
        assert len(choices) >= 4
        for choice in choices:
            outs = p.empty_outputs(x.device)
            for t in outs:
                t.view(torch.uint8).fill_(0xAB)
            err = cuda._launch(p, outs, x, None, (eo, bo), choice)
            assert not err, (choice, err)
            for got, exp in zip(outs, want):
                assert torch.equal(_bytes(got), _bytes(exp)), (name, e, hidden, choice)
        got = ops.OPS[name](x, eo, bo, e, 8)  # tuned on the first call of the signature
        for g, w in zip(got, want):
            assert torch.equal(_bytes(g), _bytes(w)), (name, e, hidden, "dispatcher")


def test_the_ops_run_on_the_dispatcher_without_a_host_copy(cuda):
    """On CUDA the ops run from C++ (csrc/dispatch.cpp) and read no offset on the host: a
    synchronising call would raise under the sync debug mode. The Python kernel's host check
    would (it copies the offsets to the host)."""
    counts = [129, 0, 1]
    eo, bo = offsets(counts, device="cuda")
    x = _make_specials((sum(counts),), 512, torch.bfloat16)
    op = ops.OPS["silu_and_mul_mxfp8_experts_quant"]
    op(x, eo, bo, 3, 8)  # the first call of a signature is decided in Python
    oracle.reset_counts()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        q, s = op(x, eo, bo, 3, 8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert cuda_backend.dispatch_counts() == {"silu_and_mul_mxfp8_experts_quant": 1}
    want = ops.OPS["mxfp8_experts_quant"](ops.OPS["silu_and_mul"](x), eo, bo, 3, 8)
    assert torch.equal(_bytes(q), _bytes(want[0])) and torch.equal(s, want[1])
    want = _reference("silu_and_mul_mxfp8_experts_quant", x, eo, bo, 3, 8)
    assert torch.equal(_bytes(q), _bytes(want[0])) and torch.equal(s, want[1])
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            ops.PYTHON_KERNELS["silu_and_mul_mxfp8_experts_quant"](x, eo, bo, 3, 8)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_forced_triton_still_runs_the_ops(monkeypatch):
    counts = [129, 0, 1]
    eo, bo = offsets(counts, device="cuda")
    x = _make((sum(counts),), 512, torch.bfloat16)
    monkeypatch.setenv(oracle.BACKEND_ENV, "triton")
    oracle.reset_counts()
    q, s = torch.ops.quantfuse.silu_and_mul_mxfp8_experts_quant(x, eo, bo, 3, 8)
    assert oracle.call_counts()[("silu_and_mul_mxfp8_experts_quant", "triton")] == 1
    monkeypatch.delenv(oracle.BACKEND_ENV)
    want = torch.ops.quantfuse.mxfp8_experts_quant(torch.ops.quantfuse.silu_and_mul(x), eo, bo, 3, 8)
    assert torch.equal(q.view(torch.uint8), want[0].view(torch.uint8)) and torch.equal(s, want[1])


#: inconsistent offsets of [3, 0, 2] tokens, each breaking one rule of plan.check_expert_offsets
BAD_OFFSETS = [([0, 3, 1, 5], [0, 128, 128, 256]),   # expert_offsets decrease
               ([0, 3, 3, 4], [0, 128, 128, 256]),   # do not end at T
               ([0, 3, 3, 5], [0, 64, 64, 192]),     # a first scale row not a multiple of 128
               ([0, 3, 3, 5], [0, 0, 128, 256]),     # overlapping experts
               ([0, 3, 3, 5], [0, 128, 128, 512])]   # past the buffer's 384 rows


@pytest.mark.parametrize("eo,bo", BAD_OFFSETS, ids=["decreasing", "short", "unaligned", "overlap", "past-end"])
def test_the_kernel_checks_the_offsets(cuda, eo, bo):
    """Inconsistent offsets on the C++ path: no store outside the outputs, every scale byte
    E8M0 NaN (0xFF), the flag raised; the Python kernel raises the host check's message."""
    x = _make((5,), 64, torch.bfloat16)
    eo = torch.tensor(eo, dtype=torch.int32, device="cuda")
    bo = torch.tensor(bo, dtype=torch.int32, device="cuda")
    op = ops.OPS["mxfp8_experts_quant"]
    good = offsets([3, 0, 2], device="cuda")
    op(x, *good, 3, 8)  # decided (and checked) once in Python; the next calls run from C++
    torch.cuda.synchronize()
    cuda.experts_offset_error()  # lower the flag
    guard = torch.full((1 << 20,), 0x5A, dtype=torch.uint8, device="cuda")  # a neighbour it must not touch
    q, s = op(x, eo, bo, 3, 8)
    torch.cuda.synchronize()
    assert cuda_backend.dispatch_counts().get("mxfp8_experts_quant", 0) >= 1
    assert cuda.experts_offset_error() and not cuda.experts_offset_error()
    assert s.shape == (384, 4) and bool((s == 0xFF).all())
    assert bool((guard == 0x5A).all())
    with pytest.raises(ValueError, match="quantfuse.mxfp8_experts_quant: "):
        ops.PYTHON_KERNELS["mxfp8_experts_quant"](x, eo, bo, 3, 8)
    q, s = op(x, *good, 3, 8)  # consistent offsets again: no flag
    torch.cuda.synchronize()
    assert not cuda.experts_offset_error()
    want = _reference("mxfp8_experts_quant", x, *good, 3, 8)
    assert torch.equal(_bytes(q), _bytes(want[0])) and torch.equal(s, want[1])


def test_graph_replays_read_new_offsets(cuda):
    """A captured call reads the offsets when it runs: the graph serves every split of the
    tokens over the experts (nothing was read on the host at capture), and a replay with
    inconsistent offsets raises the flag instead of writing past its buffers."""
    counts = [40, 0, 60, 28]
    x = _make_specials((sum(counts),), 256, torch.float16)
    eo, bo = offsets(counts, device="cuda")
    op = ops.OPS["relu2_mxfp4_experts_quant"]
    op(x, eo, bo, 4, 2, "floor")  # warm-up: decided, built, checked
    torch.cuda.synchronize()
    cuda.experts_offset_error()  # lower the flag
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, s = op(x, eo, bo, 4, 2, "floor")
    for split in ([40, 0, 60, 28], [128, 0, 0, 0], [0, 1, 127, 0], [1, 1, 1, 125]):
        new_eo, new_bo = offsets(split, device="cuda")
        eo.copy_(new_eo)
        bo.copy_(new_bo)
        graph.replay()
        torch.cuda.synchronize()
        want = _reference("relu2_mxfp4_experts_quant", x, new_eo, new_bo, 4, 2, "floor")
        assert torch.equal(q, want[0]) and torch.equal(s, want[1]), split
    assert not cuda.experts_offset_error()
    eo.copy_(torch.tensor([0, 50, 20, 120, 128], dtype=eo.dtype, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    assert cuda.experts_offset_error() and bool((s == 0xFF).all())
