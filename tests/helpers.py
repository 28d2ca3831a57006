"""Shared test helpers: post-grad graphs without code generation, and the numerics checks."""

from __future__ import annotations

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

FP8 = torch.float8_e4m3fn


class _Captured(Exception):
    pass


class _Capture(CustomGraphPass):
    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        copy = torch.fx.Graph()
        out = copy.graph_copy(graph, {})
        copy.output(out)
        self.graphs.append(torch.fx.GraphModule(graph.owning_module or torch.nn.Module(), copy))
        raise _Captured  # stop before (slow) code generation

    def uuid(self):
        return None


def _captured(compiled, args, capture: _Capture) -> torch.fx.GraphModule:
    """Run ``compiled(*args)`` until ``capture`` has the one post-grad graph."""
    try:
        compiled(*args)
    except Exception as e:  # Dynamo wraps the backend's exception
        if not capture.graphs:
            raise
        assert isinstance(e, _Captured) or isinstance(e.__cause__, _Captured) or "_Captured" in repr(e), e
    finally:
        torch._dynamo.reset()
    assert len(capture.graphs) == 1, f"expected one graph, got {len(capture.graphs)}"
    return capture.graphs[0]


def post_grad_graph(fn, *args) -> torch.fx.GraphModule:
    """The post-grad FX graph Inductor would hand a custom post pass for ``fn(*args)``."""
    torch._dynamo.reset()
    capture = _Capture()
    compiled = torch.compile(fn, dynamic=False, options={"post_grad_custom_post_pass": capture,
                                                         "fx_graph_cache": False})
    return _captured(compiled, args, capture)


def compiled_with_pass(fn, *args, config=None):
    """``fn(*args)`` compiled whole (Inductor's code generation included) with a fresh
    :class:`quantfuse.FusionPass` under ``torch.no_grad()``: ``(outputs, the pass's report)``."""
    import quantfuse

    fusion = quantfuse.FusionPass(config or quantfuse.FusionConfig())
    torch._dynamo.reset()
    try:
        # every cache off: a graph served from one would skip the pass (and leave no report)
        with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True, fx_graph_cache=False):
            out = torch.compile(fn, options={"post_grad_custom_post_pass": fusion})(*args)
    finally:
        torch._dynamo.reset()
    return out, fusion.report


def compiled_and_code(fn, post_pass, *args) -> tuple[object, str]:
    """``fn(*args)`` compiled whole with ``post_pass`` as Inductor's post-grad custom pass, under
    ``torch.no_grad()`` and with every cache off: ``(outputs, Inductor's output code)``."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    try:
        with torch.no_grad(), torch._inductor.config.patch(force_disable_caches=True, fx_graph_cache=False):
            out, code = run_and_get_code(torch.compile(fn, options={"post_grad_custom_post_pass": post_pass}), *args)
    finally:
        torch._dynamo.reset()
    return out, "\n".join(code)


def post_grad_graph_and_inputs(model, *args) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """The post-grad graph of ``model(*args)`` and the tensors it is called with (the model's
    parameters and buffers lifted to inputs, in the graph's order), so that it can be run."""
    from torch._inductor.compile_fx import compile_fx

    capture, inputs = _Capture(), []

    def backend(gm, example_inputs):
        inputs[:] = example_inputs
        return compile_fx(gm, example_inputs, config_patches={"post_grad_custom_post_pass": capture,
                                                               "fx_graph_cache": False})
    torch._dynamo.reset()
    return _captured(torch.compile(model, backend=backend, dynamic=False), args, capture), inputs


def count_targets(gm: torch.fx.GraphModule, *names: str) -> int:
    """Number of call_function nodes whose target's name contains any of ``names``."""
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and any(s in str(n.target) for s in names))


def fp8_step_close(q1, s1, q2, s2, max_fraction: float = 0.05) -> None:
    """Assert two FP8 group quantisations agree within the numerics contract.

    Where the two sides round 16-bit intermediates differently (eager and Inductor
    already differ in ~3% of codes on native graphs; ``a * sigmoid(a) * b`` rounds three
    times where the fused op rounds twice), scales may differ by the roundings of one
    activation value (relative 2^-6: up to five half-ulps of bf16), or, for power-of-two scales
    whose amax sits on a binade edge, by exactly 2x in a few groups; dequantised values
    then agree within one E4M3 step of the larger scale.
    """
    assert q1.shape == q2.shape and s1.shape == s2.shape
    s1f, s2f = s1.float(), s2.float()
    ratio = s1f / s2f
    close = torch.isclose(s1f, s2f, rtol=2 ** -6, atol=0, equal_nan=True)
    flipped = (ratio == 2) | (ratio == 0.5)
    assert bool((close | flipped).all()), (s1f - s2f).abs().max()
    assert flipped.float().mean().item() <= 0.02, "too many power-of-two scales differ"
    group = q1.shape[-1] // s1.shape[-1]
    d1 = (q1.float().unflatten(-1, (-1, group)) * s1f.unsqueeze(-1)).flatten(-2)
    d2 = (q2.float().unflatten(-1, (-1, group)) * s2f.unsqueeze(-1)).flatten(-2)
    smax = torch.maximum(s1f, s2f).repeat_interleave(group, -1)
    tol = 0.125 * torch.maximum(d1.abs(), d2.abs()) + 2 ** -9 * smax + 2 ** -7 * d1.abs()
    both_nan = d1.isnan() & d2.isnan()
    assert bool(((d1 - d2).abs() <= tol)[~both_nan].all())
    same_scale = ~flipped.repeat_interleave(group, -1)
    differ = (q1.view(torch.uint8) != q2.view(torch.uint8))[same_scale].float().mean().item()
    assert differ <= max_fraction, f"{differ:.3%} of FP8 codes differ"


def e2m1_decode(packed: torch.Tensor) -> torch.Tensor:
    """Packed MXFP4 bytes [..., H/2] -> E2M1 element values (fp32) [..., H], element 2i low."""
    from quantfuse.custom_ops.reference import E2M1_VALUES

    codes = torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2).long()
    mag = torch.tensor(E2M1_VALUES, dtype=torch.float32)[codes & 7]
    return torch.where(codes >= 8, -mag, mag)


def fp4_step_close(q1, s1, q2, s2, max_fraction: float = 0.05) -> None:
    """Assert two MXFP4 quantisations agree within the numerics contract: the same E8M0
    scale but in a few blocks (power-of-two edges, as for FP8), and elsewhere element
    values within one E2M1 grid step (2 x scale at most) where a 16-bit intermediate was
    rounded differently, in at most ``max_fraction`` of the codes."""
    assert q1.shape == q2.shape and s1.shape == s2.shape
    flipped = s1 != s2
    assert bool(((s1.int() - s2.int()).abs() <= 1).all()), "scales differ by more than one binade"
    assert flipped.float().mean().item() <= 0.02, "too many scales differ"
    same = ~flipped.repeat_interleave(32, -1)
    scale = torch.exp2(s1.float() - 127).repeat_interleave(32, -1)
    d1, d2 = e2m1_decode(q1) * scale, e2m1_decode(q2) * scale
    assert bool(((d1 - d2).abs() <= 2 * scale)[same].all())
    differ = (d1 != d2)[same].float().mean().item()
    assert differ <= max_fraction, f"{differ:.3%} of E2M1 codes differ"


def layout_inputs(make, entry, layout, lead, h, dtype):
    """(x, up, interleaved) of one call of ``entry`` in a gated ``layout``, from ``make(lead,
    width, dtype, specials=True)`` (the second operand of SEPARATE without special values)."""
    from quantfuse.catalog import Layout

    if not entry.activation.gated:
        return make(lead, h, dtype), None, False
    if layout is Layout.SEPARATE:
        return make(lead, h, dtype), make(lead, h, dtype, specials=False), False
    return make(lead, 2 * h, dtype), None, layout is Layout.INTERLEAVED


def emulate_interpreted_kernels() -> None:
    """Make the torch reference compute, on the CPU, what the Triton kernels compute under the
    interpreter (tests/test_triton_interpret.py's module doc): numpy's fp32 ``exp``, ``log2`` and
    ``exp2`` (the interpreter's ``tl.exp`` ...) for torch's, ``amax / qmax`` as a multiply by the fp32 reciprocal
    (torch on CUDA), and sigmoid as ``1 / (1 + exp(-z))`` (torch's CUDA formula)."""
    import numpy as np

    from quantfuse.custom_ops import reference

    def numpy_for_fp32(fn, numpy_fn):
        def f(t, *a, **k):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type == "cpu" and not a and not k:
                with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
                    return torch.from_numpy(np.asarray(numpy_fn(t.numpy())))
            return fn(t, *a, **k)
        return f

    # tl.exp, tl.log2 and tl.exp2 (torch's exp2(ceil(log2 s)) UE8M0) are numpy's under the interpreter
    torch.exp = numpy_for_fp32(torch.exp, np.exp)
    torch.log2 = numpy_for_fp32(torch.log2, np.log2)
    torch.exp2 = numpy_for_fp32(torch.exp2, np.exp2)
    reference.div_scalar = lambda t, qmax: t * torch.full_like(t, 1.0 / qmax)
    reference.sigmoid = lambda t: 1.0 / (1.0 + torch.exp(-t))
    reference.silu = lambda t: t / (1.0 + torch.exp(-t))


def cpu_harness(folder, source: str):
    """A C++ program compiled for the CPU against csrc/ and the generated catalog header (for the
    host + device headers: scale_layout.h, experts_layout.h); pytest.skip without a compiler."""
    import shutil
    import subprocess
    from pathlib import Path

    import pytest

    from quantfuse import catalog

    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d, csrc = Path(folder), Path(__file__).resolve().parents[1] / "csrc"
    (d / "h.cpp").write_text(source)
    (d / "quantfuse_catalog.h").write_text(catalog.cpp_header())  # generated at build time too
    subprocess.run([cxx, "-std=c++17", "-O1", "-I", str(csrc), "-I", str(d), str(d / "h.cpp"), "-o", str(d / "h")],
                   check=True)
    return d / "h"



def example_call(entry, tokens: int, hidden: int, device="cpu", expert_counts=(2, 4)) -> tuple:
    """Positional arguments of one call of the catalog op ``entry``: a ``[tokens, hidden]``
    activation input (``2 * hidden`` wide when gated), its tensor inputs (a static scale, or the
    experts ops' offsets for ``expert_counts`` tokens per expert, summing to ``tokens``) and
    its parameters' catalog examples (the experts count: ``len(expert_counts)``)."""
    from quantfuse.custom_ops.plan import expert_offsets

    torch.manual_seed(0)
    x = torch.randn(tokens, hidden * (2 if entry.activation.gated else 1), device=device, dtype=torch.bfloat16) * 3
    params = tuple(p.example for p in entry.params)
    if entry.experts:
        assert sum(expert_counts) == tokens, (expert_counts, tokens)
        return (x, *expert_offsets(list(expert_counts), device=device), len(expert_counts), *params[1:])
    tensors = (torch.tensor([0.05], device=device),) if entry.tensor_inputs else ()
    return (x, *tensors, *params)


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``t``'s shape, strides and dtype, filled with a value no
    output takes by chance: NaN for wider floats, the byte 0x5A for one-byte dtypes."""
    out = torch.empty_like(t)
    if t.element_size() > 1:
        return out.fill_(float("nan"))
    out.view(torch.uint8).fill_(0x5A)
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal one-byte tensors; equal wider ones, NaN matching NaN."""
    if a.element_size() == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a.nan_to_num(1.5), b.nan_to_num(1.5))
