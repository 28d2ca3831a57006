"""torchao's ``to_mx`` (MXFP8 / MXFP4, every ScaleCalculationMode) on the GPU, bit for bit.

The GPU machine has no torchao: the reference is ``tests/torchao_spelled.py``'s ``to_mx_torch``,
torchao 0.18.0's computation (torchao/prototype/mx_formats/mx_tensor.py ``to_mx`` and the
``_to_mx_rceil`` fallback below sm_100, custom_fp_utils.py's E2M1 bit trick, kernels.py's
``pack_uint4``) written again in plain torch and checked against the real ``to_mx`` on the CPU by
``tests/test_torchao_mx.py``; here it runs eagerly on the GPU, so that it has the GPU's own division,
``log2``, ``exp2`` and NaN results. Against it: the CUDA and Triton kernels with the recipe the
recogniser reads off each mode (``torchao_spelled.SPECS``), on fresh random inputs with every kind
of special block and on one block for every bf16 amax; and the spelling compiled whole with the
pass (fused to the CUDA kernel), and the real ``to_mx`` where torchao is installed. MXFP4 elements
that are NaN are the one exception (E2M1 has no NaN: the fused op codes 0, torchao's bit trick a
payload-dependent code; docs/numerics.md).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, os.path.dirname(__file__))

import kernel_calls as kc  # noqa: E402

from helpers import compiled_with_pass  # noqa: E402

import quantfuse  # noqa: E402
from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend, oracle  # noqa: E402
from quantfuse.custom_ops import triton_schemes as ts  # noqa: E402
from torchao_spelled import SPECS, assert_mxfp4_equal_but_nan, mx_inputs, silu_mul, to_mx_torch  # noqa: E402

ELEMENTS = {"e4m3": "mxfp8", "e2m1": "mxfp4"}
CASES = [(element, mode) for element in ELEMENTS for mode in SPECS]
IDS = [f"{ELEMENTS[e]}-{m}" for e, m in CASES]
BACKENDS = {"cuda": cuda_backend, "triton": ts}


def _backend(name):
    mod = BACKENDS[name]
    if not mod.is_available():
        why = cuda_backend.unavailable_reason() if name == "cuda" else ts._failed
        pytest.skip(f"{name} kernels unavailable: {why}")
    return mod


def _assert_same(element, mode, y, got, want, what):
    (q, s), (wq, ws) = got, want
    assert torch.equal(s, ws), f"{what}: scales differ at {(s != ws).nonzero()[:4].tolist()}"
    if element == "e4m3":
        assert torch.equal(q.view(torch.uint8), wq.view(torch.uint8)), \
            f"{what}: q differs at {(q.view(torch.uint8) != wq.view(torch.uint8)).nonzero()[:4].tolist()}"
    else:
        assert_mxfp4_equal_but_nan(q, wq, y, mode, what)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("element,mode", CASES, ids=IDS)
def test_kernels_equal_torchao_on_the_gpu(backend, dtype, element, mode):
    """The fused op (SiLU x Mul -> MX) and the unfused MX op with the mode's recipe, against
    ``to_mx`` of eager's SiLU x Mul on the same GPU."""
    mod = _backend(backend)
    seed = int.from_bytes(os.urandom(4), "little")
    scheme = ELEMENTS[element]
    for tokens, hidden in ((33, 512), (11, 7168), (4097, 256)):  # mx_inputs: tokens >= 10
        x = mx_inputs(tokens, hidden, seed, "cuda", dtype)
        y = silu_mul(x)
        ws, wq = to_mx_torch(y, element, mode)
        what = f"{backend} {dtype} {tokens}x{hidden} seed={seed}"
        fused = kc.call(mod, f"silu_and_mul_{scheme}_quant", x, mode.lower(), recipe=SPECS[mode])
        _assert_same(element, mode, y, fused, (wq, ws), f"fused {what}")
        plain = kc.call(mod, f"{scheme}_quant", y.contiguous(), mode.lower(), recipe=SPECS[mode])
        _assert_same(element, mode, y, plain, (wq, ws), f"unfused {what}")


def _every_amax(dtype) -> torch.Tensor:
    """One block (a row of 32) per non-negative ``dtype`` value, +inf and NaN as its amax, the
    block's other elements random fractions of it (the amax at a random position, signs random)."""
    bits = torch.arange(0, 0x7C01 if dtype == torch.float16 else 0x7F81, dtype=torch.int32).to(torch.int16)
    amax = torch.cat([bits.view(dtype).float(), torch.tensor([float("nan")])]).cuda()
    gen = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    blocks = (amax[:, None] * torch.rand(amax.numel(), 32, device="cuda", generator=gen)).to(dtype).float()
    blocks.scatter_(1, torch.randint(0, 32, (amax.numel(), 1), device="cuda", generator=gen), amax[:, None])
    signs = torch.rand(blocks.shape, device="cuda", generator=gen) < 0.5
    return torch.where(signs, -blocks, blocks).to(dtype)


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("element,mode", CASES, ids=IDS)
def test_every_16bit_amax(backend, dtype, element, mode):
    """Every amax a 16-bit activation's block can have (what the recogniser evaluated on the CPU):
    the GPU kernels' bytes equal torchao's computation run on the GPU (its log2, exp2 and divisions)."""
    mod = _backend(backend)
    y = _every_amax(dtype)
    ws, wq = to_mx_torch(y, element, mode)
    got = kc.call(mod, f"{ELEMENTS[element]}_quant", y, mode.lower(), recipe=SPECS[mode])
    _assert_same(element, mode, y, got, (wq, ws), f"{backend} {dtype}")


def test_gpu_exp2_of_integers_is_exact():
    """The recogniser's evaluation takes exp2 of an integer as exact on every device for the
    exponents a multiplier reaches through it (RCEIL's ``exp2(127 - byte)``, bytes 1 ... 253; byte
    254's 2^-127 is a constant): so it is on this GPU. Not below: CUDA's exp2(-127), a subnormal,
    is not the CPU's (the H200, torch 2.11), so a spelling that takes exp2 of -127 has its own bits."""
    k = torch.arange(-126, 128, device="cuda", dtype=torch.float32)
    assert torch.equal(torch.exp2(k), torch.ldexp(torch.ones_like(k), k.int()))


@pytest.mark.parametrize("element,mode", CASES, ids=IDS)
def test_compiled_spelling_is_fused_to_the_cuda_kernel(element, mode):
    """``to_mx_torch`` after SiLU x Mul compiled with the pass on a GPU graph: fused (a kernel
    implements the recipe) to the CUDA kernel, and its bytes are eager's. Where torch's E4M3 cast
    does not saturate (torch < 2.12), the MXFP8 FLOOR / CEIL / EVEN spellings, which leave the
    overflow to the cast under compile, are near misses that say so."""
    if not cuda_backend.is_available():
        pytest.skip(f"CUDA extension unavailable: {cuda_backend.unavailable_reason()}")
    x = mx_inputs(64, 2048, int.from_bytes(os.urandom(4), "little"), "cuda")

    def fn(x):
        return to_mx_torch(silu_mul(x), element, mode)

    ws, wq = fn(x)
    oracle.reset_counts()
    (s, q), report = compiled_with_pass(fn, x)
    if element == "e4m3" and mode != "RCEIL" and not catalog.E4M3_CAST_SATURATES:
        # under compile to_mx leaves the E4M3 overflow to the cast, which NaNs on this torch
        assert report.rewrites == [] and [m.reason for m in report.near_misses] == [
            f"the MX elements are not clamped to [-448.0, 448.0] before the FP8 cast (torch {torch.__version__}'s "
            "cast does not saturate)"], str(report)
        return
    (r,) = report.rewrites
    scheme = ELEMENTS[element]
    assert r.fused_op == f"quantfuse.silu_and_mul_{scheme}_quant" and r.params["recipe"] == SPECS[mode]
    assert r.params["scale_rounding"] == mode.lower() and report.near_misses == []
    assert oracle.call_counts().get((f"silu_and_mul_{scheme}_quant", "cuda"), 0) >= 1
    _assert_same(element, mode, silu_mul(x), (q, s), (wq, ws), "compiled")


@pytest.mark.parametrize("element,mode", CASES, ids=IDS)
def test_real_torchao_to_mx_compiled_on_the_gpu(element, mode):
    """The real to_mx (where torchao is installed) compiled with the pass equals it eagerly."""
    pytest.importorskip("torchao")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx

    elem = torch.float8_e4m3fn if element == "e4m3" else torch.float4_e2m1fn_x2
    x = mx_inputs(64, 2048, int.from_bytes(os.urandom(4), "little"), "cuda")

    def fn(x):
        return to_mx(silu_mul(x), elem, 32, ScaleCalculationMode[mode])

    es, eq = fn(x)
    (s, q), report = compiled_with_pass(fn, x)
    (r,) = report.rewrites
    assert r.params["recipe"] == SPECS[mode]
    _assert_same(element, mode, silu_mul(x), (q, s.view(torch.uint8)), (eq, es.view(torch.uint8)), "torchao")
