"""MX scales spelled from the E8M0 byte with ``torch.exp2`` (read by evaluation,
quantfuse/patterns/mx_scale.py), where a special block's factor is the device's own
``exp2(-127.)`` (docs/numerics.md, "CUDA's 2^-127"):

- ``times_exp2``: the elements multiplied by ``exp2(127 - byte)``, byte 0 by 1.0, a NaN block
  by NaN: the RCEIL multiplier of torchao 0.12's ``_to_mx_rceil``
  (torchao/prototype/mx_formats/mx_tensor.py at v0.12.0, and PyTorch's
  torch/testing/_internal/common_quantized.py), whose inf block (byte 254) is multiplied by
  ``exp2(-127.)``; there a NaN block's multiplier is ``exp2(-128.)``, which no recipe has, so
  this spelling puts NaN in its place (torchao 0.18 has both special cases as constants:
  tests/torchao_spelled.py). Recipe: ``mx_inf=exp2,mx_byte0=one``.
- ``over_exp2``: the elements divided by ``exp2(byte - 127)``: byte 0 by ``exp2(-127.)``, a NaN
  block by ``exp2(128.)`` = inf. Recipe: ``mx_byte0=exp2,mx_nan=div_inf``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: spelling -> the recipe= spec the recogniser reads (beyond scale_rounding="rceil")
SPECS = {"times_exp2": "mx_inf=exp2,mx_byte0=one", "over_exp2": "mx_byte0=exp2,mx_nan=div_inf"}


def mx_fp8(x: torch.Tensor, spelling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SiLU x Mul of ``[gate | up]`` -> MXFP8 RCEIL ``(q, scale bytes)`` with the byte-spelled scale."""
    gate, up = x.chunk(2, dim=-1)
    y = F.silu(gate) * up
    b = y.reshape(*y.shape[:-1], -1, 32).float()
    amax = b.abs().amax(-1, keepdim=True)
    d = amax / 448.0
    byte = torch.where(torch.isnan(d), 255,
                       (torch.clamp(torch.ceil(torch.log2(d)), min=-127, max=127) + 127).to(torch.uint8))
    if spelling == "times_exp2":
        m = torch.where(byte == 255, float("nan"), torch.where(byte == 0, 1.0, torch.exp2(127 - byte.float())))
        v = b * m
    else:
        v = b / torch.exp2(byte.float() - 127)
    q = torch.clamp(v, min=-448.0, max=448.0).to(torch.float8_e4m3fn).reshape(y.shape)
    return q, byte.squeeze(-1)


def device_inputs(tokens: int, hidden: int, seed: int, device="cpu") -> torch.Tensor:
    """bf16 ``[gate | up]`` whose SiLU x Mul has blocks of every kind, and the two where the device's
    ``exp2(-127.)`` shows: blocks holding an inf beside finite values up to bf16's largest (every
    bf16 value of the top binades, so that ties of the 2^-127 multiply are met), and blocks of
    subnormals (amax below 448 * 2^-127: exponent clamped to -127). ``tokens >= 8``."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(tokens, hidden, generator=gen) * 3
    u = torch.randn(tokens, hidden, generator=gen) * torch.pow(10.0, torch.empty(tokens, 1).uniform_(-4, 4,
                                                                                                   generator=gen))
    g[:6] = 16.0  # silu(16) is 16 in bf16: these rows' products are up's values times 16, exactly
    top = torch.arange(0x7E00, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float() / 16
    n = min(top.numel(), hidden)
    u[0, :n] = top[:n]
    u[1, :n] = -top.flip(0)[:n]
    u[0, ::32] = float("inf")  # every block of rows 0 and 1 holds an inf
    u[1, 5::32] = -float("inf")
    u[2, :] = torch.randn(hidden, generator=gen) * 2.0 ** -128  # subnormal products
    u[3, :32] = 0.0
    u[4, 40] = float("nan")
    return torch.cat([g, u], -1).to(torch.bfloat16).to(device)
