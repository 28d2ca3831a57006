"""Stand-ins for the FP8 GEMM kernels an inference engine calls, for the examples and tests.

A served FP8 model hands its quantized activations to a GEMM kernel that reads the FP8 bytes
and their scales from memory: cuBLAS's block-scaled ``torch._scaled_mm``, DeepGEMM's grouped
FP8 GEMMs in vLLM and SGLang. Where no such kernel runs (the CPU, block scales in a grouped
GEMM, which ``torch._scaled_grouped_mm`` does not take), these ops compute the same product
by dequantising and multiplying in bf16. They are custom ops, opaque to Inductor as the real
kernels are: written inline, the dequantisation would be fused by Inductor into the
quantisation's own kernel, a graph no FP8 GEMM ever sees (quantfuse keeps such a site:
``docs/decisions/025-dequantised-sites-kept.md``). ``block_scaled_mm`` differentiates as the
dequantised product it computes (the examples' MLP may run in grad mode); the MoE stand-ins,
like the inference kernels they stand in for, pass no gradient.
"""

from __future__ import annotations

import torch

BLOCK = 128


def dequant(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``q * s`` in bf16, for a per-token (``[..., 1]``) or per-128-group (``[..., K/128]``) scale."""
    return (q.float() * (s if s.shape[-1] == 1 else s.repeat_interleave(BLOCK, -1))).to(torch.bfloat16)


@torch.library.custom_op("fp8_gemms::block_scaled_mm", mutates_args=())
def block_scaled_mm(q: torch.Tensor, s: torch.Tensor, w: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
    """``[M, K]`` FP8 rows with ``[M, K/128]`` scales times the ``[N, K]`` FP8 weight with
    ``[N/128, K/128]`` block scales, in bf16 (``torch._scaled_mm``'s 1x128 / 128x128 product)."""
    x = (q.float().unflatten(-1, (-1, BLOCK)) * s.unsqueeze(-1)).flatten(-2)
    wf = w.float() * w_s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    return (x @ wf.t()).to(torch.bfloat16)


@block_scaled_mm.register_fake
def _(q, s, w, w_s):
    return q.new_empty((q.shape[0], w.shape[0]), dtype=torch.bfloat16)


@torch.library.custom_op("fp8_gemms::grouped_mm", mutates_args=())
def grouped_mm(q: torch.Tensor, s: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``[S, K]`` FP8 rows (sorted by expert, expert ``e`` ending at ``offs[e]``) with per-token
    or per-128-group scales times expert ``e``'s ``[K, N]`` bf16 weight ``w[e]``, in bf16."""
    return torch._grouped_mm(dequant(q, s), w, offs=offs)


@grouped_mm.register_fake
def _(q, s, w, offs):
    return q.new_empty((q.shape[0], w.shape[-1]), dtype=torch.bfloat16)


@torch.library.custom_op("fp8_gemms::mx_grouped_mm", mutates_args=())
def mx_grouped_mm(q: torch.Tensor, s: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``grouped_mm`` for MXFP8 rows: ``s`` holds one E8M0 byte (``2^(s - 127)``) per 32 elements."""
    a = q.float().unflatten(-1, (-1, 32)) * torch.exp2(s.float() - 127).unsqueeze(-1)
    return torch._grouped_mm(a.flatten(-2).to(torch.bfloat16), w, offs=offs)


@mx_grouped_mm.register_fake
def _(q, s, w, offs):
    return q.new_empty((q.shape[0], w.shape[-1]), dtype=torch.bfloat16)


@torch.library.custom_op("fp8_gemms::batched_mv", mutates_args=())
def batched_mv(q: torch.Tensor, s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Row ``i`` of the FP8 rows ``q`` (scales ``s``) times its own ``[N, K]`` bf16 weight
    ``w[i]``, in bf16 (one expert's weight per row, as transformers' batched experts run)."""
    return torch.bmm(w, dequant(q, s).unsqueeze(-1)).squeeze(-1)


@batched_mv.register_fake
def _(q, s, w):
    return q.new_empty((q.shape[0], w.shape[1]), dtype=torch.bfloat16)


def _block_scaled_mm_backward(ctx, grad):
    q, s, w, w_s = ctx.saved_tensors
    wf = w.float() * w_s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    grad_x = (grad.float() @ wf).unflatten(-1, (-1, BLOCK))
    grad_q = (grad_x * s.unsqueeze(-1)).flatten(-2).to(q.dtype)
    grad_s = (grad_x * q.float().unflatten(-1, (-1, BLOCK))).sum(-1)
    return grad_q, grad_s, None, None


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


block_scaled_mm.register_autograd(_block_scaled_mm_backward, setup_context=_save_inputs)


def _no_gradient(ctx, grad):
    return (None,) * ctx.inputs


def _count_inputs(ctx, inputs, output):
    ctx.inputs = len(inputs)


for _op in (grouped_mm, mx_grouped_mm, batched_mv):
    _op.register_autograd(_no_gradient, setup_context=_count_inputs)
