"""The checks every kernel module makes before it claims a call (``unsupported_reason``).

Each returns None when the kernels can run the call, else a short reason that the
oracle logs when it falls back to the next backend.
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FP8_GROUPS = (64, 128)


def input_reason(x, cpu_ok: bool = False) -> str | None:
    """A contiguous CUDA tensor (or CPU, for Triton's interpreter) of a supported dtype."""
    if not isinstance(x, torch.Tensor):
        return "input is not a tensor"
    if not (x.is_cuda or (cpu_ok and x.device.type == "cpu")):
        return f"input on {x.device}, not CUDA"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} not in bf16/fp16/fp32"
    if not x.is_contiguous():
        return "input not contiguous"
    if x.dim() == 0:
        return "0-d input"
    return None


def activation_hidden(activation: str | None, width: int) -> tuple[int, str | None]:
    """Width of the activation's output (gated activations halve it), or a reason."""
    if activation == "silu_and_mul":
        if width % 2:
            return width, f"last dim {width} is odd"
        return width // 2, None
    return width, None


def fp8_group_reason(hidden: int, group_size: int | None) -> str | None:
    """FP8 per-group kernels take groups of 64 or 128 that tile the hidden size."""
    if group_size not in FP8_GROUPS:
        return f"group_size {group_size} not in {FP8_GROUPS}"
    if hidden % group_size:
        return f"hidden size {hidden} not divisible by group_size {group_size}"
    return None


def silu_fp8_group_reason(op: str, ops: tuple[str, ...], x, group_size: int | None,
                          cpu_ok: bool = False) -> str | None:
    """Checks for the SiLU×Mul / FP8 per-group op family (CUDA and Triton backends)."""
    if op not in ops:
        return f"unknown op {op!r}"
    why = input_reason(x, cpu_ok)
    if why:
        return why
    hidden, why = activation_hidden(None if op == "per_token_group_quant_fp8" else "silu_and_mul", x.shape[-1])
    if why or op == "silu_and_mul":
        return why
    return fp8_group_reason(hidden, group_size)


# --- the kernel families' op table (CUDA and Triton backends) --------------------------
#: activation name as in op names ("" = none) -> activation code of the kernels
ACT_CODES = {"": 0, "silu_and_mul": 1, "relu2": 2}
#: scheme key -> (unfused op name, fused-op suffix, scheme code of the kernels)
SCHEME_CODES = {
    "none": (None, None, 0),
    "fp8_per_token": ("per_token_quant_fp8", "per_token_quant_fp8", 1),
    "fp8_per_group": ("per_token_group_quant_fp8", "per_block_quant", 2),
    "mxfp8": ("mxfp8_quant", "mxfp8_quant", 3),
    "mxfp4": ("mxfp4_quant", "mxfp4_quant", 4),
}
MX_BLOCK = 32


def _op_table() -> dict[str, tuple[str, str]]:
    table = {}
    for act in ACT_CODES:
        for key, (unfused, suffix, _) in SCHEME_CODES.items():
            if act and key == "none":
                table[act] = (act, key)
            elif key != "none":
                table[f"{act}_{suffix}" if act else unfused] = (act, key)
    return table


#: op name -> (activation, scheme key) for every activation x scheme op of the kernels:
#: the activations alone, the unfused quant ops and every fused pair
OP_TABLE: dict[str, tuple[str, str]] = _op_table()


def scheme_reason(op: str, x, group_size: int | None, cpu_ok: bool = False) -> str | None:
    """Checks every backend makes for an ``OP_TABLE`` op: the input, the activation's
    output width, and the scheme's group (FP8 per-group 64/128, MX block 32)."""
    if op not in OP_TABLE:
        return f"unknown op {op!r}"
    why = input_reason(x, cpu_ok)
    if why:
        return why
    act, key = OP_TABLE[op]
    hidden, why = activation_hidden(act, x.shape[-1])
    if why:
        return why
    if key == "fp8_per_group":
        return fp8_group_reason(hidden, group_size)
    if key in ("mxfp8", "mxfp4"):
        if hidden % MX_BLOCK:
            return f"hidden size {hidden} not divisible by the MX block {MX_BLOCK}"
        if group_size not in (None, MX_BLOCK):
            return f"MX block {group_size} != {MX_BLOCK}"
    return None


def swizzled_scale_shape(tokens, groups) -> tuple:
    """Shape of MX scales in the 128x4 tiled layout (``reference.swizzle_128x4``): tokens
    padded to a multiple of 128, groups to a multiple of 4 (symbolic sizes work too)."""
    return (-(-tokens // 128) * 128, -(-groups // 4) * 4)


def op_functions(launch) -> dict:
    """One backend function per ``OP_TABLE`` op, with the calling convention of the
    backends (outputs first): ``act(out, x)``, ``per-token(q, s, x)``,
    ``per-group(q, s, x, group_size, use_ue8m0=False)``,
    ``MX(q, s, x, scale_rounding="rceil", is_sf_swizzled_layout=False)``. Each calls
    ``launch(op, act, key, x, q, s, group_size, flag, swizzled)`` where flag is ``use_ue8m0``
    or ``scale_rounding == "rceil"`` and swizzled says that ``s`` is the padded 128x4 tiled
    layout (:func:`swizzled_scale_shape`), which the kernels write, padding included."""
    fns = {}
    for op, (act, key) in OP_TABLE.items():
        def make(op=op, act=act, key=key):
            if key == "none":
                def fn(out, x) -> None:
                    launch(op, act, key, x, out, None)
                fn.__doc__ = f"``out = {act}(x)`` in ``x.dtype`` (the activation alone)."
            elif key == "fp8_per_token":
                def fn(q, s, x) -> None:
                    launch(op, act, key, x, q, s)
                fn.__doc__ = f"{act or 'identity'} -> FP8 E4M3 per-token quantisation into ``q``, ``s [..., 1]``."
            elif key == "fp8_per_group":
                def fn(q, s, x, group_size: int, use_ue8m0: bool = False) -> None:
                    launch(op, act, key, x, q, s, group_size, bool(use_ue8m0))
                fn.__doc__ = f"{act or 'identity'} -> FP8 E4M3 per-group quantisation (scales row- or column-major)."
            else:
                def fn(q, s, x, scale_rounding: str = "rceil", is_sf_swizzled_layout: bool = False) -> None:
                    if scale_rounding not in ("floor", "rceil"):
                        raise RuntimeError(f"quantfuse ({op}): scale_rounding must be 'floor' or 'rceil', "
                                           f"got {scale_rounding!r}")
                    launch(op, act, key, x, q, s, MX_BLOCK, scale_rounding == "rceil", bool(is_sf_swizzled_layout))
                fn.__doc__ = f"{act or 'identity'} -> {key.upper()} (block 32, E8M0 scale bytes) into ``q``, ``s``."
            fn.__name__ = fn.__qualname__ = op
            return fn
        fns[op] = make()
    return fns
