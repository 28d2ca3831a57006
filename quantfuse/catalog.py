"""The catalog: every activation, gated input layout, quantisation recipe and op entry, once.

Everything else is derived from these frozen tables:

* the ``torch.library`` ops, their schemas and fake impls (:mod:`quantfuse.custom_ops.ops`);
* the call plan every op builds and checks once (:mod:`quantfuse.custom_ops.plan`);
* the C++ header the CUDA build generates (:func:`cpp_header`: enums, traits, names);
* the Triton kernels' ``constexpr`` codes (:func:`codes`);
* the patterns, the tests' parameter lists and the benchmarks' cells.

Vocabulary (``docs/catalog.md`` has the long form):

* :class:`Activation`: what turns the GEMM output into ``y`` (``silu_and_mul``: gated
  ``silu(gate) * up``; ``relu2``: ``relu(x) ** 2``), with the roundings eager PyTorch
  performs for its usual spelling (:class:`ActRounding`).
* :class:`Layout`: where a gated activation finds gate and up: the two halves of one
  tensor, two tensors, or interleaved columns.
* :class:`Recipe`: a quantisation as data: element format, grouping, and the exact
  numerics of each step as real code writes them (where the floor is, which dtype the
  scale is computed in, how it is applied, clamp or not, UE8M0 form, MX rounding, scale
  layout). Two recipes are equal exactly when they compute the same bits.
* :class:`Scheme`: a family of recipes with one op signature (FP8 per-token-group,
  FP8 per-token, FP8 static per-tensor, MXFP8, MXFP4): the op names users know, the
  op parameters, and how each parameter sets a recipe field.
* :class:`OpEntry`: one ``torch.ops.quantfuse`` op: an activation alone, a scheme alone,
  or a fused pair.

This module imports nothing else of quantfuse: it is the ground floor.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
from typing import Callable

import torch

NAMESPACE = "quantfuse"


# --- element formats ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Element:
    """An encoded element format."""

    name: str
    #: bits of one encoded element
    bits: int
    #: largest finite magnitude
    max: float
    #: exponent of the largest binade (OCP MX ``emax_elem``)
    emax: int
    #: dtype of the encoded output (packed formats: uint8, two elements a byte)
    dtype: torch.dtype
    #: C++ enumerator
    cname: str
    #: mantissa bits
    mant: int

    @property
    def overflow(self) -> float:
        """Half a step past the largest value: a larger magnitude rounds past ``max``, which a cast
        that does not saturate turns into NaN (E4M3 has no inf; :data:`E4M3_CAST_SATURATES`)."""
        return self.max + 2.0 ** (self.emax - self.mant) / 2


E4M3 = Element("e4m3", 8, 448.0, 8, torch.float8_e4m3fn, "kE4m3", mant=3)
E2M1 = Element("e2m1", 4, 6.0, 2, torch.uint8, "kE2m1", mant=1)
ELEMENTS = (E4M3, E2M1)
#: torch's cast to E4M3 saturates a finite overflow or inf to +-448 (torch >= 2.12, on the CPU and
#: CUDA alike: pytorch#178817); before, every magnitude past E4M3.overflow, inf included, became
#: NaN. Without the clamp, a recipe computes what the running torch's cast gives (CallPlan.clamps).
E4M3_CAST_SATURATES = float(torch.tensor([float("inf")]).to(E4M3.dtype).float()) == E4M3.max

#: MX block size (OCP Microscaling: 32 elements share one E8M0 scale)
MX_BLOCK = 32
E8M0_BIAS = 127
E8M0_NAN = 0xFF
#: FP8 per-token-group sizes the kernels take
FP8_GROUP_SIZES = (64, 128)
#: the 128x4 tiled scale layout's tile: rows (tokens) and columns (groups)
SWIZZLE_ROWS, SWIZZLE_COLS = 128, 4
#: input dtypes every op accepts
INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# --- recipe fields -------------------------------------------------------------------------

class Grouping(enum.Enum):
    """Which elements share one scale."""

    PER_TOKEN = "per_token"
    PER_GROUP = "per_group"  # groups of ``Recipe.group_size`` along the last dim
    MX_BLOCK = "mx_block"    # blocks of 32 with an E8M0 scale
    PER_TENSOR = "per_tensor"


class FloorAt(enum.Enum):
    """Where the floor that keeps the scale away from 0 is applied."""

    AMAX = "amax"    # max(amax, eps) / qmax (vLLM, the default)
    SCALE = "scale"  # max(amax / qmax, eps)
    NONE = "none"    # no floor: an all-zero group divides 0 by 0 (NaN), as written


class StepDtype(enum.Enum):
    """The dtype the amax -> scale steps run in."""

    FP32 = "fp32"    # the input cast to fp32 first
    #: the amax, its floor (FloorAt.AMAX) and amax / qmax in the 16-bit input dtype, then cast
    #: to fp32 (torchao); a scale floor and the UE8M0 rounding follow in fp32
    INPUT = "input"


class ApplyForm(enum.Enum):
    """How ``y`` is scaled before the cast."""

    DIV = "div"          # y / s
    MUL_INV = "mul_inv"  # y * (1 / s), equally y * s.reciprocal() (both RN(1/s) in fp32)
    #: y * (qmax / a), a the floored fp32 amax, which torch computes as a.reciprocal() * qmax:
    #: RN(RN(1 / a) * qmax), no function of the stored scale a / qmax (DeepGEMM's first
    #: per_token_cast_to_fp8). Needs the floor at the amax or none, fp32 steps and no UE8M0.
    MUL_RATIO = "mul_ratio"


class Ue8m0(enum.Enum):
    """Power-of-two FP8 scales (DeepGEMM's UE8M0 path)."""

    NONE = "none"
    EXACT = "exact"          # the smallest power of two >= s, from the bits
    #: torch.exp2(torch.ceil(torch.log2(s))), as vLLM writes it; also torch.pow(2.0, ...) / 2 ** ...
    #: (SGLang, DeepGEMM): the same powers of two for integer exponents (a NaN group's NaN aside,
    #: whose sign is the hardware's: docs/numerics.md)
    EXP2_CEIL_LOG2 = "exp2"


class MxRounding(enum.Enum):
    """Shared-exponent rounding of MX scales (torchao's ``ScaleCalculationMode`` names them all)."""

    FLOOR = "floor"  # OCP: 2^(floor(log2 amax) - emax_elem)
    RCEIL = "rceil"  # NVIDIA: 2^ceil(log2(amax * fp32(1/max_elem)))
    CEIL = "ceil"    # 2^(ceil(log2 amax) - emax_elem)
    #: 2^(floor(log2 amax') - emax_elem), amax' the amax rounded half up to the element's
    #: mantissa bits (torchao: ``(bits + 2^(22 - mbits)) & exponent mask``), so that it never saturates
    EVEN = "even"


#: the MX roundings whose scaled values can exceed the element's largest value (the kernels'
#: E2M1 paths saturate first): floor leaves |y / 2^e| below 2^(emax + 1), even below
#: 2^emax * (2 - 2^-(mbits + 1)), which E2M1 (one mantissa bit) rounds past 6
MX_SATURATING = (MxRounding.FLOOR, MxRounding.EVEN)


class MxInf(enum.Enum):
    """The exponent of an MX block whose amax is inf (and no NaN)."""

    CLAMP = "clamp"  # 127: eager's clamp of log2(inf), as a torch spelling computes it
    #: 128 - emax_elem: the float's exponent field of inf (255) read as 2^128, as a scale
    #: computed from the amax's bits has it (torchao's to_mx FLOOR / CEIL / EVEN)
    BITS = "bits"
    #: 127, the elements multiplied by the device's own ``exp2(-127.)``: torchao's to_mx RCEIL
    #: (``exp2(127 - byte)`` of byte 254), 2^-127 on the CPU (so CLAMP's bits there), one ulp
    #: below it on CUDA
    EXP2 = "exp2"


class MxByte0(enum.Enum):
    """What the elements of an MX block with scale byte 0 (exponent -127: an all-zero or tiny
    block) are multiplied by."""

    EXACT = "exact"            # 2^127, the byte's value
    #: 2^126: divided by float32's smallest normal, the floor torchao's to_mx FLOOR / CEIL / EVEN
    #: puts on the float scale (``clamp(scale, min=2^-126)``)
    MIN_NORMAL = "min_normal"
    ONE = "one"                # 1: torchao's RCEIL (``where(byte == 0, 1.0, exp2(127 - byte))``)
    #: RN(1 / d), d the device's own ``exp2(-127.)``, as ``y / torch.exp2(clamp(e, -127, 127))``
    #: spells the scale: 2^-127 on the CPU (so EXACT's bits there), not 2^-127 on CUDA. ``y / d``
    #: and ``y * (1 / d)`` give the same codes for every 16-bit block (tests/test_catalog.py)
    EXP2 = "exp2"
    #: the same with the device's ``pow(2., -127.)`` (``2 ** e``, ``torch.pow(2, e)``)
    POW = "pow"


#: the MxByte0 values computed by the device's libm at run time: a site's spelling of its divisor,
#: not a value a scale's bits give (the recogniser reads them from ``exp2`` / ``pow`` nodes only)
MX_DEVICE_BYTE0 = (MxByte0.EXP2, MxByte0.POW)
#: the MxInf values whose multiplier the device's libm computes at run time
MX_DEVICE_INF = (MxInf.EXP2,)


class MxNan(enum.Enum):
    """The elements of an MX block holding NaN (its scale byte is 0xFF either way)."""

    NAN = "nan"  # every element NaN (MXFP8); MXFP4 codes 0
    #: the elements divided by the byte 0xFF read as a float exponent, inf (torchao's to_mx
    #: FLOOR / CEIL / EVEN): finite -> +-0, inf and NaN -> NaN (MXFP4: code 0, E2M1 has no NaN)
    DIV_INF = "div_inf"


class ScaleLayout(enum.Enum):
    """Memory layout of the scales."""

    ROW_MAJOR = "row_major"        # [..., G] contiguous
    COLUMN_MAJOR = "column_major"  # a [..., G] view of [G, ...] storage (TMA-fed GEMMs)
    SWIZZLED = "swizzled_128x4"    # MX: the padded 128x4 tiled layout of block-scaled GEMMs


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A quantisation, as data: two recipes are equal exactly when they compute the same bits.

    ``amax / qmax`` and ``amax * (1 / qmax)`` are one recipe on CUDA: torch divides a tensor
    by a Python scalar as a multiply by the fp32 reciprocal (eager and Inductor alike), which
    the kernels compute. On the CPU eager divides, and so does the torch reference
    (``reference.div_scalar``), so a CPU site equals CPU eager bit for bit.

    The defaults are the contract of the fused kernels (``docs/numerics.md``); every other
    value is a spelling real code writes, honoured bit for bit by the torch reference and
    by each backend whose ``supports`` says so.
    """

    element: Element
    grouping: Grouping
    #: elements per scale for PER_GROUP (64 / 128) and MX_BLOCK (32); 0 otherwise
    group_size: int = 0
    floor_at: FloorAt = FloorAt.AMAX
    eps: float = 1e-10
    step_dtype: StepDtype = StepDtype.FP32
    apply: ApplyForm = ApplyForm.DIV
    #: clamp to [-max, max] before the cast (absent: the cast saturates only where it would anyway)
    clamp: bool = True
    ue8m0: Ue8m0 = Ue8m0.NONE
    #: UE8M0 rounding after the floor (vLLM) or before it
    ue8m0_after_floor: bool = True
    mx_rounding: MxRounding = MxRounding.RCEIL
    #: MX blocks of special values: an inf block's exponent, a byte-0 block's multiplier,
    #: a NaN block's elements (the defaults: the exponent rules' own values)
    mx_inf: MxInf = MxInf.CLAMP
    mx_byte0: MxByte0 = MxByte0.EXACT
    mx_nan: MxNan = MxNan.NAN
    scale_layout: ScaleLayout = ScaleLayout.ROW_MAJOR
    #: the scale is an input tensor (static per-tensor FP8: vLLM's static checkpoints)
    static: bool = False

    def __hash__(self) -> int:
        # cached: a recipe keys the per-call caches (plans, backend choices, launch closures),
        # and hashing its enum fields anew each call costs microseconds of host time
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", h)
        return h

    def __post_init__(self):
        if self.grouping is Grouping.PER_GROUP and self.group_size <= 0:
            raise ValueError(f"a per-group recipe needs a positive group size, got {self.group_size}")
        if self.grouping is Grouping.MX_BLOCK and self.group_size != MX_BLOCK:
            raise ValueError(f"MX recipes use blocks of {MX_BLOCK}, got {self.group_size}")
        if self.scale_layout is ScaleLayout.SWIZZLED and self.grouping is not Grouping.MX_BLOCK:
            raise ValueError("the swizzled 128x4 scale layout is for MX recipes only")
        if self.static and self.grouping is not Grouping.PER_TENSOR:
            raise ValueError("static scales are per tensor")
        if self.apply is ApplyForm.MUL_RATIO and (self.static or self.mx or self.floor_at is FloorAt.SCALE
                                                  or self.step_dtype is not StepDtype.FP32
                                                  or self.ue8m0 is not Ue8m0.NONE):
            raise ValueError("apply=mul_ratio (y * (qmax / amax)) takes a dynamic FP8 scale with the floor at the "
                             "amax or none, fp32 steps and no UE8M0")
        if self.mx_byte0 in MX_DEVICE_BYTE0 and self.mx_inf in MX_DEVICE_INF:
            raise ValueError(f"mx_byte0={self.mx_byte0.value} and mx_inf={self.mx_inf.value} would need two of the "
                             "device's values (the kernels take one: Recipe.device_factor)")

    @property
    def device_factor(self) -> "MxByte0 | MxInf | None":
        """The recipe field whose multiplier is the device's own libm value (one of
        :data:`MX_DEVICE_BYTE0` / :data:`MX_DEVICE_INF`), read from torch on the device the call
        runs on (``reference.device_factor``), or None. At most one per recipe."""
        if self.mx_byte0 in MX_DEVICE_BYTE0:
            return self.mx_byte0
        if self.mx_inf in MX_DEVICE_INF:
            return self.mx_inf
        return None

    @property
    def mx(self) -> bool:
        """An OCP microscaling recipe (E8M0 scale bytes)."""
        return self.grouping is Grouping.MX_BLOCK

    @property
    def scale_dtype(self) -> torch.dtype:
        """dtype of the stored scales."""
        return torch.uint8 if self.mx else torch.float32

    def groups(self, hidden: int) -> int:
        """Scales per token for a row of ``hidden`` elements."""
        if self.grouping in (Grouping.PER_TOKEN, Grouping.PER_TENSOR):
            return 1
        return hidden // self.group_size

    def q_width(self, hidden: int) -> int:
        """Last dim of the encoded output (packed formats hold two elements a byte)."""
        return hidden * self.element.bits // 8

    def spec(self, base: "Recipe") -> str:
        """The fields that differ from ``base`` as ``name=value,...``: the ops' ``recipe`` argument."""
        parts = []
        for name, (_, value) in base.differences(self).items():
            if name == "element":
                raise ValueError("a recipe override cannot change the element format (another scheme)")
            parts.append(f"{name}={value.value}" if isinstance(value, enum.Enum) else f"{name}={value!r}")
        return ",".join(parts)

    def with_spec(self, spec: str) -> "Recipe":
        """This recipe with the fields of a :meth:`spec` string; ValueError names a bad field."""
        if not spec:
            return self
        fields = {f.name: f for f in dataclasses.fields(self)}
        values = {}
        for part in spec.split(","):
            name, sep, text = part.partition("=")
            if not sep or name not in fields or name == "element":
                raise ValueError(f"bad recipe field {part!r}; fields: {sorted(set(fields) - {'element'})}")
            current = getattr(self, name)
            try:
                if isinstance(current, enum.Enum):
                    values[name] = type(current)(text)
                elif isinstance(current, bool):
                    values[name] = {"True": True, "False": False}[text]
                else:
                    values[name] = type(current)(text)
            except (KeyError, ValueError):
                raise ValueError(f"bad value {text!r} for recipe field {name}") from None
        return dataclasses.replace(self, **values)

    def differences(self, other: "Recipe") -> dict[str, tuple]:
        """Fields where ``other`` differs: name -> (this value, other value) (near-miss reasons)."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name)}


# --- activations and layouts ---------------------------------------------------------------

class ActRounding(enum.Enum):
    """Which intermediate values of a gated activation are rounded to the 16-bit input dtype.

    Eager PyTorch rounds every op's output; Inductor keeps intermediates in fp32 and
    rounds once. The fused op reproduces eager for the spelling it replaces.
    """

    ONCE = "once"                    # act(a, b) in fp32, one rounding (Inductor, vLLM's fused CUDA kernels)
    SILU_THEN_MUL = "silu_then_mul"  # F.silu(a) * b: silu rounded, then the product (two roundings)
    #: every torch op of the spelling rounded (GPT-OSS's clamped SwiGLU as transformers writes
    #: it: both clamps, gate * alpha, sigmoid, gate * sigmoid, up + 1 and the product)
    EACH_OP = "each_op"


@dataclasses.dataclass(frozen=True)
class Param:
    """A float parameter of an activation (GPT-OSS's alpha and clamp limit): a keyword
    ``float`` argument of the activation's ops, part of every call's plan."""

    name: str
    default: float
    doc: str
    #: the value must be > 0 (a clamp limit: ``clamp(-limit, limit)`` needs ``-limit <= limit``)
    positive: bool = False

    @property
    def schema(self) -> str:
        """``float name=default`` as torch prints it (an integral float as ``7.``, not ``7.0``)."""
        text = repr(float(self.default))
        return f"float {self.name}={text[:-1] if text.endswith('.0') else text}"

    def check(self, value) -> float:
        """``value`` as a float; ValueError names a value outside the parameter's domain."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.name} must be a float, got {type(value).__name__}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{self.name} must be finite, got {value}")
        if self.positive and value <= 0:
            raise ValueError(f"{self.name} must be positive, got {value}")
        return value


@dataclasses.dataclass(frozen=True)
class Activation:
    """An activation: ``[..., in_width]`` -> ``[..., out_width]`` in the input dtype."""

    name: str
    #: C++ struct of the kernels (csrc/act_quant.cuh) and enumerator suffix
    cname: str
    gated: bool
    doc: str
    params: tuple[Param, ...] = ()
    #: the roundings of every op and kernel: eager's for the spelling users write most
    #: (``F.silu(a) * b``); a native site that rounds otherwise is reported (issue: the recogniser)
    rounding: ActRounding = ActRounding.ONCE
    #: the CUDA kernels implement it (a struct ``cname`` in csrc/act_quant.cuh and its units);
    #: an activation without one runs on Triton or the torch reference
    cuda: bool = True

    @property
    def defaults(self) -> dict[str, float]:
        """Parameter name -> default value."""
        return {p.name: p.default for p in self.params}

    def out_width(self, in_width: int) -> int:
        """Output last dim for one input of ``in_width`` (gated, halves layout: half of it)."""
        if self.gated:
            if in_width % 2:
                raise ValueError(f"last dim {in_width} must be even ([gate | up] halves)")
            return in_width // 2
        return in_width


class Layout(enum.Enum):
    """Where a gated activation reads gate and up (kernels read each without a copy)."""

    HALVES = "halves"            # x[..., :d] and x[..., d:] of one tensor (vLLM's silu_and_mul)
    SEPARATE = "separate"        # two tensors: gate_proj(x) and up_proj(x) (transformers' LlamaMLP)
    INTERLEAVED = "interleaved"  # x[..., ::2] and x[..., 1::2] (GPT-OSS)


SILU_AND_MUL = Activation(
    name="silu_and_mul", cname="SiluMul", gated=True,
    doc="silu(gate) * up; the op form rounds as eager's F.silu(gate) * up on 16-bit inputs: "
        "silu rounded to the input dtype, then the product",
    rounding=ActRounding.SILU_THEN_MUL,
)
RELU2 = Activation(
    name="relu2", cname="Relu2", gated=False,
    doc="relu(x) ** 2 (squared ReLU, non-gated): the square of a 16-bit value rounded once, as eager",
)
SWIGLUOAI_AND_MUL = Activation(
    name="swigluoai_and_mul", cname="SwigluOai", gated=True,
    doc="GPT-OSS's clamped SwiGLU (vLLM's swigluoai_and_mul): gate = clamp(gate, max=limit), "
        "up = clamp(up, -limit, limit), (up + 1) * (gate * sigmoid(gate * alpha)); rounds as eager "
        "on 16-bit inputs (every op of transformers' GptOssExperts._apply_gate). GPT-OSS interleaves "
        "gate and up (x[..., ::2], x[..., 1::2]): its callers pass interleaved=True, as the layout "
        "is a property of the GEMM's weights, not of the activation",
    params=(Param("alpha", 1.702, "the sigmoid's slope: gate * sigmoid(gate * alpha)"),
            Param("limit", 7.0, "the clamp: gate <= limit, -limit <= up <= limit", positive=True)),
    rounding=ActRounding.EACH_OP,
)
#: the identity: the unfused quant ops (no activation op of its own)
IDENTITY = Activation(name="identity", cname="Identity", gated=False, doc="no activation")

ACTIVATIONS = {a.name: a for a in (SILU_AND_MUL, RELU2, SWIGLUOAI_AND_MUL)}


# --- schemes: op signatures over recipes -----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OpParam:
    """A parameter of a quant op, in torch schema syntax, and the recipe field it sets."""

    schema: str  # e.g. "int group_size" or "bool use_ue8m0=False"
    #: recipe field it sets and how: value -> field value
    field: str | None = None
    convert: Callable[[object], object] | None = None
    #: a value that differs from the default (traced op-form patterns need each arity)
    example: object = None
    #: the values the kernels implement (bools: both)
    kernel_values: tuple = (False, True)

    @property
    def name(self) -> str:
        return self.schema.split("=")[0].split()[-1]

    @property
    def has_default(self) -> bool:
        return "=" in self.schema


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A family of recipes with one op signature."""

    key: str
    #: C++ enumerator (csrc: ``Scheme::<cname>``)
    cname: str
    #: the unfused op (vLLM's name)
    unfused_name: str
    #: fused op name: ``{activation}_{fused_suffix}``
    fused_suffix: str
    #: the recipe with every op parameter at its default (required ones: the example's value)
    base: Recipe
    params: tuple[OpParam, ...]
    #: tensor inputs after ``x`` (static per-tensor: the scale)
    tensor_inputs: tuple[str, ...]
    doc: str
    #: the experts variant's op (vLLM's name; fused: ``{activation}_{experts_name}``), for MX
    #: schemes: tokens sorted by expert, scales swizzled per expert (:data:`EXPERTS_TENSORS`)
    experts_name: str | None = None
    #: recipe fields no op parameter sets that every kernel computes for any value (reached
    #: with ``recipe=``, as the recogniser writes them; a NaN eps is not a kernel recipe)
    kernel_fields: tuple[str, ...] = ()

    @property
    def returns_scale(self) -> bool:
        """Dynamic schemes return ``(q, s)``; a static scheme returns ``q`` (its scale is an input)."""
        return not self.base.static

    @property
    def required_params(self) -> int:
        return sum(not p.has_default for p in self.params)

    @property
    def example_params(self) -> tuple:
        return tuple(p.example for p in self.params)

    def recipe(self, *args, **kwargs) -> Recipe:
        """The recipe of one call from the op's (non-tensor) parameters; ValueError names a bad one."""
        values = dict(zip((p.name for p in self.params), args))
        values.update(kwargs)
        fields = {}
        for p in self.params:
            if p.name not in values:
                if not p.has_default:
                    raise ValueError(f"missing parameter {p.name}")
                continue
            if p.field is not None:
                fields[p.field] = p.convert(values[p.name]) if p.convert else values[p.name]
        return dataclasses.replace(self.base, **fields)


def _rounding(value) -> MxRounding:
    try:
        return MxRounding(value)
    except ValueError:
        raise ValueError(f"scale_rounding must be one of {[r.value for r in MxRounding]}, got {value!r}") from None


def _group_size(value) -> int:
    value = int(value)
    if value <= 0:
        raise ValueError(f"group_size must be positive, got {value}")
    return value


_COLUMN = OpParam("bool column_major_scales=False", "scale_layout",
                  lambda v: ScaleLayout.COLUMN_MAJOR if v else ScaleLayout.ROW_MAJOR, True)
_UE8M0 = OpParam("bool use_ue8m0=False", "ue8m0", lambda v: Ue8m0.EXACT if v else Ue8m0.NONE, True)
#: the dynamic FP8 recipe fields the kernels compute for every value: where the floor is and its
#: eps, the step dtype, the apply form, the clamp, the UE8M0 form and its order with the floor
#: (``use_ue8m0`` sets the exact form; ``recipe="ue8m0=exp2"`` torch's spelling)
_FP8_KERNEL_FIELDS = ("floor_at", "eps", "step_dtype", "apply", "clamp", "ue8m0", "ue8m0_after_floor")
_MX_PARAMS = (OpParam('str scale_rounding="rceil"', "mx_rounding", _rounding, "floor",
                      tuple(r.value for r in MxRounding)),
              OpParam("bool is_sf_swizzled_layout=False", "scale_layout",
                      lambda v: ScaleLayout.SWIZZLED if v else ScaleLayout.ROW_MAJOR, True))

#: the MX recipe fields of special blocks (inf, byte 0, NaN), and every MX field that crosses
#: into the kernels as one code (:func:`mx_code`), in packing order
MX_SPECIAL_FIELDS = ("mx_inf", "mx_byte0", "mx_nan")
MX_CODE_FIELDS = (("mx_rounding", MxRounding), ("mx_inf", MxInf), ("mx_byte0", MxByte0), ("mx_nan", MxNan))

FP8_PER_GROUP = Scheme(
    key="fp8_per_group", cname="kPerGroup", unfused_name="per_token_group_quant_fp8",
    fused_suffix="per_block_quant",
    base=Recipe(E4M3, Grouping.PER_GROUP, group_size=128),
    params=(OpParam("int group_size", "group_size", _group_size, 128, FP8_GROUP_SIZES), _COLUMN, _UE8M0),
    tensor_inputs=(),
    doc="dynamic FP8 E4M3 per-token-group quantisation -> (q, fp32 scales [..., H/group])",
    kernel_fields=_FP8_KERNEL_FIELDS,
)
FP8_PER_TOKEN = Scheme(
    key="fp8_per_token", cname="kPerToken", unfused_name="per_token_quant_fp8",
    fused_suffix="per_token_quant_fp8",
    base=Recipe(E4M3, Grouping.PER_TOKEN), params=(), tensor_inputs=(),
    doc="dynamic FP8 E4M3 per-token quantisation -> (q, fp32 scales [..., 1])",
    kernel_fields=_FP8_KERNEL_FIELDS,
)
FP8_STATIC = Scheme(
    key="fp8_static", cname="kStatic", unfused_name="static_scaled_fp8_quant", fused_suffix="quant",
    base=Recipe(E4M3, Grouping.PER_TENSOR, static=True), params=(), tensor_inputs=("scale",),
    doc="static FP8 E4M3 per-tensor quantisation with a given fp32 scale (one element) -> q "
        "(vLLM's static_scaled_fp8_quant; the fused op is vLLM's silu_and_mul_quant)",
    kernel_fields=("apply", "clamp"),  # the scale is given: no floor, step or UE8M0
)
FP8_PER_TENSOR = Scheme(
    key="fp8_per_tensor", cname="kPerTensor", unfused_name="dynamic_scaled_fp8_quant",
    fused_suffix="per_tensor_quant_fp8",
    base=Recipe(E4M3, Grouping.PER_TENSOR), params=(), tensor_inputs=(),
    doc="dynamic FP8 E4M3 per-tensor quantisation: one fp32 scale from the amax of the whole tensor "
        "-> (q, fp32 scale [1]) (vLLM's dynamic_scaled_fp8_quant / scaled_fp8_quant without a scale; "
        "torchao's default float8 activation granularity, PerTensor)",
    kernel_fields=_FP8_KERNEL_FIELDS,
)
MXFP8 = Scheme(
    key="mxfp8", cname="kMxfp8", unfused_name="mxfp8_quant", fused_suffix="mxfp8_quant",
    base=Recipe(E4M3, Grouping.MX_BLOCK, group_size=MX_BLOCK), params=_MX_PARAMS, tensor_inputs=(),
    doc="OCP MXFP8 (E4M3, block 32, E8M0 scale bytes) -> (q, uint8 scales [..., H/32])",
    experts_name="mxfp8_experts_quant", kernel_fields=MX_SPECIAL_FIELDS,
)
MXFP4 = Scheme(
    key="mxfp4", cname="kMxfp4", unfused_name="mxfp4_quant", fused_suffix="mxfp4_quant",
    base=Recipe(E2M1, Grouping.MX_BLOCK, group_size=MX_BLOCK), params=_MX_PARAMS, tensor_inputs=(),
    doc="OCP MXFP4 (E2M1 packed low nibble first, block 32, E8M0 scale bytes) "
        "-> (q uint8 [..., H/2], uint8 scales [..., H/32])",
    experts_name="mxfp4_experts_quant", kernel_fields=MX_SPECIAL_FIELDS,
)
SCHEMES = {s.key: s for s in (FP8_PER_GROUP, FP8_PER_TOKEN, FP8_STATIC, FP8_PER_TENSOR, MXFP8, MXFP4)}

#: the experts ops' tensor inputs after ``x`` (vLLM's ``mxfp4_experts_quant``, vllm/_custom_ops.py):
#: int32 / int64 ``[num_experts + 1]`` token boundaries of the experts (tokens sorted by expert:
#: expert e owns rows ``expert_offsets[e]:expert_offsets[e + 1]``), and the first scale row of
#: each expert (a multiple of the swizzle tile's rows; the caller computes both)
EXPERTS_TENSORS = ("expert_offsets", "blockscale_offsets")
#: the experts ops' parameters before the scheme's: vLLM's ``n_experts`` (named as our brief's
#: ``num_experts``) and ``topk``, which vLLM uses to size its fixed scale buffer only
EXPERTS_PARAMS = (OpParam("int num_experts", example=2), OpParam("int topk", example=1))
#: the schemes with an experts variant, and the experts ops' scale layout (always swizzled)
EXPERTS_SCHEMES = tuple(s for s in SCHEMES.values() if s.experts_name)
EXPERTS_SCALE_LAYOUT = ScaleLayout.SWIZZLED


# --- op entries --------------------------------------------------------------------------

#: the gated ops' inputs: a second tensor for the SEPARATE layout (positional: torch.library
#: takes no keyword-only tensors) and, keyword-only, the INTERLEAVED flag (neither: HALVES)
GATED_UP_SCHEMA = "Tensor? up=None"
GATED_FLAG_SCHEMA = "bool interleaved=False"
#: keyword-only recipe override of every quant op: "" (the scheme's recipe for the op's
#: parameters) or :meth:`Recipe.spec` of the fields that differ (what the pass passes
#: for a site written with other numerics)
RECIPE_SCHEMA = 'str recipe=""'


#: the output arguments of the ops' ``out`` overloads: the codes (or the activation's output),
#: then the scales where the scheme returns them
OUT_ARGS = ("out", "out_scales")


@dataclasses.dataclass(frozen=True)
class OpEntry:
    """One ``torch.ops.quantfuse`` op: an activation, a scheme, or a fused pair."""

    name: str
    activation: Activation  # IDENTITY for the unfused quant ops
    scheme: Scheme | None   # None for the activation ops
    #: the experts variant of an MX scheme (tokens sorted by expert, per-expert swizzled scales)
    experts: bool = False

    @property
    def tensor_inputs(self) -> tuple[str, ...]:
        """Tensor inputs after ``x``: the scheme's, or the experts ops' :data:`EXPERTS_TENSORS`."""
        if self.scheme is None:
            return ()
        return EXPERTS_TENSORS if self.experts else self.scheme.tensor_inputs

    @property
    def params(self) -> tuple[OpParam, ...]:
        """The non-tensor parameters: the scheme's, or for the experts ops :data:`EXPERTS_PARAMS`
        and the scheme's except the scale layout (always :data:`EXPERTS_SCALE_LAYOUT`)."""
        if self.scheme is None:
            return ()
        if self.experts:
            return EXPERTS_PARAMS + tuple(p for p in self.scheme.params if p.field != "scale_layout")
        return self.scheme.params

    @property
    def base(self) -> Recipe:
        """The scheme's recipe with every op parameter at its default (:attr:`Scheme.base`; the
        experts ops' scales in :data:`EXPERTS_SCALE_LAYOUT`)."""
        base = self.scheme.base
        return dataclasses.replace(base, scale_layout=EXPERTS_SCALE_LAYOUT) if self.experts else base

    def recipe(self, *args, **kwargs) -> Recipe:
        """The recipe of one call from its non-tensor parameters (:meth:`Scheme.recipe`)."""
        if not self.experts:
            return self.scheme.recipe(*args, **kwargs)
        values = dict(zip((p.name for p in self.params), args))
        values.update(kwargs)
        own = {p.name for p in self.scheme.params}
        r = self.scheme.recipe(**{k: v for k, v in values.items() if k in own})
        return dataclasses.replace(r, scale_layout=EXPERTS_SCALE_LAYOUT)

    @property
    def schema(self) -> str:
        """The op's torch schema (without the name)."""
        args, keyword = self._schema_arguments()
        if keyword:
            args.append("*, " + ", ".join(keyword))
        outs = "(Tensor, Tensor)" if len(self.out_names) == 2 else "Tensor"
        return f"({', '.join(args)}) -> {outs}"

    @property
    def out_names(self) -> tuple[str, ...]:
        """The ``out`` overload's output arguments, in the order of the op's outputs."""
        return OUT_ARGS[:2] if self.scheme is not None and self.scheme.returns_scale else OUT_ARGS[:1]

    @property
    def out_schema(self) -> str:
        """The schema of the op's ``out`` overload (without the name): the op's arguments, then
        its outputs as keyword-only tensors it writes (:attr:`out_names`), returning nothing,
        as vLLM's ops take their ``result`` and ``scale``."""
        args, keyword = self._schema_arguments()
        keyword += [f"Tensor({alias}!) {name}" for alias, name in zip("ab", self.out_names)]
        return f"({', '.join(args)}, *, {', '.join(keyword)}) -> ()"

    def _schema_arguments(self) -> tuple[list[str], list[str]]:
        args = ["Tensor x"]
        params = [f"Tensor {t}" for t in self.tensor_inputs] + [p.schema for p in self.params]
        if params:
            args.append(", ".join(params))
        keyword = []
        if self.activation.gated:
            args.append(GATED_UP_SCHEMA)
            keyword.append(GATED_FLAG_SCHEMA)
        keyword += [p.schema for p in self.activation.params]
        if self.scheme is not None:
            keyword.append(RECIPE_SCHEMA)
        return args, keyword

    @property
    def fused(self) -> bool:
        return self.scheme is not None and self.activation is not IDENTITY

    @property
    def doc(self) -> str:
        if self.scheme is None:
            return self.activation.doc
        doc = self.scheme.doc
        if self.experts:
            doc = (f"{doc}, for tokens sorted by expert (expert_offsets [E + 1]): each expert's scales "
                   f"in the 128x4 swizzled layout from row blockscale_offsets[e], its padding zero")
        if not self.fused:
            return doc
        quant = self.scheme.experts_name if self.experts else self.scheme.unfused_name
        return f"fused {self.activation.name} -> {quant}: {doc}"


def fused_op_name(activation: str, scheme: str, experts: bool = False) -> str:
    """Name (without namespace) of the fused op for an activation and scheme key (``experts``:
    of the scheme's experts variant, ``{activation}_{experts_name}``)."""
    if experts:
        return f"{activation}_{SCHEMES[scheme].experts_name}"
    return f"{activation}_{SCHEMES[scheme].fused_suffix}"


def _entries() -> dict[str, OpEntry]:
    entries = [OpEntry(a.name, a, None) for a in ACTIVATIONS.values()]
    entries += [OpEntry(s.unfused_name, IDENTITY, s) for s in SCHEMES.values()]
    entries += [OpEntry(fused_op_name(a.name, s.key), a, s)
                for s, a in itertools.product(SCHEMES.values(), ACTIVATIONS.values())]
    entries += [OpEntry(s.experts_name, IDENTITY, s, experts=True) for s in EXPERTS_SCHEMES]
    entries += [OpEntry(fused_op_name(a.name, s.key, experts=True), a, s, experts=True)
                for s, a in itertools.product(EXPERTS_SCHEMES, ACTIVATIONS.values())]
    return {e.name: e for e in entries}


#: op name -> entry, for every op of the namespace
OPS: dict[str, OpEntry] = _entries()

#: every (activation, scheme) pair with a fused op
PAIRS = tuple((a, s) for a in ACTIVATIONS for s in SCHEMES)
#: the (activation, scheme) pairs with a fused experts op (each scheme with an ``experts_name``)
EXPERTS_PAIRS = tuple((a, s.key) for a in ACTIVATIONS for s in EXPERTS_SCHEMES)


# --- codes shared with the kernels ---------------------------------------------------------

#: kernel activations, in code order (IDENTITY first: the unfused quant ops)
KERNEL_ACTIVATIONS = (IDENTITY, SILU_AND_MUL, RELU2, SWIGLUOAI_AND_MUL)
#: those with CUDA units (:attr:`Activation.cuda`): the C++ enumerators, names and units; a
#: prefix of KERNEL_ACTIVATIONS, so the C++ tables indexed by code stay dense
CUDA_ACTIVATIONS = tuple(a for a in KERNEL_ACTIVATIONS if a.cuda)
assert KERNEL_ACTIVATIONS[:len(CUDA_ACTIVATIONS)] == CUDA_ACTIVATIONS, "activations with CUDA units come first"
#: kernel schemes, in enumerator order (0 is "no quantisation": the activation ops)
KERNEL_SCHEMES = (FP8_PER_TOKEN, FP8_PER_GROUP, MXFP8, MXFP4, FP8_STATIC, FP8_PER_TENSOR)
KERNEL_LAYOUTS = tuple(Layout)


def codes() -> dict[str, int]:
    """Integer codes of the kernels' switches, by name: ``act_silu_and_mul``, ``scheme_fp8_per_group``,
    ``layout_interleaved``, ``element_e2m1`` ... The C++ header
    (:func:`cpp_header`) and the Triton ``constexpr`` arguments are generated from this one map."""
    out = {f"act_{a.name}": i for i, a in enumerate(KERNEL_ACTIVATIONS)}
    out["scheme_none"] = 0
    out.update({f"scheme_{s.key}": i + 1 for i, s in enumerate(KERNEL_SCHEMES)})
    out.update({f"layout_{lay.value}": i for i, lay in enumerate(KERNEL_LAYOUTS)})
    out.update({f"element_{e.name}": i for i, e in enumerate(ELEMENTS)})
    out.update({f"ue8m0_{u.value}": i for i, u in enumerate(Ue8m0)})
    out.update({f"step_{d.value}": i for i, d in enumerate(StepDtype)})
    out.update({f"apply_{a.value}": i for i, a in enumerate(ApplyForm)})
    for field, kind in MX_CODE_FIELDS:
        out.update({f"{field}_{v.value}": i for i, v in enumerate(kind)})
    return out


def mx_strides() -> dict[str, int]:
    """Field -> stride of the MX recipe fields packed into one kernel argument (:func:`mx_code`)."""
    out, step = {}, 1
    for field, kind in MX_CODE_FIELDS:
        out[field] = step
        step *= len(kind)
    return out


def mx_code(r: Recipe) -> int:
    """The MX fields of ``r`` (:data:`MX_CODE_FIELDS`) as the one integer the CUDA kernels take
    (decoded by the generated header: field code = code / stride % count)."""
    c, strides = codes(), mx_strides()
    return sum(c[f"{field}_{getattr(r, field).value}"] * strides[field] for field, _ in MX_CODE_FIELDS)


def _camel(s: str) -> str:
    return "".join(p.capitalize() for p in s.split("_"))


def cpp_header() -> str:
    """``quantfuse_catalog.h``: the catalog's enums, names and constants for the CUDA sources.

    Generated at build time (csrc never restates a code); the build hashes it, so a
    catalog change rebuilds the extension.
    """
    c = codes()
    lines = ["// generated from quantfuse/catalog.py (cpp_header): do not edit", "#pragma once", "",
             "#include <cstdint>", "", "namespace quantfuse {", ""]

    def enum(name, items, doc):
        lines.append(f"// {doc}")
        lines.append(f"enum {name} : int {{")
        lines.extend(f"  {cname} = {code}," for cname, code in items)
        lines.append("};")

    enum("ActCode", [(f"kAct{a.cname}", c[f"act_{a.name}"]) for a in CUDA_ACTIVATIONS],
         "activations (catalog.CUDA_ACTIVATIONS)")
    enum("Scheme", [("kNoScheme", 0)] + [(s.cname, c[f"scheme_{s.key}"]) for s in KERNEL_SCHEMES],
         "quantisation schemes (catalog.KERNEL_SCHEMES); kNoScheme: the activation alone")
    enum("LayoutCode", [(f"kLayout{_camel(x.value)}", c[f"layout_{x.value}"]) for x in KERNEL_LAYOUTS],
         "gated input layouts (catalog.Layout)")
    enum("Ue8m0Code", [(f"kUe8m0{_camel(u.value)}", c[f"ue8m0_{u.value}"]) for u in Ue8m0],
         "power-of-two FP8 scales (catalog.Ue8m0)")
    enum("StepCode", [(f"kStep{_camel(d.value)}", c[f"step_{d.value}"]) for d in StepDtype],
         "the dtype of the amax -> scale steps (catalog.StepDtype)")
    enum("ApplyCode", [(f"kApply{_camel(a.value)}", c[f"apply_{a.value}"]) for a in ApplyForm],
         "how y is scaled before the cast (catalog.ApplyForm)")
    strides = mx_strides()
    for field, kind in MX_CODE_FIELDS:
        name = _camel(field)
        enum(f"{name}Code", [(f"k{name}{_camel(v.value)}", c[f"{field}_{v.value}"]) for v in kind],
             f"MX recipe field {field} (catalog.{kind.__name__})")
    lines.append("// the MX fields cross as one code (catalog.mx_code): field = code / kMx<Field>Stride % count")
    lines.append("constexpr int " + ", ".join(f"k{_camel(f)}Stride = {strides[f]}" for f, _ in MX_CODE_FIELDS) +
                 f", kMxCodes = {math.prod(len(k) for _, k in MX_CODE_FIELDS)};")
    lines.append("constexpr int " + ", ".join(f"kNum{_camel(f)} = {len(k)}" for f, k in MX_CODE_FIELDS) + ";")
    lines.append("// catalog.MX_SATURATING: roundings whose scaled values can pass the element's largest")
    lines.append("constexpr bool kMxRoundingSaturates[] = {" +
                 ", ".join("true" if r in MX_SATURATING else "false" for r in MxRounding) + "};")
    lines.append("")
    names = {c[f"act_{a.name}"]: a.name for a in CUDA_ACTIVATIONS}
    lines.append("constexpr const char* kActNames[] = {" + ", ".join(f'"{names[i]}"' for i in sorted(names)) + "};")
    snames = {0: "activation only", **{c[f"scheme_{s.key}"]: s.unfused_name for s in KERNEL_SCHEMES}}
    lines.append("constexpr const char* kSchemeNames[] = {" +
                 ", ".join(f'"{snames[i]}"' for i in sorted(snames)) + "};")
    lines.append(f"constexpr int kNumActs = {len(CUDA_ACTIVATIONS)}, kNumSchemes = {len(KERNEL_SCHEMES) + 1};")
    # the activations' parameters (Activation.params): how many each takes, by ActCode, and the
    # index of each in ActArgs::p (act_quant.h), e.g. kSwigluOaiAlpha
    counts = {c[f"act_{a.name}"]: len(a.params) for a in CUDA_ACTIVATIONS}
    lines.append("constexpr int kActNumParams[] = {" + ", ".join(str(counts[i]) for i in sorted(counts)) + "};")
    lines.append(f"constexpr int kMaxActParams = {max([1] + list(counts.values()))};")
    for a in CUDA_ACTIVATIONS:
        if a.params:
            lines.append("constexpr int " + ", ".join(f"k{a.cname}{_camel(p.name)} = {i}"
                                                      for i, p in enumerate(a.params)) + ";")
    lines.append(f"constexpr float kFp8Max = {E4M3.max:.1f}f, kFp4Max = {E2M1.max:.1f}f;")
    lines.append("// |v| above it casts to NaN without a clamp (catalog.Element.overflow)")
    lines.append(f"constexpr float kFp8Overflow = {E4M3.overflow:.1f}f;")
    lines.append(f"constexpr int kFp8Emax = {E4M3.emax}, kFp4Emax = {E2M1.emax};")
    lines.append(f"constexpr int kFp8Mant = {E4M3.mant}, kFp4Mant = {E2M1.mant};")
    lines.append(f"constexpr int kMxBlock = {MX_BLOCK}, kE8m0Bias = {E8M0_BIAS}, kE8m0Nan = {E8M0_NAN};")
    lines.append(f"constexpr int kSwizzleRows = {SWIZZLE_ROWS}, kSwizzleCols = {SWIZZLE_COLS};")
    lines.append("constexpr int kFp8GroupSizes[] = {" + ", ".join(map(str, FP8_GROUP_SIZES)) + "};")
    lines.append(f"constexpr float kDefaultEps = {Recipe(E4M3, Grouping.PER_TOKEN).eps!r}f;")
    lines += ["", "}  // namespace quantfuse", ""]
    return "\n".join(lines)
