"""``torch.library`` ops of the ``quantfuse`` namespace, generated from two tables.

An *activation* (``silu_and_mul``) and a *quantisation scheme* (FP8 per-token-group,
the op vLLM calls ``per_token_group_quant_fp8``) each define an unfused op; every
(activation, scheme) pair defines a fused op named ``{activation}_{scheme.fused_suffix}``
(``silu_and_mul_per_block_quant``) taking the scheme's parameters.  Adding a pair is a
table entry: the op, its fake impl, validation and backend dispatch are generated.

Every op validates its input with the same function in the real and the fake impl,
so a bad call fails with a clear message at trace time as well as in eager mode.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from quantfuse.custom_ops import kernel_inputs, oracle, reference

NAMESPACE = "quantfuse"
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _check_input(op: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantfuse.{op}: x must be a tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"quantfuse.{op}: x has dtype {x.dtype}; expected one of bfloat16, float16, float32")
    if x.dim() < 1:
        raise ValueError(f"quantfuse.{op}: x must have at least one dimension")
    if not x.is_contiguous():
        raise ValueError(f"quantfuse.{op}: x must be contiguous (shape {tuple(x.shape)}, strides {x.stride()}); "
                         "call .contiguous() first")


@dataclasses.dataclass(frozen=True)
class Activation:
    """An activation op: ``[..., in_hidden]`` -> ``[..., out_hidden]`` in the input dtype."""

    name: str
    reference: Callable[[torch.Tensor], torch.Tensor]
    #: output hidden size from input hidden size; raises ValueError if impossible
    out_hidden: Callable[[int], int]
    doc: str


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A quantisation scheme: unfused op name, fused-op suffix, parameters, outputs."""

    unfused_name: str
    fused_suffix: str
    #: the scheme's parameters in torch schema syntax (after ``Tensor x``)
    params_schema: str
    reference: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    #: validates parameters against the hidden size; returns a kernel-facing group size
    check: Callable[..., int | None]
    #: allocates (q, s) for an input of this shape: used by the fake impl and kernels
    empty_outputs: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    #: the parameters a backend kernel takes after (q, s, x) (per-group scale layout: read
    #: off the strides of s)
    kernel_args: Callable[..., tuple]
    #: parameter values that differ from every default (traced op-form patterns need
    #: each call arity, since graphs drop trailing default arguments)
    example_params: tuple
    #: how many leading parameters have no default
    required_params: int
    doc: str


def _silu_and_mul_hidden(h: int) -> int:
    if h % 2:
        raise ValueError(f"last dim {h} must be even ([gate | up] halves)")
    return h // 2


def _check_group(hidden: int, group_size: int, column_major_scales: bool = False, use_ue8m0: bool = False) -> int:
    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    if hidden % group_size:
        raise ValueError(f"hidden size {hidden} is not divisible by group_size {group_size}")
    return group_size


def _check_mx(hidden: int, scale_rounding: str = "rceil", is_sf_swizzled_layout: bool = False) -> int:
    if scale_rounding not in reference.SCALE_ROUNDINGS:
        raise ValueError(f"scale_rounding must be one of {reference.SCALE_ROUNDINGS}, got {scale_rounding!r}")
    if hidden % reference.MX_BLOCK:
        raise ValueError(f"hidden size {hidden} is not divisible by the MX block size {reference.MX_BLOCK}")
    return reference.MX_BLOCK


def _mx_scheme(name: str, element_bytes: Callable[[int], int], q_dtype: torch.dtype, doc: str) -> Scheme:
    """An OCP microscaling scheme: ``{name}_quant(x, scale_rounding="rceil", is_sf_swizzled_layout=False)``.

    Scale bytes are row-major ``[..., H/32]``, or with ``is_sf_swizzled_layout`` (vLLM's and
    FlashInfer's name) the padded 128x4 tiled ``[T_pad, G_pad]`` that block-scaled GEMMs
    read, written so by the kernels themselves (padding bytes included)."""

    def empty_outputs(shape, device, scale_rounding="rceil", is_sf_swizzled_layout=False):
        *lead, hidden = shape
        groups = hidden // reference.MX_BLOCK
        s_shape = (kernel_inputs.swizzled_scale_shape(math.prod(lead), groups)
                   if is_sf_swizzled_layout else (*lead, groups))
        return (torch.empty((*lead, element_bytes(hidden)), dtype=q_dtype, device=device),
                torch.empty(s_shape, dtype=torch.uint8, device=device))

    return Scheme(
        unfused_name=f"{name}_quant",
        fused_suffix=f"{name}_quant",
        params_schema='str scale_rounding="rceil", bool is_sf_swizzled_layout=False',
        reference=getattr(reference, f"{name}_quant"),
        check=_check_mx,
        empty_outputs=empty_outputs,
        kernel_args=lambda scale_rounding="rceil", is_sf_swizzled_layout=False: (scale_rounding,
                                                                                 is_sf_swizzled_layout),
        example_params=("floor", True),
        required_params=0,
        doc=doc,
    )


def _empty_group_outputs(shape: Sequence[int], device, group_size: int,
                         column_major_scales: bool = False, use_ue8m0: bool = False):
    *lead, hidden = shape
    q = torch.empty(tuple(shape), dtype=reference.FP8_DTYPE, device=device)
    return q, reference._alloc_scales(tuple(lead), hidden // group_size, device, column_major_scales)


ACTIVATIONS = {
    "silu_and_mul": Activation(
        name="silu_and_mul",
        reference=reference.silu_and_mul,
        out_hidden=_silu_and_mul_hidden,
        doc="silu(x[..., :d]) * x[..., d:], fp32 maths, output in x.dtype",
    ),
    "relu2": Activation(
        name="relu2",
        reference=reference.relu2,
        out_hidden=lambda h: h,
        doc="relu(x) ** 2 (squared ReLU, non-gated), fp32 maths, output in x.dtype",
    ),
}

SCHEMES = {
    "fp8_per_group": Scheme(
        unfused_name="per_token_group_quant_fp8",
        fused_suffix="per_block_quant",
        params_schema="int group_size, bool column_major_scales=False, bool use_ue8m0=False",
        reference=reference.per_token_group_quant_fp8,
        check=_check_group,
        empty_outputs=_empty_group_outputs,
        kernel_args=lambda group_size, column_major_scales=False, use_ue8m0=False: (group_size, use_ue8m0),
        example_params=(128, True, True),
        required_params=1,
        doc="dynamic FP8 E4M3 per-token-group quantisation -> (q, fp32 scales [..., H/group])",
    ),
    "fp8_per_token": Scheme(
        unfused_name="per_token_quant_fp8",
        fused_suffix="per_token_quant_fp8",
        params_schema="",
        reference=reference.per_token_quant_fp8,
        check=lambda hidden: hidden,
        empty_outputs=lambda shape, device: (
            torch.empty(tuple(shape), dtype=reference.FP8_DTYPE, device=device),
            torch.empty((*shape[:-1], 1), dtype=torch.float32, device=device)),
        kernel_args=lambda: (),
        example_params=(),
        required_params=0,
        doc="dynamic FP8 E4M3 per-token quantisation -> (q, fp32 scales [..., 1])",
    ),
    "mxfp8": _mx_scheme("mxfp8", element_bytes=lambda h: h, q_dtype=reference.FP8_DTYPE,
                        doc="OCP MXFP8 (E4M3, block 32, E8M0 scale bytes) -> (q, uint8 scales [..., H/32])"),
    "mxfp4": _mx_scheme("mxfp4", element_bytes=lambda h: h // 2, q_dtype=torch.uint8,
                        doc="OCP MXFP4 (E2M1 packed low nibble first, block 32, E8M0 scale bytes) "
                            "-> (q uint8 [..., H/2], uint8 scales [..., H/32])"),
}


def _run_activation(act: Activation, x: torch.Tensor) -> torch.Tensor:
    _check_input(act.name, x)
    out_h = _out_hidden(act, x)
    name, mod = oracle.choose(act.name, x)
    if mod is None:
        return act.reference(x)
    out = x.new_empty((*x.shape[:-1], out_h))
    getattr(mod, act.name)(out, x)
    return out


def _out_hidden(act: Activation, x: torch.Tensor) -> int:
    try:
        return act.out_hidden(x.shape[-1])
    except ValueError as e:
        raise ValueError(f"quantfuse.{act.name}: {e}") from None


def _scheme_params(scheme: Scheme, op: str, hidden: int, params: tuple) -> int | None:
    try:
        return scheme.check(hidden, *params)
    except ValueError as e:
        raise ValueError(f"quantfuse.{op}: {e}") from None


def _run_quant(scheme: Scheme, x: torch.Tensor, *params):
    op = scheme.unfused_name
    _check_input(op, x)
    group = _scheme_params(scheme, op, x.shape[-1], params)
    name, mod = oracle.choose(op, x, group)
    if mod is None:
        return scheme.reference(x, *params)
    q, s = scheme.empty_outputs(x.shape, x.device, *params)
    getattr(mod, op)(q, s, x, *scheme.kernel_args(*params))
    return q, s


def _run_fused(act: Activation, scheme: Scheme, x: torch.Tensor, *params):
    op = f"{act.name}_{scheme.fused_suffix}"
    _check_input(op, x)
    out_h = _out_hidden(act, x)
    group = _scheme_params(scheme, op, out_h, params)
    name, mod = oracle.choose(op, x, group)
    if mod is None:
        return scheme.reference(act.reference(x), *params)
    q, s = scheme.empty_outputs((*x.shape[:-1], out_h), x.device, *params)
    getattr(mod, op)(q, s, x, *scheme.kernel_args(*params))
    return q, s


def _fake_activation(act: Activation, x: torch.Tensor) -> torch.Tensor:
    _check_input(act.name, x)
    return x.new_empty((*x.shape[:-1], _out_hidden(act, x)))


def _fake_quant(scheme: Scheme, op: str, out_hidden_of: Callable[[torch.Tensor], int], x: torch.Tensor, *params):
    _check_input(op, x)
    out_h = out_hidden_of(x)
    _scheme_params(scheme, op, out_h, params)
    return scheme.empty_outputs((*x.shape[:-1], out_h), x.device, *params)


def _define(name: str, schema: str, impl: Callable, fake: Callable, doc: str):
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    op.__doc__ = doc
    return op


def _register_all() -> dict[str, object]:
    ops: dict[str, object] = {}
    for act in ACTIVATIONS.values():
        ops[act.name] = _define(
            act.name, "(Tensor x) -> Tensor",
            lambda x, act=act: _run_activation(act, x),
            lambda x, act=act: _fake_activation(act, x),
            act.doc,
        )
    for scheme in SCHEMES.values():
        schema = f"(Tensor x{', ' if scheme.params_schema else ''}{scheme.params_schema}) -> (Tensor, Tensor)"
        ops[scheme.unfused_name] = _define(
            scheme.unfused_name, schema,
            lambda x, *p, scheme=scheme: _run_quant(scheme, x, *p),
            lambda x, *p, scheme=scheme: _fake_quant(scheme, scheme.unfused_name, lambda t: t.shape[-1], x, *p),
            scheme.doc,
        )
        for act in ACTIVATIONS.values():
            name = f"{act.name}_{scheme.fused_suffix}"
            ops[name] = _define(
                name, schema,
                lambda x, *p, act=act, scheme=scheme: _run_fused(act, scheme, x, *p),
                lambda x, *p, act=act, scheme=scheme, name=name: _fake_quant(
                    scheme, name, lambda t: _out_hidden(act, t), x, *p),
                f"fused {act.name} -> {scheme.unfused_name}: {scheme.doc}",
            )
    return ops


OPS = _register_all()


def fused_op_name(activation: str, scheme: str) -> str:
    """Name (without namespace) of the fused op for an activation and scheme key."""
    return f"{activation}_{SCHEMES[scheme].fused_suffix}"
