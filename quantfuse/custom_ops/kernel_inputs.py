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
