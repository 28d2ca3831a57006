"""The recogniser on code from other projects: fused to the recipe it computes, equal to eager.

vLLM is not installable here (CUDA-only wheels), so its native code paths are written again
below from their source, with the same order of operations, dtypes and constants:
``vllm/model_executor/layers/activation.py`` (``SiluAndMul.forward_native``) and
``vllm/model_executor/layers/quantization/input_quant_fp8.py`` (``QuantFP8.forward_native``,
``_quantize_group_native``). transformers is installed (the ``test`` extra) and its own
modules run.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import quantfuse
from quantfuse import catalog
from quantfuse.patterns import recognise
from helpers import post_grad_graph

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
VLLM_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)  # vLLM's _FP8_MIN_SCALING_FACTOR


def _run(gm, config=None):
    fusion = quantfuse.FusionPass(config or quantfuse.FusionConfig())
    fusion(gm.graph)
    gm.recompile()
    return fusion.report


def _bits(t):
    return t.view(torch.uint8) if t.dtype == FP8 else t


def assert_fused_equals_eager(fn, *args, rewrites=1, spec=None):
    """Trace, run the pass, and compare the rewritten graph with eager ``fn`` bit for bit."""
    gm = post_grad_graph(fn, *args)
    report = _run(gm)
    assert len(report.rewrites) == rewrites, str(report)
    assert report.near_misses == [], str(report)
    if spec is not None:
        assert report.rewrites[0].params.get("recipe", "") == spec, str(report)
    eager, fused = fn(*args), gm(*args)
    eager = eager if isinstance(eager, tuple) else (eager,)
    for e, f in zip(eager, fused):
        assert e.shape == f.shape and e.dtype == f.dtype
        assert torch.equal(_bits(e), _bits(f)), (e, f)
        assert e.stride() == f.stride()
    return report


# --- vLLM, re-written from its source ----------------------------------------------------------

def vllm_silu_and_mul(x):
    """SiluAndMul.forward_native (vllm/model_executor/layers/activation.py)."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def vllm_group_quant(x, group_size, column_major=False, use_ue8m0=False):
    """QuantFP8._quantize_group_native (input_quant_fp8.py), dynamic, no padding: amax in the
    input dtype by max(dim)[0] then float; scale = amax / 448, UE8M0 as exp2(ceil(log2)) before
    the floor at the scale (1 / (448 * 512)); the bf16 x divided by the fp32 scale."""
    shape = x.shape
    groups = shape[-1] // group_size
    xg = x.view(-1, groups, group_size)
    absmax = xg.abs().max(dim=-1, keepdim=True)[0].float()
    s = absmax / FP8_MAX
    if use_ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    s = s.clamp(min=VLLM_MIN_SCALE)
    q = (xg / s).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(shape)
    s = s.squeeze(-1).reshape(shape[:-1] + (groups,))
    if column_major:
        s = s.transpose(-2, -1).contiguous().transpose(-1, -2)
    return q, s


def vllm_token_quant(x):
    """QuantFP8.forward_native, dynamic per token: max(dim=-1) values, unsqueeze, to float32,
    (amax / 448).clamp(min=...), then x.float() * scale.reciprocal(), clamp, cast."""
    m, _ = x.abs().max(dim=-1)
    m = m.unsqueeze(-1).to(torch.float32)
    s = (m / FP8_MAX).clamp(min=VLLM_MIN_SCALE)
    return (x.to(torch.float32) * s.to(torch.float32).reciprocal()).clamp(-FP8_MAX, FP8_MAX).to(FP8), s


def vllm_tensor_quant(x):
    """QuantFP8.forward_native, dynamic per tensor (vllm/model_executor/layers/quantization/
    input_quant_fp8.py, ``use_per_token_if_dynamic=False``): the max of |x| over the whole tensor,
    unsqueeze, to float32, (amax / 448).clamp(min=...), x.float() * scale.reciprocal(), clamp, cast."""
    m = x.abs().max().unsqueeze(-1).to(torch.float32)
    s = (m / FP8_MAX).clamp(min=VLLM_MIN_SCALE)
    return (x.to(torch.float32) * s.to(torch.float32).reciprocal()).clamp(-FP8_MAX, FP8_MAX).to(FP8), s


def vllm_static_quant(x, scale):
    """QuantFP8.forward_native, static per tensor: x.float() * scale.reciprocal()."""
    return (x.to(torch.float32) * scale.to(torch.float32).reciprocal()).clamp(-FP8_MAX, FP8_MAX).to(FP8)


VLLM_FLOOR = f"floor_at=scale,eps={VLLM_MIN_SCALE!r}"


@pytest.mark.parametrize("group", [128, 64])
@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("ue8m0", [False, True])
def test_vllm_silu_mul_block_quant(group, column_major, ue8m0):
    x = torch.randn(7, 1024, dtype=torch.bfloat16) * 3
    report = assert_fused_equals_eager(
        lambda x: vllm_group_quant(vllm_silu_and_mul(x), group, column_major, ue8m0), x,
        spec=VLLM_FLOOR + (",ue8m0=exp2,ue8m0_after_floor=False" if ue8m0 else ""))
    assert report.rewrites[0].params["group_size"] == group
    assert report.rewrites[0].params["column_major_scales"] is column_major


def test_vllm_3d_input_and_per_token():
    x = torch.randn(2, 5, 512, dtype=torch.bfloat16) * 3
    assert_fused_equals_eager(lambda x: vllm_group_quant(vllm_silu_and_mul(x), 128), x, spec=VLLM_FLOOR)
    assert_fused_equals_eager(lambda x: vllm_token_quant(vllm_silu_and_mul(x)), x,
                              spec=VLLM_FLOOR + ",apply=mul_inv")


def test_vllm_static_quant():
    x = torch.randn(9, 512, dtype=torch.bfloat16) * 3
    scale = torch.tensor([0.02])
    assert_fused_equals_eager(lambda x, s: vllm_static_quant(vllm_silu_and_mul(x), s), x, scale,
                              spec="apply=mul_inv")


# --- transformers -------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


class QuantisedDown(torch.nn.Module):
    """Where an FP8 down projection quantises its input (per token or per group of 128, as
    vLLM's QuantFP8 does); returns ``(q, s)`` so the test compares the quantisation itself."""

    def __init__(self, group: int | None):
        super().__init__()
        self.group = group

    def forward(self, y):
        return vllm_group_quant(y, self.group) if self.group else vllm_token_quant(y)


@pytest.mark.parametrize("group", [None, 128])
def test_transformers_llama_mlp(group):
    """transformers' LlamaMLP (act_fn(gate_proj(x)) * up_proj(x): two tensors), compiled whole."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, hidden_act="silu")
    torch.manual_seed(0)
    mlp = LlamaMLP(cfg).to(torch.bfloat16).eval()
    mlp.down_proj = QuantisedDown(group)
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    fusion = quantfuse.FusionPass()
    torch._dynamo.reset()
    compiled = torch.compile(mlp, options={"post_grad_custom_post_pass": fusion, "fx_graph_cache": False})
    with torch.no_grad():
        got, want = compiled(x), mlp(x)
    torch._dynamo.reset()
    assert len(fusion.report.rewrites) == 1, str(fusion.report)
    assert fusion.report.rewrites[0].pattern.startswith("recognised:silu_and_mul[separate]")
    for e, f in zip(want, got):
        assert torch.equal(_bits(e), _bits(f))


def test_transformers_relu2():
    from transformers.activations import ACT2FN

    act = ACT2FN["relu2"]
    x = torch.randn(6, 512, dtype=torch.bfloat16)
    report = assert_fused_equals_eager(lambda x: vllm_group_quant(act(x), 128), x)
    assert report.rewrites[0].activation == "relu2"


@pytest.mark.parametrize("lead", [(6,), (2, 3)])
def test_dynamic_per_tensor_spellings_are_fused(lead):
    """One amax over the whole tensor (vLLM's QuantFP8 per tensor, a plain amax() / 448, a 0-dim
    scale; rank 3 too): the per-tensor op, its [1] scale reshaped to the graph's scale shape."""
    x = torch.randn(*lead, 512, dtype=torch.bfloat16) * 3
    x[0, ..., 7] = 40.0  # the tensor's amax in one row only
    spellings = {
        "vllm": (lambda x: vllm_tensor_quant(vllm_silu_and_mul(x)), f"floor_at=scale,eps={VLLM_MIN_SCALE!r},apply=mul_inv"),
        "amax()": (lambda x: _quant_of(vllm_silu_and_mul(x), lambda y: y.abs().amax().float() / FP8_MAX),
                   "floor_at=none"),
    }
    for fn, spec in spellings.values():
        report = assert_fused_equals_eager(fn, x, spec=spec)
        (r,) = report.rewrites
        assert (r.fused_op, r.quant_key) == ("quantfuse.silu_and_mul_per_tensor_quant_fp8", "kFp8DynamicTensorSym")


# --- near misses --------------------------------------------------------------------------------

def _near_miss(fn, *args):
    gm = post_grad_graph(fn, *args)
    before = str(gm.graph)
    report = _run(gm)
    assert report.rewrites == [], str(report)
    assert str(gm.graph) == before
    assert len(report.near_misses) == 1, str(report)
    return report.near_misses[0].reason


X = torch.randn(4, 512, dtype=torch.bfloat16)


def test_near_miss_reasons():
    y_of = vllm_silu_and_mul
    assert "activation output" in _near_miss(lambda x: (lambda y: (*vllm_token_quant(y), y.sum()))(y_of(x)), X)
    assert "clamped to [-240.0, 240.0]" in _near_miss(
        lambda x: (lambda y: (lambda s: ((y.float() / s).clamp(-240, 240).to(FP8), s))(
            y.abs().amax(-1, keepdim=True).float() / 448))(y_of(x)), X)
    assert "rounded to bfloat16 before the FP8 cast" in _near_miss(
        lambda x: (lambda y: (lambda s: ((y / s).clamp(-448, 448).to(FP8), s))(
            y.abs().amax(-1, keepdim=True) / 448))(y_of(x)), X)
    swapped = _near_miss(lambda x: vllm_token_quant(F.silu(x[..., 256:]) * x[..., :256]), X)
    assert "half order" in swapped



def _quant_of(y, scale_of, cast=FP8, bound=FP8_MAX, view=lambda t: t):
    """q, s of ``view(y.float()) / s`` with ``s = scale_of(y)``: one spelling, changed one part at a time."""
    s = scale_of(y)
    return (view(y.float()) / view(s)).clamp(-bound, bound).to(cast), s


def _row_amax(y):
    return y.abs().amax(-1, keepdim=True)


# every near site reported, with its exact reason (issue 17 item 4): one change each from a site that fuses
NEAR_SITES = {
    "permuted q": (
        lambda y: _quant_of(y, lambda y: _row_amax(y).float() / FP8_MAX, view=lambda t: t.t()),
        "`div_2` broadcasts a scale of shape (1, 4) over values of shape (256, 4), which does not give each "
        "element its own group's scale"),
    "float8_e5m2": (
        lambda y: _quant_of(y, lambda y: _row_amax(y).float() / 57344.0, cast=torch.float8_e5m2, bound=57344.0),
        "the values are cast to torch.float8_e5m2: the catalog's FP8 element is E4M3 (torch.float8_e4m3fn)"),
    "sum of |y|": (
        lambda y: _quant_of(y, lambda y: y.abs().sum(-1, keepdim=True).float() / FP8_MAX),
        "the scale reduces |y| by sum (`sum_1`), not by max: no recipe scales by that"),
    "another divisor": (
        lambda y: _quant_of(y, lambda y: _row_amax(y).float() / 447.0),
        "the scale divides the amax by 447.0, not the e4m3 maximum 448.0"),
    "group of 32": (
        lambda y: _quant_of(y.view(4, 8, 32), lambda y: _row_amax(y).float() / FP8_MAX),
        "group size 32 is not supported (supported: 64, 128)"),
}


@pytest.mark.parametrize("name", list(NEAR_SITES))
def test_every_near_site_is_reported_with_its_reason(name):
    quant, reason = NEAR_SITES[name]
    assert _near_miss(lambda x: quant(vllm_silu_and_mul(x)), X) == reason


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grouping", ["token", "group"])
def test_scale_in_the_input_dtype_returned_so_is_fused(dtype, grouping):
    """amax / 448 computed in the 16-bit dtype, promoted for the divide and returned in that dtype:
    the op's float32 scales hold the same values, so a cast back is exact (it was a near miss)."""
    view = (lambda t: t) if grouping == "token" else (lambda t: t.unflatten(-1, (-1, 128)))

    def f(x):
        y = view(vllm_silu_and_mul(x))
        s = _row_amax(y) / FP8_MAX
        q = (y.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        return (q.flatten(-2) if grouping == "group" else q), s

    report = assert_fused_equals_eager(f, X.to(dtype) * 3)  # compares the scale's dtype too
    assert "step_dtype=input" in report.rewrites[0].params.get("recipe", ""), str(report)
    assert f(X.to(dtype))[1].dtype == dtype


def test_another_activation_is_named():
    reason = _near_miss(lambda x: vllm_token_quant(F.gelu(x[..., :256]) * x[..., 256:]), X)
    assert reason == f"the activation uses erf (`erf`): not a fused activation ({', '.join(catalog.ACTIVATIONS)})"

def test_extra_consumer_in_grad_mode_says_no_grad():
    x = X.clone().requires_grad_(True)
    gm = post_grad_graph(lambda x: vllm_token_quant(vllm_silu_and_mul(x)), x)
    reasons = " ".join(m.reason for m in _run(gm).near_misses)
    assert "torch.no_grad()" in reasons or "inference_mode" in reasons


def test_gpu_graph_fuses_vllm_floor_at_the_scale():
    """should_fuse on a GPU graph (the input faked onto the meta device): vLLM's floor at the scale
    is a kernel recipe (the CUDA and Triton kernels compute every dynamic FP8 recipe field), so the
    site is rewritten; a recipe no kernel computes (a NaN eps) is kept, with the reason."""
    gm = post_grad_graph(lambda x: vllm_group_quant(vllm_silu_and_mul(x), 128), X)
    (q, ys, scale), = recognise.find_candidates(gm.graph)
    config = quantfuse.FusionConfig(native_on_cpu=True)
    site = recognise.read_site(q, next(iter(ys)), scale, config)
    assert site.recipe.floor_at is catalog.FloorAt.SCALE
    assert recognise.should_fuse(site, config) is None  # CPU, rewrites asked for: the reference runs it
    assert recognise.should_fuse(site, quantfuse.FusionConfig(native_on_cpu=False)).startswith("kept for speed")
    site.x.meta["val"] = torch.empty(site.x.meta["val"].shape, dtype=torch.bfloat16, device="meta")
    assert recognise.should_fuse(site, config) is None
    assert recognise.should_fuse(site, quantfuse.FusionConfig(native_on_cpu=False)) is None
    site.recipe = dataclasses.replace(site.recipe, eps=float("nan"))
    reason = recognise.should_fuse(site, config)
    assert reason and "eps=nan" in reason and "no CUDA / Triton kernel" in reason


def _on_a_gpu_graph(fn, x):
    """The recognised site of ``fn(x)`` with its input faked onto the meta device (a GPU graph)."""
    gm = post_grad_graph(fn, x)
    (q, ys, scale), = recognise.find_candidates(gm.graph)
    site = recognise.read_site(q, next(iter(ys)), scale, quantfuse.FusionConfig())
    site.x.meta["val"] = torch.empty(site.x.meta["val"].shape, dtype=x.dtype, device="meta")
    return site


def test_gpu_graph_keeps_a_site_only_slower_triton_kernels_compute():
    """A GPU site the CUDA kernels decline runs on Triton: kept where Triton's kernel for the pair
    is slower than Inductor's (not in PROFITABLE_NATIVE_TRITON), with the CUDA reason; rewritten
    where it is the faster code, or where the CUDA kernels run it."""
    config = quantfuse.FusionConfig()
    ratio = _on_a_gpu_graph(lambda x: (lambda y: (lambda a: ((y.float() * (448.0 / a)).clamp(-448, 448).to(FP8),
                                                             a / 448.0))(y.float().abs().amax()))(vllm_silu_and_mul(x)), X)
    assert (ratio.scheme, ratio.recipe.apply) == (catalog.FP8_PER_TENSOR, catalog.ApplyForm.MUL_RATIO)
    assert recognise.should_fuse(ratio, config) == (
        "kept for speed: apply=mul_ratio has no per-tensor CUDA kernel, so the site would run on the Triton kernels, "
        "slower than Inductor's code for this pair (passes.PROFITABLE_NATIVE_TRITON)")
    assert recognise.should_fuse(_on_a_gpu_graph(lambda x: vllm_tensor_quant(vllm_silu_and_mul(x)), X), config) is None
    # a row of 100 bf16 is no whole number of 16-byte vectors: no per-token CUDA kernel
    x100 = torch.randn(4, 100, dtype=torch.bfloat16)
    silu = _on_a_gpu_graph(lambda x: vllm_token_quant(vllm_silu_and_mul(x)), torch.randn(4, 200, dtype=torch.bfloat16))
    assert "to be a positive multiple of 8" in recognise.should_fuse(silu, config)
    assert recognise.should_fuse(_on_a_gpu_graph(lambda x: vllm_token_quant(torch.relu(x).square()), x100),
                                 config) is None  # ReLU² -> FP8 per token: Triton's is the faster code


def _floored_in(dtype):
    """A bf16 scale computed in bf16 (amax / 448), floored at 1e-4 in ``dtype`` (bf16: as eager's
    bf16 clamp stores it, at bf16(1e-4); fp32: after the cast, at 1e-4)."""
    def fn(x):
        yg = torch.relu(x).square().unflatten(-1, (-1, 128))
        s = (yg.abs().amax(-1, keepdim=True) / 448.0).to(dtype).clamp(min=1e-4).float()
        q = (yg.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn)
        return q.flatten(-2), s.squeeze(-1)
    return fn


def test_a_16bit_scale_floor_is_read_with_its_eps_rounded():
    """bf16(max(s, 1e-4)) is max(s, bf16(1e-4)) for a bf16 s: the recogniser reads the bf16 floor
    with the rounded eps and the fp32 one with 1e-4, two recipes, each equal to eager where the
    floor decides (small rows: s < eps)."""
    x = (torch.randn(5, 512) * 1e-3).bfloat16()
    bf16_eps = float(torch.tensor(1e-4, dtype=torch.float32).bfloat16())
    assert bf16_eps != float(torch.tensor(1e-4))
    assert_fused_equals_eager(_floored_in(torch.bfloat16), x, spec=f"floor_at=scale,eps={bf16_eps!r},step_dtype=input")
    assert_fused_equals_eager(_floored_in(torch.float32), x, spec="floor_at=scale,eps=0.0001,step_dtype=input")


def test_corpus_other_eps_is_fused_to_its_own_recipe():
    """The pattern matcher reports its literal; the recogniser fuses it with eps=1e-06 (and drops
    the matcher's near miss for the site)."""
    from corpus import OtherEps

    module = OtherEps()
    report = assert_fused_equals_eager(module, module.make_input(), spec="eps=1e-06")
    assert report.rewrites[0].pattern.startswith("recognised:")


# --- MXFP8 by meaning --------------------------------------------------------------------------

def mx8_quant(y, rceil=True, squeeze_first=True, clamp=True, emax=8, also_scale=False):
    """MXFP8 as tests/corpus.py's ``_mx8`` writes it (blocks of 32, amax in fp32, the exponent
    clamped to E8M0's [-127, 127], bytes e + 127), with the scale bytes squeezed before the uint8
    cast (the spelling the pattern matcher does not take)."""
    yg = y.unflatten(-1, (-1, 32)).float()
    amax = yg.abs().amax(dim=-1, keepdim=True)
    e = torch.ceil(torch.log2(amax / FP8_MAX)) if rceil else torch.floor(torch.log2(amax)) - emax
    if clamp:
        e = e.clamp(-127, 127)
    q = (yg / torch.exp2(e)).clamp(-FP8_MAX, FP8_MAX).to(FP8).flatten(-2)
    s = (e.squeeze(-1) + 127).to(torch.uint8) if squeeze_first else (e + 127).to(torch.uint8).squeeze(-1)
    return (q, s, torch.exp2(e)) if also_scale else (q, s)


def _mx_input(*shape, dtype=torch.bfloat16):
    x = torch.randn(*shape, dtype=dtype) * torch.logspace(-3, 3, shape[-1]).to(dtype)
    x[..., :64] = 0  # all-zero blocks: the clamped exponent -127, byte 0
    return x


@pytest.mark.parametrize("rceil", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mxfp8_recognised_bit_exact(rceil, dtype):
    x = _mx_input(6, 1024, dtype=dtype)
    report = assert_fused_equals_eager(lambda x: mx8_quant(vllm_silu_and_mul(x), rceil), x)
    (r,) = report.rewrites
    assert r.pattern == "recognised:silu_and_mul[halves]+mxfp8" and r.fused_op == "quantfuse.silu_and_mul_mxfp8_quant"
    assert r.params == {"scale_rounding": "rceil" if rceil else "floor", "is_sf_swizzled_layout": False,
                        "recipe": "mx_byte0=exp2"}  # y / torch.exp2(e): the device's 2^-127
    assert (r.vllm_pattern, r.quant_key) == ("SiluMulMxfp8QuantPattern", "kMxfp8Dynamic")


def test_mxfp8_relu2_3d_recognised():
    x = _mx_input(2, 3, 256)
    assert_fused_equals_eager(lambda x: mx8_quant(F.relu(x).square(), rceil=False), x)


def test_mxfp8_near_sites():
    y_of = vllm_silu_and_mul
    assert _near_miss(lambda x: mx8_quant(y_of(x), clamp=False), X) == (
        "the MX exponent is not clamped to [-127, 127] (E8M0's range; without it an all-zero block divides 0 by 0)")
    assert _near_miss(lambda x: mx8_quant(y_of(x), rceil=False, emax=7), X) == (
        "the MX exponent is floor(log2(amax)) - 7.0, not - 8 (e4m3's emax)")
    assert _near_miss(lambda x: mx8_quant(y_of(x), also_scale=True), X).startswith(
        "the MX exponent `clamp_max` is used outside the pattern (exp2_1); the fused op returns q and the E8M0")
    # the bytes read back as floats: a consumer of the fused op's bytes, fused
    assert_fused_equals_eager(lambda x: (lambda q, s: (q, s.float() - 127))(*mx8_quant(y_of(x))), X)
    assert _near_miss(lambda x: mx8_quant(y_of(x), squeeze_first=True), X.float()).startswith(
        "MX of a float32 activation: torch.log2 rounds near powers of two")
