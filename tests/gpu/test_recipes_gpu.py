"""Every dynamic FP8 recipe field on the GPU: the CUDA and Triton kernels against eager PyTorch
running each recipe's own spelling (tests/recipe_spellings.py) on CUDA tensors, bit for bit.

Recipes: every combination of floor_at, step_dtype, apply, clamp, the UE8M0 form and its order
with the floor (per token, per group of 64 and 128) for the CUDA kernels (the recipe is read at run
time: no compile per recipe); for Triton, which compiles a kernel per recipe, a set covering every
pair of field values; then eps values that make the floors bite, fused ops, the static scheme's
apply form and clamp, and the C++ dispatcher path. Inputs: bf16 and fp16, fresh random rows with
magnitudes over six decades, NaN, inf, an all-zero group, exact e4m3 ties, rows small enough that
a scale without a floor underflows (and, in fp16, rounds to 0), T = 1 and odd T. FP8 NaN codes are
compared sign-blind and NaN scales NaN-blind, as everywhere in tests/gpu.

Run: ``python -m pytest -q tests/gpu/test_recipes_gpu.py``.
"""

from __future__ import annotations

import itertools
import os
import sys

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import kernel_calls as kc  # noqa: E402
from recipe_spellings import covering, fp8_recipes, scheme_of, spelled, spelled_static  # noqa: E402

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend, oracle  # noqa: E402
from quantfuse.custom_ops import triton_schemes as ts  # noqa: E402

FP8 = torch.float8_e4m3fn
DTYPES = (torch.bfloat16, torch.float16)
HIDDEN = 512
TOKENS = (1, 7, 33)


@pytest.fixture(scope="module", autouse=True)
def _available():
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "GPU tests must not run under the interpreter"
    assert cuda_backend.is_available(), cuda_backend.unavailable_reason()
    assert ts.is_available(), getattr(ts, "_failed", None)


ALL = list(fp8_recipes())
COVERING = covering(ALL)


def _input(tokens: int, dtype, seed: int) -> torch.Tensor:
    """Rows of randn times 10^[-3, 3], sparse outliers, and specials in rows 1.. (where there are)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens, HIDDEN, device="cuda", generator=gen)
    x = x * torch.pow(10.0, torch.empty(tokens, 1, device="cuda").uniform_(-3, 3, generator=gen))
    x = torch.where(torch.rand(tokens, HIDDEN, device="cuda", generator=gen) < 0.01, x * 50, x)
    x[0, :64] = 0.0  # an all-zero group: the floor decides (no floor: 0 / 0)
    tiny = 1e-6 if dtype == torch.float16 else 1e-38  # a scale without a floor underflows (fp16: to 0)
    specials = [
        lambda r: r.__setitem__(5, float("nan")),
        lambda r: r.__setitem__(HIDDEN // 3, float("inf")),
        lambda r: r.copy_(torch.randn(HIDDEN, device="cuda", generator=gen) * tiny),
        lambda r: r.copy_(torch.tensor([448.0, 464.0, 1.0625, 2.0 ** -10, 3 * 2.0 ** -10, -0.0, 240.0, 232.0],
                                       device="cuda").repeat(HIDDEN // 8)),
        lambda r: r.copy_(torch.randn(HIDDEN, device="cuda", generator=gen) * 1e-41),  # subnormal in bf16
        lambda r: r.__setitem__(7, -float("inf")),
    ]
    for i, f in zip(range(1, tokens), specials):
        f(x[i])
    return x.to(dtype)


_scheme = scheme_of


def _fp8_bits(q: torch.Tensor) -> torch.Tensor:
    b = q.view(torch.uint8).clone()
    b[(b & 0x7F) == 0x7F] = 0x7F  # NaN, sign-blind
    return b


def _assert_same(got, want, what):
    gq, gs = got
    wq, ws = want
    assert gq.shape == wq.shape and gs.shape == ws.shape, what
    bad = _fp8_bits(gq) != _fp8_bits(wq)
    assert not bad.any(), f"{what}: {int(bad.sum())} codes differ, e.g. at {bad.nonzero()[:3].tolist()}"
    gs, ws = gs.float(), ws.float()
    nan = ws.isnan()
    assert torch.equal(gs.isnan(), nan), f"{what}: NaN scales differ"
    assert torch.equal(gs.masked_fill(nan, 0).view(torch.int32), ws.masked_fill(nan, 0).view(torch.int32)), \
        f"{what}: scales differ at {(gs != ws).nonzero()[:3].tolist()}"


def _cuda_runs(r: catalog.Recipe) -> bool:
    """Whether the CUDA kernels compute the recipe (``cuda_backend.plan_reason``): they clamp
    (SATFINITE), so a recipe without the clamp is theirs only where torch's cast saturates too
    (torch >= 2.12; before, Triton runs it: test_unsaturated_cast_...), and per tensor they encode
    with the static kernel's y / s or y * (1 / s) (test_per_tensor_mul_ratio_is_triton_s)."""
    scheme, params = _scheme(r)
    plan = kc.make(scheme.unfused_name, torch.empty(1, HIDDEN, dtype=torch.bfloat16), *params,
                   recipe=r.spec(scheme.recipe(*params)))
    return cuda_backend.plan_reason(plan) is None


def _run(mod, r: catalog.Recipe, x: torch.Tensor, name: str | None = None, up=None):
    scheme, params = _scheme(r)
    name = name or scheme.unfused_name
    return kc.call(mod, name, x, *params, up=up, recipe=r.spec(scheme.recipe(*params)))


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_every_recipe_equals_eager(dtype, tokens):
    x = _input(tokens, dtype, seed=tokens)
    for r in filter(_cuda_runs, ALL):
        _assert_same(_run(cuda_backend, r, x), spelled(x, r), f"cuda {r}")


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_covering_recipes_equal_eager(dtype, tokens):
    x = _input(tokens, dtype, seed=100 + tokens)
    for r in COVERING:
        _assert_same(_run(ts, r, x), spelled(x, r), f"triton {r}")


#: recipes whose floors bite on the small rows, as model code writes them: vLLM's floor at the
#: scale (before and after UE8M0), torchao's per-row (no floor, bf16 steps), an fp16 floor that
#: rounds to 0, a tiny eps; without the clamp and y * (1 / s)
EPS_SPECS = ("floor_at=scale,eps=1e-06", "floor_at=scale,eps=1e-06,ue8m0=exp2,ue8m0_after_floor=False",
             "floor_at=scale,eps=0.0001,ue8m0=exact", "floor_at=none,step_dtype=input", "eps=0.0001,step_dtype=input",
             "eps=1e-30,apply=mul_inv,clamp=False", "floor_at=scale,eps=1e-30,step_dtype=input,ue8m0=exp2")


@pytest.mark.parametrize("mod", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_floors_that_bite_and_fused_ops_equal_eager(mod, dtype):
    mod = {"cuda": cuda_backend, "triton": ts}[mod]
    for tokens, spec in itertools.product((1, 33), EPS_SPECS):
        g, u = _input(tokens, dtype, seed=7), _input(tokens, dtype, seed=8)
        for base in (catalog.FP8_PER_TOKEN.base, catalog.FP8_PER_TENSOR.base, catalog.FP8_PER_GROUP.recipe(64),
                     catalog.FP8_PER_GROUP.recipe(128)):
            r = base.with_spec(spec)
            if mod is cuda_backend and not _cuda_runs(r):
                continue
            _assert_same(_run(mod, r, g), spelled(g, r), f"{mod.NAME} {spec}")
            scheme, params = _scheme(r)
            fused = catalog.fused_op_name("silu_and_mul", scheme.key)
            _assert_same(_run(mod, r, g, name=fused, up=u), spelled(F.silu(g) * u, r), f"{mod.NAME} {fused} {spec}")
            relu2 = catalog.fused_op_name("relu2", scheme.key)
            _assert_same(_run(mod, r, g, name=relu2), spelled(F.relu(g).square(), r), f"{mod.NAME} {relu2} {spec}")


@pytest.mark.parametrize("mod", ["cuda", "triton"])
def test_per_token_long_rows_equal_eager(mod):
    """Rows past the per-token kernels' registers (CUDA: the two-pass wide kernel; Triton: chunks)."""
    mod = {"cuda": cuda_backend, "triton": ts}[mod]
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = (torch.randn(3, 18432, device="cuda", generator=gen) * 1e-3).bfloat16()
    x[1] = 0.0
    for spec in ("floor_at=none,step_dtype=input", "floor_at=scale,eps=1e-06,apply=mul_inv", "ue8m0=exp2"):
        r = catalog.FP8_PER_TOKEN.base.with_spec(spec)
        _assert_same(_run(mod, r, x), spelled(x, r), f"{mod.NAME} {spec}")


@pytest.mark.parametrize("mod", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_static_apply_and_clamp_equal_eager(mod, dtype):
    mod = {"cuda": cuda_backend, "triton": ts}[mod]
    x = _input(33, dtype, seed=9)
    for spec, s in itertools.product(("", "apply=mul_inv", "clamp=False", "apply=mul_inv,clamp=False"),
                                     (0.37, 2.0 ** -20, 3.0e5, 2.0 ** -70)):
        r = catalog.FP8_STATIC.base.with_spec(spec)
        scale = torch.tensor([s], device="cuda")
        if mod is cuda_backend and not _cuda_runs(r):
            continue
        (q,) = kc.call(mod, "static_scaled_fp8_quant", x, scale=scale, recipe=spec)
        want = spelled_static(x, scale, r)
        assert torch.equal(_fp8_bits(q), _fp8_bits(want)), f"{mod.NAME} {spec} scale={s}"


def test_per_tensor_mul_ratio_is_triton_s():
    """y * (448 / amax) per tensor: the CUDA kernels decline it with the reason, Triton computes it."""
    x = _input(7, torch.bfloat16, seed=13)
    p = kc.make("dynamic_scaled_fp8_quant", x, recipe="apply=mul_ratio")
    assert cuda_backend.supports(p) == "apply=mul_ratio has no per-tensor CUDA kernel"
    r = catalog.FP8_PER_TENSOR.base.with_spec("apply=mul_ratio")
    _assert_same(_run(ts, r, x), spelled(x, r), "triton per-tensor mul_ratio")


@pytest.mark.parametrize("mod", ["cuda", "triton"])
def test_per_tensor_empty_input_writes_the_scale(mod):
    """No rows: the kernels still write the one scale, the recipe's for an amax of 0 (the reference's)."""
    mod = {"cuda": cuda_backend, "triton": ts}[mod]
    x = torch.empty(0, 512, device="cuda", dtype=torch.bfloat16)
    for spec in ("", "floor_at=scale,eps=1e-06,apply=mul_inv", "floor_at=none"):
        q, s = kc.call(mod, "silu_and_mul_per_tensor_quant_fp8", x, recipe=spec)
        q0, s0 = kc.reference("silu_and_mul_per_tensor_quant_fp8", x, recipe=spec)
        assert q.shape == (0, 256) and torch.equal(s, s0), (mod.NAME, spec, s, s0)


def test_dispatcher_path_runs_the_recipe():
    """The op on CUDA tensors: the first call plans in Python, the second runs on the C++
    dispatcher path (csrc/dispatch.cpp), both the CUDA kernel with the recipe's arguments."""
    x = _input(33, torch.bfloat16, seed=11)
    op = torch.ops.quantfuse.per_token_group_quant_fp8
    for spec in ("floor_at=none,step_dtype=input", "floor_at=scale,eps=1e-06,ue8m0=exp2,apply=mul_inv"):
        r = catalog.FP8_PER_GROUP.recipe(64).with_spec(spec)
        oracle.reset_counts()
        for _ in range(2):
            _assert_same(op(x, 64, recipe=spec), spelled(x, r), f"dispatcher {spec}")
        assert oracle.call_counts()[("per_token_group_quant_fp8", "cuda")] == 2


def test_unsaturated_cast_is_declined_by_cuda_only():
    """Where torch's cast does not saturate (torch < 2.12), a recipe without the clamp gives NaN
    past 464: the CUDA kernels (SATFINITE) decline it with a reason, Triton computes it (the
    tests above compare both with eager on this machine's torch)."""
    x = _input(7, torch.bfloat16, seed=12)
    p = kc.make("per_token_quant_fp8", x, recipe="clamp=False")
    if catalog.E4M3_CAST_SATURATES:
        assert cuda_backend.supports(p) is None
    else:
        assert "torch < 2.12" in cuda_backend.supports(p)
    assert ts.supports(p) is None


def test_cuda_cast_saturates_as_the_cpu_cast_says():
    """catalog.E4M3_CAST_SATURATES is measured with a CPU cast; the kernels' choice for recipes
    without the clamp rests on eager's CUDA cast doing the same (both changed in torch 2.12)."""
    v = torch.tensor([float("inf"), -1e30, 500.0, 465.0, 464.0], device="cuda")
    q = v.to(FP8).view(torch.uint8).tolist()
    if catalog.E4M3_CAST_SATURATES:
        assert q == [0x7E, 0xFE, 0x7E, 0x7E, 0x7E]
    else:
        assert [b & 0x7F for b in q] == [0x7F, 0x7F, 0x7F, 0x7F, 0x7E]
