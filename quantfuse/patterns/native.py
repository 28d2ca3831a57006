"""Plain-PyTorch spellings of activations and quantisation schemes, as people write them.

Two tables: activation spellings ``x -> y`` and scheme spellings ``y -> (q, s)``.  The
pattern generator (:mod:`quantfuse.patterns.act_quant`) traces each spelling once and
composes every activation with every scheme, so a new spelling or a new pair is a table
entry.  Spellings that normalise to the same post-grad graph need no entry of their own:
``view``, ``reshape``, ``unflatten`` all become ``aten.reshape``; ``chunk(2, -1)`` and
``split(d, -1)`` become ``aten.split``; ``clamp(a, b)`` and ``torch.clamp(min=a, max=b)``
become ``clamp_min`` + ``clamp_max``; ``x.square()`` and ``x ** 2`` become ``pow``.
Same-arity alternatives (``clamp(min=eps)`` vs ``torch.maximum``, ``/ 448`` vs
``* (1 / 448)``) are folded into one pattern by ``act_quant.widen``; the constants are
checked per site by :mod:`quantfuse.patterns.site`.

A scheme spelling returns the tensors as the model would next use them, before any
final reshape or squeeze (grouped ``q``, keep-dim scales): whatever the model does
afterwards stays in the graph and applies to the fused op's outputs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
SIXTEEN_BIT = (torch.bfloat16, torch.float16)
CAST = torch.ops.prims.convert_element_type.default
_aten = torch.ops.aten


def _halves_by_slicing(x):
    d = x.shape[-1] // 2
    return x[..., :d], x[..., d:]


def _halves_by_split(x):
    return x.chunk(2, dim=-1)


ACTIVATION_SPELLINGS: dict[str, dict[str, Callable]] = {
    "silu_and_mul": {
        "slice,F.silu": lambda x: F.silu(_halves_by_slicing(x)[0]) * _halves_by_slicing(x)[1],
        "split,F.silu": lambda x: (lambda a, b: F.silu(a) * b)(*_halves_by_split(x)),
        "slice,sigmoid": lambda x: (lambda a, b: a * torch.sigmoid(a) * b)(*_halves_by_slicing(x)),
        "split,sigmoid": lambda x: (lambda a, b: a * torch.sigmoid(a) * b)(*_halves_by_split(x)),
    },
    "relu2": {
        "relu.square": lambda x: F.relu(x).square(),
        "relu*relu": lambda x: F.relu(x) * F.relu(x),
    },
}


def fp8_group_quant(y, group_size: int = 128, round_scale: Callable | None = None):
    """Dynamic per-group FP8: grouped q ``[..., G, group]``, keep-dim scale ``[..., G, 1]``."""
    yg = y.unflatten(-1, (-1, group_size)).float()
    scale = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    if round_scale is not None:
        scale = round_scale(scale)
    return (yg / scale).clamp(-448.0, 448.0).to(FP8), scale


def fp8_token_quant(y):
    """Dynamic per-token FP8: q ``[..., H]``, keep-dim scale ``[..., 1]``."""
    yf = y.float()
    scale = yf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (yf / scale).clamp(-448.0, 448.0).to(FP8), scale


def fp8_tensor_quant(y):
    """Dynamic per-tensor FP8: q ``[..., H]``, the one scale ``[1]`` from the amax of all of y."""
    yf = y.float()
    scale = yf.abs().amax().clamp(min=1e-10) / 448.0
    return (yf / scale).clamp(-448.0, 448.0).to(FP8), scale.reshape(1)


def _mx_blocks(y, scale_rounding: str, max_elem: float, emax: int):
    """32-element blocks of y in fp32 and their shared exponents ``[..., G, 1]``, as written
    in torch: ``ceil(log2(amax / max_elem))`` (rceil) or ``floor(log2(amax)) - emax``."""
    yg = y.unflatten(-1, (-1, 32)).float()
    amax = yg.abs().amax(dim=-1, keepdim=True)
    if scale_rounding == "rceil":
        exp = torch.ceil(torch.log2(amax / max_elem))
    else:
        exp = torch.floor(torch.log2(amax)) - emax
    return yg, exp.clamp(-127, 127)


def mxfp8_quant(y, scale_rounding: str = "rceil"):
    """MXFP8 as written in torch: grouped E4M3 q ``[..., G, 32]``, E8M0 bytes ``[..., G, 1]``."""
    yg, exp = _mx_blocks(y, scale_rounding, 448.0, 8)
    q = (yg / torch.exp2(exp)).clamp(-448.0, 448.0).to(FP8)
    return q, (exp + 127).to(torch.uint8)


#: E2M1 rounding thresholds of |v|: ``>`` where the tie goes down to the even code, ``>=``
#: where it goes up (0.25 -> 0, 0.75 -> 1.0, 1.25 -> 1.0, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4)
E2M1_THRESHOLDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def mxfp4_quant(y, scale_rounding: str = "rceil"):
    """MXFP4 as written in torch: E2M1 codes by counting the rounding thresholds |v| passes,
    sign in bit 3, packed two a byte (element 2i low); E8M0 bytes ``[..., G, 1]``."""
    yg, exp = _mx_blocks(y, scale_rounding, 6.0, 2)
    v = yg / torch.exp2(exp)
    a = v.abs()
    steps = [((a >= t) if up else (a > t)).to(torch.uint8) for t, up in E2M1_THRESHOLDS]
    code = steps[0]
    for step in steps[1:]:
        code = code + step
    code = (code | (torch.signbit(v).to(torch.uint8) << 3)).flatten(-2)
    return code[..., 0::2] | (code[..., 1::2] << 4), (exp + 127).to(torch.uint8)


SCHEME_SPELLINGS: dict[str, dict[str, Callable]] = {
    "fp8_per_group": {
        "scale=fp32": lambda y: fp8_group_quant(y),
        "scale=exp2": lambda y: fp8_group_quant(y, 128, lambda s: torch.exp2(torch.ceil(torch.log2(s)))),
        "scale=pow": lambda y: fp8_group_quant(y, 128, lambda s: 2 ** torch.ceil(torch.log2(s))),
    },
    "fp8_per_token": {"amax/448": lambda y: fp8_token_quant(y)},
    "fp8_per_tensor": {"amax/448": lambda y: fp8_tensor_quant(y)},
    "mxfp8": {
        "rceil": lambda y: mxfp8_quant(y, "rceil"),
        "floor": lambda y: mxfp8_quant(y, "floor"),
    },
    # one spelling of the many ways E2M1 rounding and packing are written (bit tricks,
    # lookup tables, bucketize): threshold counting, as in reference / kernels
    "mxfp4": {
        "rceil": lambda y: mxfp4_quant(y, "rceil"),
        "floor": lambda y: mxfp4_quant(y, "floor"),
    },
}


#: ops one of which every spelling of the activation has after Inductor's decompositions (F.silu
#: becomes x / (1 + exp(-x))); a graph without any cannot match its patterns
#: (tests/test_patterns.py checks each against the traces)
ACTIVATION_SIGNATURES: dict[str, set] = {
    "silu_and_mul": {_aten.exp.default, _aten.sigmoid.default},
    "relu2": {_aten.relu.default},
}
#: (ops, cast dtypes) every spelling of the scheme has, all of them
SCHEME_SIGNATURES: dict[str, tuple[frozenset, frozenset]] = {
    "fp8_per_group": (frozenset({_aten.amax.default}), frozenset({FP8})),
    "fp8_per_token": (frozenset({_aten.amax.default}), frozenset({FP8})),
    "fp8_per_tensor": (frozenset({_aten.amax.default}), frozenset({FP8})),
    "mxfp8": (frozenset({_aten.amax.default, _aten.exp2.default}), frozenset({FP8, torch.uint8})),
    "mxfp4": (frozenset({_aten.amax.default, _aten.exp2.default, _aten.bitwise_or.Tensor}),
              frozenset({torch.uint8})),
}
