"""Probe: argument errors of the CUDA extension come back as messages (and through
cuda_backend.run as RuntimeError) instead of crashing the process. One line per call."""

import torch

from quantfuse import catalog
from quantfuse.custom_ops import cuda_backend

c = catalog.codes()
m = cuda_backend._mod()
x = torch.randn(4, 256, device="cuda", dtype=torch.bfloat16)
q = torch.empty(4, 256, device="cuda", dtype=torch.float8_e4m3fn)
s = torch.empty(4, 8, device="cuda", dtype=torch.uint8)
ident, relu2, mx8, h = c["act_identity"], c["act_relu2"], c["scheme_mxfp8"], c["layout_halves"]
for name, call in (("MX block 64 (an integer in the message)",
                    lambda: m.act_quant(ident, mx8, h, q, s, x, None, None, 64, False, True, 8, 1, False)),
                   ("float64 x", lambda: m.act_quant(relu2, mx8, h, q, s, x.double(), None, None, 32, False, True, 8, 1,
                                                     False)),
                   ("fp32 scales for MX", lambda: m.act_quant(relu2, mx8, h, q, s.float(), x, None, None, 32, False,
                                                              True, 8, 1, False))):
    err = call()
    print(f"probe {name}: {'message OK: ' + err.splitlines()[0][:100] if err else 'no error?!'}")
print("probe finished")
