"""A model whose activation → quantization sites are written in several ways, for
``quantfuse.explain``: one is fused, two are near misses, one is kept for speed.

    python -m quantfuse explain examples/explain_models.py:build --shape 16,512 --native triton

- ``mlp1``: SiLU×Mul → MXFP8 in plain PyTorch: fused by default; with
  ``--native triton`` (the pairs where the Triton kernels beat Inductor) kept for speed.
- ``mlp2``: squared ReLU → FP8 per-token: fused.
- ``mlp3``: a LoRA branch reads the activation too: a near miss (the fused op would
  not produce the activation it needs).
- ``mlp4``: FP8 groups of 32, a size the fused kernels do not have: a near miss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn


def fp8_groups(y: torch.Tensor, group: int):
    """Dynamic FP8 per-group quantisation as plain PyTorch (fp32 scales)."""
    yg = y.unflatten(-1, (-1, group)).float()
    s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (yg / s).clamp(-448, 448).to(FP8), s


def fp8_tokens(y: torch.Tensor):
    """Dynamic FP8 per-token quantisation as plain PyTorch."""
    yf = y.float()
    s = yf.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (yf / s).clamp(-448, 448).to(FP8), s


def mxfp8(y: torch.Tensor):
    """MXFP8 (rceil scales) as plain PyTorch: E4M3 values, E8M0 scale bytes."""
    yb = y.unflatten(-1, (-1, 32)).float()
    amax = yb.abs().amax(-1, keepdim=True)
    e = torch.ceil(torch.log2(amax / 448.0)).clamp(-127, 127)
    q = (yb / torch.exp2(e)).clamp(-448, 448).to(FP8)
    return q, (e + 127).to(torch.uint8)


class Sites(torch.nn.Module):
    """Four quantised activations of one input; returns a checksum of each."""

    def __init__(self, hidden: int = 512):
        super().__init__()
        self.up = torch.nn.ModuleList(torch.nn.Linear(hidden, 2 * hidden, bias=False, dtype=torch.bfloat16)
                                      for _ in range(4))
        self.lora = torch.nn.Linear(hidden, 8, bias=False, dtype=torch.bfloat16)

    def forward(self, x):
        gate, up = self.up[0](x).chunk(2, dim=-1)
        q1, s1 = mxfp8(F.silu(gate) * up)  # mlp1
        q2, s2 = fp8_tokens(F.relu(self.up[1](x)).square())  # mlp2
        gate, up = self.up[2](x).chunk(2, dim=-1)
        y3 = F.silu(gate) * up
        q3, s3 = fp8_groups(y3, 128)  # mlp3: y3 also feeds the LoRA branch
        lora = self.lora(y3)
        gate, up = self.up[3](x).chunk(2, dim=-1)
        q4, s4 = fp8_groups(F.silu(gate) * up, 32)  # mlp4: groups of 32
        return q1, s1, q2, s2, q3, s3, lora, q4, s4


def build(hidden: int = 512) -> Sites:
    """The model in eval mode."""
    torch.manual_seed(0)
    return Sites(hidden).eval()
