"""An LLM-style FP8 MLP, compiled with and without quantfuse's pass.

    gate_up projection (bf16) -> SiLU×Mul -> FP8 per-group quant (1×128 scales)
    -> FP8 down projection with 128×128 block weight scales

The model is written in plain PyTorch, as people write it; the pass finds the
SiLU×Mul → quant subgraph and replaces it with one fused op without any change to the
model.  On a GPU the down projection is ``torch._scaled_mm`` with block scales (the
activation scales column-major, as cuBLAS wants them); on the CPU an opaque stand-in
for it (``fp8_gemms.block_scaled_mm``) dequantises and multiplies.  Exits 1 if the pass did not fire, 2 if the results differ beyond FP8
rounding.

The compile with the pass runs with Inductor's FX graph cache off: a graph served from
that cache (a second run of this script) never reaches the pass, so the pass would have
nothing to report and nothing to check.

    python examples/fp8_mlp.py [--device cuda] [--tokens 64] [--layers 2] [--style op]
    python -m quantfuse explain examples/fp8_mlp.py:build --shape 64,512
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import fp8_gemms
import quantfuse

FP8 = torch.float8_e4m3fn
BLOCK = 128


def quantize_weight_blockwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 weight with one fp32 scale per 128×128 block: (w_fp8 [N, K], scales [N/128, K/128])."""
    n, k = w.shape
    blocks = w.float().reshape(n // BLOCK, BLOCK, k // BLOCK, BLOCK)
    scale = blocks.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-10) / 448.0
    q = (blocks / scale).clamp(-448, 448).to(FP8).reshape(n, k)
    return q, scale.reshape(n // BLOCK, k // BLOCK)


def scaled_mm_supported(device: torch.device) -> bool:
    """Whether this torch/GPU runs the 1×128 / 128×128 block-scaled FP8 GEMM."""
    if device.type != "cuda":
        return False
    try:
        a = torch.randn(16, 256, device=device).to(FP8)
        b = torch.randn(256, 256, device=device).to(FP8)
        sa = torch.ones(256 // BLOCK, 16, device=device).t()
        sb = torch.ones(2, 2, device=device)
        torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb.t(), out_dtype=torch.bfloat16)
        return True
    except Exception as e:  # older torch / GPU without block-scaled cuBLAS
        print(f"note: block-scaled torch._scaled_mm unavailable ({str(e).splitlines()[0]}); dequantising")
        return False


class FP8MLP(torch.nn.Module):
    """One MLP block; ``style="native"`` spells the quantisation out in torch."""

    def __init__(self, hidden: int, inter: int, device, style: str = "native", use_scaled_mm: bool = False):
        super().__init__()
        self.gate_up = torch.nn.Linear(hidden, 2 * inter, bias=False, device=device, dtype=torch.bfloat16)
        w_down = torch.randn(hidden, inter, device=device) / inter ** 0.5
        w_q, w_s = quantize_weight_blockwise(w_down)
        self.register_buffer("w_down", w_q)
        self.register_buffer("w_down_scale", w_s)
        self.style, self.use_scaled_mm = style, use_scaled_mm

    def act_quant(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.style == "op":
            y = torch.ops.quantfuse.silu_and_mul(h)
            return torch.ops.quantfuse.per_token_group_quant_fp8(y, BLOCK, column_major_scales=True)
        gate, up = h.chunk(2, dim=-1)
        y = F.silu(gate) * up
        yg = y.unflatten(-1, (-1, BLOCK)).float()
        scale = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
        q = (yg / scale).clamp(-448.0, 448.0).to(FP8).flatten(-2)
        # [T, K/128] view of [K/128, T] storage: the layout block-scaled GEMMs read
        return q, scale.squeeze(-1).t().contiguous().t()

    def down(self, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if self.use_scaled_mm:
            return torch._scaled_mm(q, self.w_down.t(), scale_a=s, scale_b=self.w_down_scale.t(),
                                    out_dtype=torch.bfloat16)
        return fp8_gemms.block_scaled_mm(q, s, self.w_down, self.w_down_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, s = self.act_quant(self.gate_up(x))
        return x + self.down(q, s)


class Stack(torch.nn.Module):
    def __init__(self, layers: int, *args, **kwargs):
        super().__init__()
        self.layers = torch.nn.ModuleList(FP8MLP(*args, **kwargs) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def build(layers: int = 2, hidden: int = 512, inter: int = 1024, device: str = "cpu", style: str = "native"):
    """The example's model in eval mode (for ``python -m quantfuse explain``)."""
    torch.manual_seed(0)
    return Stack(layers, hidden, inter, torch.device(device), style).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--inter", type=int, default=1024)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--style", choices=["native", "op"], default="native")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = Stack(args.layers, args.hidden, args.inter, device, args.style, scaled_mm_supported(device)).eval()
    x = torch.randn(args.tokens, args.hidden, device=device, dtype=torch.bfloat16)

    with torch.no_grad():
        torch._dynamo.reset()
        baseline = torch.compile(model)(x)
        torch._dynamo.reset()
        with torch._inductor.config.patch(fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False):
            # on the CPU the fused op runs the torch reference, slower than Inductor's C++, so
            # the pass keeps native sites there; the example asks for them to show the rewrite
            config = quantfuse.FusionConfig(native_on_cpu=device.type == "cpu")
            fused = quantfuse.compile(model, config=config)(x)
    report = quantfuse.last_report()
    print("compiled with Inductor's FX graph cache off, so the pass runs on every run of this script")
    if device.type == "cpu":
        print("on the CPU: FusionConfig(native_on_cpu=True), to show what a GPU graph gets "
              "(by default the pass keeps CPU native sites: Inductor's code is faster there)")
    print(report)

    diff = (fused.float() - baseline.float()).abs().max().item()
    rel = ((fused.float() - baseline.float()).norm() / baseline.float().norm()).item()
    print(f"device={device.type} style={args.style} layers={args.layers} tokens={args.tokens}: "
          f"max |with pass - without| = {diff:.4g}, relative L2 = {rel:.2e}")
    if report is None or len(report.rewrites) != args.layers:
        print(f"FAIL: expected {args.layers} rewrite(s)", file=sys.stderr)
        return 1
    # FP8 rounding of a few activation values moves the output by far less than 1%
    if not rel < 1e-2:
        print("FAIL: results differ beyond FP8 rounding", file=sys.stderr)
        return 2
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
