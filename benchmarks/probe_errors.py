"""Probe: argument errors of the CUDA extension come back as messages (and through the
Python wrappers as RuntimeError) instead of crashing the process. One line per call."""

import torch

from quantfuse.custom_ops import cuda_backend

m = cuda_backend._mod()
x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
q = torch.empty(4, 256, device="cuda", dtype=torch.float8_e4m3fn)
s = torch.empty(4, 8, device="cuda", dtype=torch.uint8)
for name, call in (("MX block 64 (an integer in the message)", lambda: m.act_quant(0, 3, q, s, x, 64, True, 8, 1)),
                   ("float64 x", lambda: m.act_quant(2, 3, q, s, x.double(), 32, True, 8, 1)),
                   ("fp32 scales for MX", lambda: m.act_quant(2, 3, q, s.float(), x, 32, True, 8, 1)),
                   ("legacy binding, bad dtype", lambda: m.silu_and_mul_per_block_quant(
                       q, s.float(), x.double(), 64, False, 1, 1))):
    err = call()
    print(f"probe {name}: {'message OK: ' + err.splitlines()[0][:100] if err else 'no error?!'}")
print("probe finished")
