"""Probe: does an argument error raised inside the CUDA extension reach Python as a
RuntimeError (instead of crashing the process)? Prints one line per call."""

import torch

from quantfuse.custom_ops import cuda_backend

m = cuda_backend._mod()
x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
q = torch.empty(4, 256, device="cuda", dtype=torch.float8_e4m3fn)
s = torch.empty(4, 8, device="cuda", dtype=torch.uint8)
for name, call in (("float64 x", lambda: m.act_quant(2, 3, q, s, x.double(), 32, True, 8, 1)),
                   ("fp32 scales for MX", lambda: m.act_quant(2, 3, q, s.float(), x, 32, True, 8, 1)),
                   ("legacy binding, bad dtype", lambda: m.silu_and_mul_per_block_quant(
                       q, s.float(), x.double(), 64, False, 1, 1))):
    try:
        call()
        print(f"probe {name}: no error?!")
    except RuntimeError as e:
        print(f"probe {name}: RuntimeError OK: {str(e).splitlines()[0][:100]}")
print("probe finished")
