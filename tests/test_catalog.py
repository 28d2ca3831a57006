"""The catalog is the one source of the ops, their plans and the reference maths.

Every case here is derived from the catalog's tables: a new activation, layout or recipe
field is tested by adding its entry. The reference (the torch backend) is compared with
independent spellings of each recipe, written here the way model code writes them.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import quantfuse  # noqa: F401  (registers the ops)
from quantfuse import catalog
from quantfuse.catalog import Grouping, Layout
from quantfuse.custom_ops import plan as qplan
from quantfuse.custom_ops import reference
from recipe_spellings import fp8_recipes, scheme_of, spelled

qf = torch.ops.quantfuse
ROOT = Path(__file__).resolve().parents[1]


def test_every_catalog_entry_is_a_registered_op_with_its_schema():
    for name, entry in catalog.OPS.items():
        schema = getattr(qf, name).default._schema
        assert str(schema) == f"{catalog.NAMESPACE}::{name}{entry.schema}"
    assert len(catalog.OPS) == len(catalog.ACTIVATIONS) + (len(catalog.SCHEMES) + len(catalog.EXPERTS_SCHEMES)) * (
        1 + len(catalog.ACTIVATIONS))


def _all_16bit(dtype):
    g = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)
    return g[torch.isfinite(g)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_and_mul_rounds_as_eager_for_every_16bit_gate(dtype):
    """``F.silu(a) * b`` in eager rounds silu, then the product: the op does the same in
    every layout, for every finite 16-bit gate value."""
    torch.manual_seed(0)
    g = _all_16bit(dtype)
    u = torch.randn(g.shape).to(dtype)
    eager = F.silu(g) * u
    inputs = {Layout.HALVES: dict(x=torch.cat([g, u])[None]),
              Layout.SEPARATE: dict(x=g[None], up=u[None]),
              Layout.INTERLEAVED: dict(x=torch.stack([g, u], -1).flatten()[None], interleaved=True)}
    assert set(inputs) == set(Layout)
    for layout, kwargs in inputs.items():
        got = qf.silu_and_mul(**kwargs)[0]
        assert torch.equal(got.view(torch.int16), eager.view(torch.int16)), layout


def _gated_inputs(dtype, tokens=5, hidden=256):
    torch.manual_seed(1)
    g = torch.randn(tokens, hidden).mul(3).to(dtype)
    u = torch.randn(tokens, hidden).to(dtype)
    return g, u


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _assert_same_outputs(a, b):
    """Bit-equal outputs with equal shapes and strides (an op's q, or its (q, s))."""
    a, b = (t if isinstance(t, tuple) else (t,) for t in (a, b))
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.shape == v.shape and u.stride() == v.stride() and u.dtype == v.dtype
        assert torch.equal(_bits(u), _bits(v))


def _call_args(scheme: catalog.Scheme):
    tensors = [torch.tensor([0.0123])] if scheme.tensor_inputs else []
    return tensors + [p.example for p in scheme.params]


@pytest.mark.parametrize("activation,scheme", [p for p in catalog.PAIRS if catalog.ACTIVATIONS[p[0]].gated])
def test_every_gated_layout_computes_the_same_fused_result(activation, scheme):
    op = getattr(qf, catalog.fused_op_name(activation, scheme))
    args = _call_args(catalog.SCHEMES[scheme])
    g, u = _gated_inputs(torch.bfloat16)
    halves = op(torch.cat([g, u], -1), *args)
    separate = op(g, *args, up=u)
    interleaved = op(torch.stack([g, u], -1).flatten(-2), *args, interleaved=True)
    for got in (separate, interleaved):
        _assert_same_outputs(halves, got)


@pytest.mark.parametrize("activation,scheme", catalog.PAIRS)
def test_fused_op_equals_the_unfused_pair(activation, scheme):
    entry = catalog.SCHEMES[scheme]
    args = _call_args(entry)
    x = torch.randn(3, 7, 512).mul(2).to(torch.bfloat16)
    fused = getattr(qf, catalog.fused_op_name(activation, scheme))(x, *args)
    pair = getattr(qf, entry.unfused_name)(getattr(qf, activation)(x), *args)
    _assert_same_outputs(fused, pair)


# --- recipes: the reference against independent spellings (tests/recipe_spellings.py) ---------

def _activation_like(dtype):
    torch.manual_seed(2)
    y = torch.randn(6, 256) * torch.logspace(-12, 3, 6)[:, None]
    y[1, :64] = 0  # an all-zero group: the floor decides
    y[2, 5] = 1e5  # saturates without the clamp's help? (e4m3 saturates at the cast too)
    return y.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_every_fp8_recipe_matches_its_spelling(dtype):
    y = _activation_like(dtype)
    count = 0
    for r in fp8_recipes():
        q, s = reference.quantize(y, r)
        q2, s2 = spelled(y, r)
        assert torch.equal(_bits(s), _bits(s2)), r
        assert torch.equal(_bits(q), _bits(q2)), r
        count += 1
    # the generator covers every field value, and every recipe the catalog accepts: apply=mul_ratio
    # with the floor at the amax or none, fp32 steps and no UE8M0; ue8m0_after_floor only with a UE8M0
    bases, ue8m0s = 4, 1 + 2 * (len(catalog.Ue8m0) - 1)  # per token, per tensor, groups of 64 and 128
    ratio = bases * 2 * 2  # floor_at amax / none, clamp or not
    assert count == bases * 3 * 2 * 2 * 2 * ue8m0s + ratio


def test_recipe_override_reaches_the_op_and_round_trips():
    y = _activation_like(torch.bfloat16)
    base = catalog.FP8_PER_GROUP.recipe(64)
    for r in fp8_recipes():
        if r.grouping is not Grouping.PER_GROUP or r.group_size != 64:
            continue
        spec = r.spec(catalog.FP8_PER_GROUP.base)
        assert catalog.FP8_PER_GROUP.base.with_spec(spec) == r
        q, s = qf.per_token_group_quant_fp8(y, 64, recipe=r.spec(base))
        q2, s2 = reference.quantize(y, r)
        assert torch.equal(_bits(q), _bits(q2)) and torch.equal(_bits(s), _bits(s2))


def _mx_spelled(y: torch.Tensor, r: catalog.Recipe):
    """How model code writes an MX recipe (torchao's ``to_mx`` for the exponents from the bits and
    the special blocks; not the reference's frexp)."""
    el = r.element
    yb = y.float().unflatten(-1, (-1, 32))
    amax = yb.abs().amax(-1, keepdim=True)
    bits = amax.view(torch.int32)
    if r.mx_rounding is catalog.MxRounding.RCEIL:
        # a 16-bit amax is never within an fp32 ulp of a power of two (times max) unless it is one
        e = torch.ceil(torch.log2(amax * torch.tensor(1 / el.max))).clamp(-127, 127).to(torch.int32)
    else:
        b = bits + (1 << (22 - el.mant)) if r.mx_rounding is catalog.MxRounding.EVEN else bits
        field = (b >> 23) & 0xFF
        e = field - 127 - el.emax
        if r.mx_rounding is catalog.MxRounding.CEIL:
            e = e + ((bits & 0x7FFFFF) > 0).to(torch.int32)
        e = torch.where(field == 0, -127, e)
    inf = 128 - el.emax if r.mx_inf is catalog.MxInf.BITS else 127
    e = torch.where(torch.isinf(amax), inf, torch.where(amax == 0, -127, e)).clamp(-127, 127)
    byte = torch.where(torch.isnan(amax), 255, e + 127).to(torch.uint8)
    if r.mx_byte0 is catalog.MxByte0.MIN_NORMAL:  # torchao's float scale from the byte, floored
        v = yb / (byte.to(torch.int32) << 23).view(torch.float32).clamp(min=2.0 ** -126)
    elif r.mx_byte0 in catalog.MX_DEVICE_BYTE0:  # the scale as exp2 / pow of the clamped exponent
        v = yb / (torch.exp2(e.float()) if r.mx_byte0 is catalog.MxByte0.EXP2 else 2 ** e.float())
    else:
        one = 1.0 if r.mx_byte0 is catalog.MxByte0.ONE else 2.0 ** 127
        v = yb * torch.where(byte == 0, one, torch.exp2(127 - byte.float()))
    if r.mx_nan is catalog.MxNan.DIV_INF:
        v = torch.where(torch.isnan(amax), yb / float("inf"), v)
    else:
        v = torch.where(torch.isnan(amax), float("nan"), v)
    if el is catalog.E4M3:
        q = v.clamp(-448, 448).to(torch.float8_e4m3fn).flatten(-2)
    else:
        codes = torch.where(torch.isnan(v), 0, reference.e2m1_codes(v)).flatten(-2).to(torch.uint8)
        q = codes[..., ::2] | (codes[..., 1::2] << 4)
    return q, byte.squeeze(-1)


def _mx_recipes():
    """Every combination of the MX recipe fields the catalog defines, for both elements, but the
    ones that would need two device values (Recipe.device_factor)."""
    fields = {f: tuple(kind) for f, kind in catalog.MX_CODE_FIELDS}
    for scheme, values in itertools.product((catalog.MXFP8, catalog.MXFP4), itertools.product(*fields.values())):
        v = dict(zip(fields, values))
        if v["mx_byte0"] in catalog.MX_DEVICE_BYTE0 and v["mx_inf"] in catalog.MX_DEVICE_INF:
            with pytest.raises(ValueError, match="two of the device's values"):
                dataclasses.replace(scheme.base, **v)
            continue
        yield dataclasses.replace(scheme.base, **v)


def test_every_mx_recipe_matches_its_spelling():
    torch.manual_seed(3)
    y = torch.randn(12, 256) * torch.logspace(-6, 6, 12)[:, None]
    y[0, :32] = 0                               # an all-zero block
    y[1, :32] = torch.randn(32) * 1e-39         # tiny (byte 0) blocks, subnormal values
    y[1, 32:64] = 2.0 ** -133
    y[2, 3], y[2, 40] = float("inf"), -float("inf")
    y[3, 7], y[3, 40], y[3, 41] = float("nan"), float("nan"), float("inf")
    y[4, :64] = torch.tensor([2.0 ** k * (1 - 2.0 ** -(m + 2)) for m in (1, 3) for k in range(-16, 16)])
    y[5, :32] = torch.tensor([2.0 ** k for k in range(-16, 16)])
    y = y.to(torch.bfloat16)
    count = 0
    for r in _mx_recipes():
        q, s = reference.quantize(y, r)
        q2, s2 = _mx_spelled(y, r)
        assert torch.equal(s, s2), r
        assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)), r
        count += 1
    # the generator covers every field value
    both = len(catalog.MX_DEVICE_INF) * len(catalog.MX_DEVICE_BYTE0)
    assert count == 2 * 4 * 2 * (len(catalog.MxInf) * len(catalog.MxByte0) - both)


def test_device_byte0_division_codes_as_the_product():
    """MxByte0.EXP2 / POW multiply a byte-0 block by RN(1 / d), d the device's 2^-127, where code
    writes y / d: for every value a 16-bit block with exponent -127 can hold (|y| <= 2^-118: the
    multiples of 2^-133, bf16's subnormal step; fp16's are 0) and every d within 16 ulps of 2^-127
    (CUDA's exp2(-127.) is one ulp below it), RN(y / d) and RN(y * RN(1 / d)) may differ in fp32
    but never in their E4M3 or E2M1 code."""
    k = torch.arange(0, 2 ** 15 + 1, dtype=torch.float64)
    y = (k * 2.0 ** -133).float()
    assert torch.equal(y.double(), k * 2.0 ** -133)
    y = torch.cat([y, -y])
    fp32_differ = 0
    for bits in range((1 << 22) - 16, (1 << 22) + 16):
        d = torch.tensor([bits], dtype=torch.int32).view(torch.float32)
        q_div, q_mul = y / d, y * (1 / d)
        fp32_differ += int((q_div != q_mul).sum())
        for a, b in ((q_div, q_mul), (-q_div, -q_mul)):
            assert torch.equal(a.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8),
                               b.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)), hex(bits)
            assert torch.equal(reference.e2m1_codes(a), reference.e2m1_codes(b)), hex(bits)
    assert fp32_differ > 0  # the fp32 quotients do differ: the codes are what agree


def test_mx_fields_cross_as_one_code():
    """The kernels' MX code (catalog.mx_code) holds every field, and the header's strides decode it."""
    header, c, strides = catalog.cpp_header(), catalog.codes(), catalog.mx_strides()
    seen = set()
    for r in _mx_recipes():
        code = catalog.mx_code(r)
        for field, kind in catalog.MX_CODE_FIELDS:
            assert code // strides[field] % len(kind) == c[f"{field}_{getattr(r, field).value}"]
            assert f"k{field.title().replace('_', '')}Stride = {strides[field]}" in header
        seen.add((r.element, code))
    n = len(catalog.MxRounding) * len(catalog.MxInf) * len(catalog.MxByte0) * len(catalog.MxNan)
    invalid = len(catalog.MxRounding) * len(catalog.MX_DEVICE_INF) * len(catalog.MX_DEVICE_BYTE0) * len(catalog.MxNan)
    assert len(seen) == 2 * (n - invalid) and max(code for _, code in seen) < n and f"kMxCodes = {n}" in header
    # every one is a kernel recipe, reached with recipe= (the recogniser's torchao spellings)
    x = torch.randn(2, 64)
    for r in _mx_recipes():
        scheme = catalog.MXFP8 if r.element is catalog.E4M3 else catalog.MXFP4
        params = (r.mx_rounding.value,)
        spec = r.spec(scheme.recipe(*params))
        p = qplan.make_plan(catalog.OPS[scheme.unfused_name], x, params, recipe=spec)
        assert p.recipe == r and p.kernel_reason() is None, spec


def test_static_fp8_is_eager_division_by_the_given_scale():
    y = _activation_like(torch.bfloat16)
    scale = torch.tensor([0.0371])
    q = qf.static_scaled_fp8_quant(y, scale)
    eager = (y.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(q.view(torch.uint8), eager.view(torch.uint8))
    g, u = _gated_inputs(torch.bfloat16)
    fused = qf.silu_and_mul_quant(g, scale, up=u)
    eager = ((F.silu(g) * u).float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(fused.view(torch.uint8), eager.view(torch.uint8))


@pytest.mark.parametrize("call,error,message", [
    (lambda: qf.static_scaled_fp8_quant(torch.randn(2, 8), torch.tensor([1.0, 2.0])), ValueError,
     "scale must be one float32 element"),
    (lambda: qf.static_scaled_fp8_quant(torch.randn(2, 8), torch.tensor([1.0], dtype=torch.float16)), ValueError,
     "scale must be one float32 element"),
    (lambda: qf.silu_and_mul(torch.randn(2, 8), torch.randn(2, 4)), ValueError, "up has shape"),
    (lambda: qf.silu_and_mul(torch.randn(2, 8), torch.randn(2, 8, dtype=torch.float16)), TypeError,
     "up has dtype"),
    (lambda: qf.silu_and_mul(torch.randn(2, 8), torch.randn(2, 8), interleaved=True), ValueError,
     "exclude each other"),
    (lambda: qf.silu_and_mul(torch.randn(2, 7), interleaved=True), ValueError, "interleaved gate/up pairs"),
    (lambda: qf.per_token_group_quant_fp8(torch.randn(2, 128), 64, recipe="floor_at=nowhere"), ValueError,
     "bad value 'nowhere' for recipe field floor_at"),
    (lambda: qf.per_token_group_quant_fp8(torch.randn(2, 128), 64, recipe="colour=red"), ValueError,
     "bad recipe field"),
    (lambda: qf.mxfp8_quant(torch.randn(2, 64), "nearest"), ValueError, "scale_rounding must be one of"),
])
def test_bad_calls_name_the_problem(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_kernel_reason_names_the_recipe_field():
    """Every dynamic FP8 recipe field value is a kernel recipe (catalog Scheme.kernel_fields), for
    per-group and per-token alike; the static scheme takes the apply form and the clamp; what no
    kernel computes (another group size, a floor on MX, a NaN eps) gets its reason."""
    x = torch.randn(2, 256)
    entry = catalog.OPS["per_token_group_quant_fp8"]
    assert qplan.make_plan(entry, x, (128, True, True)).kernel_reason() is None
    for r in fp8_recipes():
        scheme, params = scheme_of(r)
        plan = qplan.make_plan(catalog.OPS[scheme.unfused_name], x, params, recipe=r.spec(scheme.recipe(*params)))
        assert plan.recipe == r and plan.kernel_reason() is None, r
    # a NaN eps differs from itself: no kernel floors with it
    assert qplan.make_plan(entry, x, (128,), recipe="eps=nan").kernel_reason() == \
        "recipe eps=nan is not a kernel recipe"
    assert "group_size=32 is not one the kernels implement" in qplan.make_plan(entry, x, (32,)).kernel_reason()
    mx = qplan.make_plan(catalog.OPS["mxfp4_quant"], x, ("floor", True))
    assert mx.kernel_reason() is None and mx.scale_shape() == (128, 8)
    assert qplan.make_plan(catalog.OPS["mxfp8_quant"], x, recipe="floor_at=scale").kernel_reason() == \
        "recipe floor_at=scale is not a kernel recipe"
    static = catalog.OPS["static_scaled_fp8_quant"]
    one = torch.ones(1)
    assert qplan.make_plan(static, x, scale=one, recipe="apply=mul_inv,clamp=False").kernel_reason() is None
    assert qplan.make_plan(static, x, scale=one, recipe="floor_at=scale").kernel_reason() == \
        "recipe floor_at=scale is not a kernel recipe"


def test_backend_arguments_carry_the_recipe():
    """What each backend is given for a recipe: the CUDA extension's codes and floors, the Triton
    kernels' constexprs (catalog codes, fp32 bits of CallPlan.fp8_floors)."""
    import struct

    from quantfuse.custom_ops import cuda_backend, triton_schemes

    codes = catalog.codes()
    x = torch.randn(2, 256).bfloat16()
    entry = catalog.OPS["per_token_group_quant_fp8"]

    def plan(spec, params=(128,), e=entry):
        return qplan.make_plan(e, x, params, recipe=spec)

    default = plan("")
    assert default.fp8_floors == (float(torch.tensor(1e-10)), 0.0, 0.0)
    assert cuda_backend._recipe_args(default) == dict(scale_floors=list(default.fp8_floors),
                                                      step=codes["step_fp32"], apply=codes["apply_div"],
                                                      mx_device_factor=0.0)
    # torchao's per-row recipe: no floor, the scale in bf16
    torchao = plan("floor_at=none,step_dtype=input", (), catalog.OPS["per_token_quant_fp8"])
    assert torchao.fp8_floors == (0.0, 0.0, 0.0)
    assert cuda_backend._recipe_args(torchao)["step"] == codes["step_input"]
    # an amax floored in bf16: the eps as bf16 stores it (1e-4 -> 0.00010013580322265625)
    amax16 = plan("eps=0.0001,step_dtype=input")
    assert amax16.fp8_floors == (float(torch.tensor(1e-4).bfloat16()), 0.0, 0.0) != (float(torch.tensor(1e-4)), 0, 0)
    # vLLM's floor at the scale, before or after the power-of-two rounding
    eps6 = float(torch.tensor(1e-6))
    assert plan("floor_at=scale,eps=1e-06,ue8m0=exp2").fp8_floors == (0.0, eps6, 0.0)
    assert plan("floor_at=scale,eps=1e-06,ue8m0=exp2,ue8m0_after_floor=False").fp8_floors == (0.0, 0.0, eps6)
    mul = plan("apply=mul_inv,clamp=False")
    assert cuda_backend._recipe_args(mul)["apply"] == codes["apply_mul_inv"]
    consts = triton_schemes._recipe_consts(plan("floor_at=scale,eps=1e-06,ue8m0=exp2,step_dtype=input"))
    assert consts == dict(AMAX_FLOOR=0, SCALE_FLOOR=struct.unpack("<i", struct.pack("<f", 1e-6))[0], POW2_FLOOR=0,
                          STEP_INPUT=True, UE8M0=codes["ue8m0_exp2"], MUL_INV=False, RATIO=False, CLAMP=True,
                          CAREFUL=False)
    ratio = plan("eps=0.0001,apply=mul_ratio")
    assert cuda_backend._recipe_args(ratio)["apply"] == codes["apply_mul_ratio"]
    assert triton_schemes._recipe_consts(ratio)["RATIO"] and not triton_schemes._recipe_consts(ratio)["MUL_INV"]
    # CAREFUL where a scale can leave [2^-64, 2^126]: no floor, or a tiny one
    assert triton_schemes._recipe_consts(torchao)["CAREFUL"] and not triton_schemes._recipe_consts(default)["CAREFUL"]
    assert triton_schemes._recipe_consts(plan("eps=1e-30"))["CAREFUL"]
    # without the clamp the kernels clamp anyway where torch's cast saturates (torch >= 2.12)
    assert mul.clamps is catalog.E4M3_CAST_SATURATES
    assert triton_schemes._recipe_consts(mul)["CLAMP"] is catalog.E4M3_CAST_SATURATES


# --- each fact once -------------------------------------------------------------------------

def test_cpp_header_carries_every_code():
    header = catalog.cpp_header()
    for name, code in catalog.codes().items():
        kind = name.split("_")[0]
        assert f"= {code}," in header, name
        assert kind in ("act", "scheme", "layout", "element", "ue8m0", "step", "apply", "mx")
    for s in catalog.KERNEL_SCHEMES:
        assert f"  {s.cname} = {catalog.codes()['scheme_' + s.key]}," in header


#: spellings of facts that belong to the catalog, and the files allowed to hold them
_RESTATED = [
    (re.compile(r"\b(?:act|ACT|scheme|SCHEME|layout|LAYOUT)\s*(?:(?:==|!=)\s*\d|(?:>=|<=|>|<)\s*[1-9])"),
     "a bare activation / scheme / layout code"),
    (re.compile(r"enum\s+Scheme\b"), "the scheme enum (generated from catalog.cpp_header)"),
    (re.compile(r"kActNames\s*\[\]\s*="), "activation names (generated)"),
    (re.compile(r"\b448\.0f?\b"), "the E4M3 maximum"),
    (re.compile(r"\b1e-10f?\b"), "the default floor"),
]
#: plain-PyTorch spellings (what users write: their literals are the point) and the catalog
_ALLOWED = {"quantfuse/catalog.py", "quantfuse/patterns/native.py", "quantfuse/patterns/site.py"}


def test_no_catalog_fact_is_restated_in_the_package_or_the_kernels():
    files = [p for p in (ROOT / "quantfuse").rglob("*.py")] + [p for p in (ROOT / "csrc").iterdir()
                                                               if p.suffix in (".h", ".cuh", ".cpp", ".cu")]
    found = []
    for path in files:
        rel = str(path.relative_to(ROOT))
        if rel in _ALLOWED:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//")[0].split("#")[0]
            for pattern, what in _RESTATED:
                if pattern.search(code):
                    found.append(f"{rel}:{i}: {what}: {line.strip()}")
    assert found == []
