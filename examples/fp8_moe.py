"""An FP8 mixture-of-experts layer in plain PyTorch, compiled with and without quantfuse's pass.

    router -> top-k -> tokens sorted by expert -> FP8 quant -> gate_up grouped GEMM
    -> SiLU×Mul -> FP8 quant -> down grouped GEMM -> weighted combine

The layer is written as people write it, with no quantfuse call in it; the pass finds the
activation -> quant site inside the experts (the quantisation feeding the down projection)
and replaces it with one fused op.  Two configurations of the activation scales:

* ``--scales token`` (default): one FP8 scale per token.  On an H100 / H200 both grouped
  GEMMs are ``torch._scaled_grouped_mm`` (row-wise scales: ``scale_a`` one per row of the
  sorted tokens, ``scale_b`` one per expert and output column, ``offs`` the int32 end row of
  each expert);
* ``--scales block``: one scale per 1x128 group (``--ue8m0`` rounds it up to a power of two,
  DeepSeek-V3's UE8M0 form), 128x128 block weight scales.  ``torch._scaled_grouped_mm``
  takes row-wise or MX scales only, and ``torch._scaled_mm`` with 1x128 x 128x128 scales
  works per expert only with each expert's row range on the host (a sync per step, no CUDA
  graphs), so the GEMMs run ``fp8_gemms.grouped_mm``: an opaque stand-in for a grouped FP8
  GEMM kernel (DeepGEMM's, as vLLM and SGLang call it) that reads the FP8 rows and their
  scales, dequantises and runs ``torch._grouped_mm`` in bf16.

On the CPU (and on a GPU without ``_scaled_grouped_mm``) every grouped GEMM is that stand-in.

Both compiles run with ``emulate_precision_casts`` (Inductor rounds each intermediate to its
dtype, as eager does): the fused op computes eager's bits, so the two layers' outputs are
then bit-identical, which this script checks (on CUDA, Inductor's ``exp`` may still differ from
eager's in the last bit: there a difference within FP8 rounding is reported, not failed).
Without it Inductor's own code for the site keeps fp32 intermediates and differs from eager
in a few FP8 codes.  The compile with the
pass runs with Inductor's FX graph cache off (a cached graph never reaches the pass).
Exits 1 if the pass did not fire, 2 if the results differ.

    python examples/fp8_moe.py [--shape small|qwen3-30b-a3b|deepseek-v3] [--tokens 64]
                               [--scales token|block] [--ue8m0] [--device cuda]

On a GPU the default is the Qwen3-30B-A3B shape at T = 4096; at decode sizes the pass keeps the
per-token site where the fused call is measured slower (the report says why) and the script
exits 1 (``QUANTFUSE_SPEED_TABLE=0 python examples/fp8_moe.py --tokens 16`` fuses it anyway).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
import torch.nn.functional as F

import fp8_gemms
import quantfuse

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
BLOCK = 128
#: the catalog scheme each ``--scales`` configuration quantises the activation with
SCALES_SCHEME = {"token": "fp8_per_token", "block": "fp8_per_group"}


@dataclasses.dataclass(frozen=True)
class Shape:
    """An MoE layer's sizes: hidden, expert intermediate (per half of gate_up), experts, top-k."""

    hidden: int
    inter: int
    experts: int
    topk: int


SHAPES = {
    "small": Shape(256, 256, 8, 2),
    "qwen3-30b-a3b": Shape(2048, 768, 128, 8),
    "deepseek-v3": Shape(7168, 2048, 256, 8),
}


def quantize_weights(w: torch.Tensor, scales: str) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 expert weights ``[E, N, K]`` with one fp32 scale per output row (``[E, N]``) or per
    128x128 block (``[E, N/128, K/128]``)."""
    e, n, k = w.shape
    if scales == "token":
        s = w.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / FP8_MAX
        return (w.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8), s.squeeze(-1)
    blocks = w.float().reshape(e, n // BLOCK, BLOCK, k // BLOCK, BLOCK)
    s = blocks.abs().amax(dim=(2, 4), keepdim=True).clamp(min=1e-10) / FP8_MAX
    return (blocks / s).clamp(-FP8_MAX, FP8_MAX).to(FP8).reshape(e, n, k), s.reshape(e, n // BLOCK, k // BLOCK)


def dequantize_weights(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The bf16 weights the reference GEMM multiplies by."""
    if s.dim() == 2:
        return (q.float() * s.unsqueeze(-1)).to(torch.bfloat16)
    w = q.float() * s.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)
    return w.to(torch.bfloat16)


def quant_fp8(y: torch.Tensor, scales: str = "token", ue8m0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic FP8 of ``y`` (bf16 ``[..., K]``): one scale per token (``[..., 1]``) or per 1x128
    group (``[..., K/128]``; ``ue8m0`` rounds it up to a power of two), as the model writes it."""
    yf = y.float() if scales == "token" else y.float().unflatten(-1, (-1, BLOCK))
    s = yf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / FP8_MAX
    if ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    q = (yf / s).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    if scales == "token":
        return q, s
    return q.flatten(-2), s.squeeze(-1)


def scaled_grouped_mm_supported(device: torch.device) -> bool:
    """Whether this torch / GPU runs ``torch._scaled_grouped_mm`` with row-wise FP8 scales (sm90+)."""
    if device.type != "cuda" or not hasattr(torch, "_scaled_grouped_mm"):
        return False
    try:
        a = torch.randn(32, 128, device=device).to(FP8)
        w = torch.randn(2, 64, 128, device=device).to(FP8)
        offs = torch.tensor([16, 32], device=device, dtype=torch.int32)
        torch._scaled_grouped_mm(a, w.transpose(-2, -1), torch.ones(32, device=device),
                                 torch.ones(2, 64, device=device), offs=offs, out_dtype=torch.bfloat16)
        return True
    except Exception as e:  # an older GPU or torch
        print(f"note: torch._scaled_grouped_mm unavailable ({str(e).splitlines()[0]}); dequantising")
        return False


class FP8MoE(torch.nn.Module):
    """A routed MoE layer with FP8 (W8A8) experts, in plain PyTorch.

    ``activation``: ``"silu"`` (gated SiLU×Mul over gate_up ``[E, 2I, H]``) or ``"relu2"``
    (non-gated squared ReLU over up ``[E, I, H]``); ``scales``: ``"token"`` or ``"block"``
    activation scales (``ue8m0``: power-of-two block scales).  ``use_scaled_grouped_mm``
    runs the per-token GEMMs on ``torch._scaled_grouped_mm`` (CUDA, sm90+).
    """

    def __init__(self, shape: Shape, device, scales: str = "token", ue8m0: bool = False,
                 activation: str = "silu", use_scaled_grouped_mm: bool = False):
        super().__init__()
        if scales not in ("token", "block"):
            raise ValueError(f"scales must be 'token' or 'block', not {scales!r}")
        if activation not in ("silu", "relu2"):
            raise ValueError(f"activation must be 'silu' or 'relu2', not {activation!r}")
        if ue8m0 and scales != "block":
            raise ValueError("ue8m0 rounds block scales: use it with scales='block'")
        if use_scaled_grouped_mm and scales != "token":
            raise ValueError("torch._scaled_grouped_mm takes row-wise scales: use it with scales='token'")
        h, i, e = shape.hidden, shape.inter, shape.experts
        if scales == "block" and (h % BLOCK or i % BLOCK):
            raise ValueError(f"block scales need hidden ({h}) and intermediate ({i}) to be multiples of {BLOCK}")
        self.shape, self.scales, self.ue8m0, self.activation = shape, scales, ue8m0, activation
        self.use_scaled_grouped_mm = use_scaled_grouped_mm
        up_rows = 2 * i if activation == "silu" else i
        self.router = torch.nn.Linear(h, e, bias=False, device=device, dtype=torch.bfloat16)
        for name, (n, k) in (("up", (up_rows, h)), ("down", (h, i))):
            q, s = quantize_weights(torch.randn(e, n, k, device=device) / k ** 0.5, scales)
            if use_scaled_grouped_mm:
                self.register_buffer(f"w_{name}", q)
                self.register_buffer(f"w_{name}_scale", s)
            else:
                self.register_buffer(f"w_{name}_ref", dequantize_weights(q, s))

    def quant(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quant_fp8(y, self.scales, self.ue8m0)

    def grouped_gemm(self, q: torch.Tensor, s: torch.Tensor, name: str, offs: torch.Tensor) -> torch.Tensor:
        """``[S, K]`` FP8 rows (sorted by expert, expert ``e`` ending at ``offs[e]``) times the
        expert's ``[N, K]`` FP8 weight, in bf16."""
        if self.use_scaled_grouped_mm:
            w, w_s = getattr(self, f"w_{name}"), getattr(self, f"w_{name}_scale")
            return torch._scaled_grouped_mm(q, w.transpose(-2, -1), s.reshape(-1), w_s, offs=offs,
                                            out_dtype=torch.bfloat16)
        return fp8_gemms.grouped_mm(q, s, getattr(self, f"w_{name}_ref").transpose(-2, -1), offs)

    def act(self, h: torch.Tensor) -> torch.Tensor:
        if self.activation == "silu":
            gate, up = h.chunk(2, dim=-1)
            return F.silu(gate) * up
        return torch.square(F.relu(h))

    def down(self, y: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """The down projection of the activation ``y``: its FP8 quantisation, then the grouped GEMM."""
        return self.grouped_gemm(*self.quant(y), "down", offs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, k, e = x.shape[0], self.shape.topk, self.shape.experts
        probs = torch.softmax(self.router(x).float(), dim=-1)
        weights, ids = torch.topk(probs, k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        sorted_ids, perm = torch.sort(ids.reshape(-1), stable=True)
        # offs[e]: the end row of expert e in the sorted rows (experts with no token: empty ranges)
        offs = torch.searchsorted(sorted_ids, torch.arange(e, device=x.device), right=True, out_int32=True)
        rows = x[perm // k]
        h = self.grouped_gemm(*self.quant(rows), "up", offs)
        out = self.down(self.act(h), offs)
        out = out * weights.reshape(-1)[perm].unsqueeze(-1).to(out.dtype)
        unsorted = torch.empty_like(out)
        unsorted[perm] = out
        return unsorted.view(t, k, -1).float().sum(dim=1).to(x.dtype)


def build(shape: str = "small", device: str = "cpu", scales: str = "token", ue8m0: bool = False,
          activation: str = "silu") -> FP8MoE:
    """The example's layer in eval mode (for ``python -m quantfuse explain``)."""
    torch.manual_seed(0)
    dev = torch.device(device)
    use_sgm = scales == "token" and scaled_grouped_mm_supported(dev)
    return FP8MoE(SHAPES[shape], dev, scales, ue8m0, activation, use_sgm).eval()


def compile_both(model: torch.nn.Module, x: torch.Tensor, mode: str | None = None, emulate: bool = True,
                 speed_table: bool | None = None):
    """The layer compiled without and with the pass (same Inductor settings; ``emulate``:
    ``emulate_precision_casts``; ``speed_table``: ``FusionConfig.speed_table``, False to rewrite
    a site the measured rule would keep), both compiled callables, their outputs and the pass's report."""
    config = quantfuse.FusionConfig(native_on_cpu=x.device.type == "cpu", speed_table=speed_table)
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False, emulate_precision_casts=emulate), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        torch._dynamo.reset()
        plain = torch.compile(model, mode=mode)
        baseline = plain(x)
        torch._dynamo.reset()
        fused_fn = quantfuse.compile(model, config=config, mode=mode)
        fused = fused_fn(x)
        report = quantfuse.last_report()
    return plain, fused_fn, baseline, fused, report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # on a GPU a real layer at a prefill size: at decode sizes the pass keeps the per-token site where
    # the fused call is measured slower (its report says why: quantfuse.passes.profitability)
    p.add_argument("--shape", choices=sorted(SHAPES), help="default: qwen3-30b-a3b on cuda, small elsewhere")
    p.add_argument("--tokens", type=int, help="default: 4096 on cuda, 64 elsewhere")
    p.add_argument("--scales", choices=["token", "block"], default="token")
    p.add_argument("--ue8m0", action="store_true", help="power-of-two block scales (with --scales block)")
    p.add_argument("--activation", choices=["silu", "relu2"], default="silu")
    args = p.parse_args(argv)
    gpu = torch.device(args.device).type == "cuda"
    args.shape = args.shape or ("qwen3-30b-a3b" if gpu else "small")
    args.tokens = args.tokens or (4096 if gpu else 64)

    model = build(args.shape, args.device, args.scales, args.ue8m0, args.activation)
    torch.manual_seed(1)
    x = torch.randn(args.tokens, model.shape.hidden, device=args.device, dtype=torch.bfloat16)
    *_, baseline, fused, report = compile_both(model, x)
    with torch.no_grad():
        eager = model(x)
    print(report)
    gemm = ("torch._scaled_grouped_mm" if model.use_scaled_grouped_mm
            else "fp8_gemms.grouped_mm (opaque: dequantise + torch._grouped_mm)")
    diff = (fused.float() - baseline.float()).abs().max().item()
    vs_eager = (fused.float() - eager.float()).abs().max().item()
    print(f"device={args.device} shape={args.shape} {model.shape} tokens={args.tokens} scales={args.scales}"
          f"{' ue8m0' if args.ue8m0 else ''} activation={args.activation} GEMMs: {gemm}")
    print(f"max |with pass - without| = {diff:.4g}; max |with pass - eager| = {vs_eager:.4g}")
    if report is None or len(report.rewrites) != 1:
        kept = [m.reason for m in (report.near_misses if report else [])
                if m.reason.startswith(quantfuse.passes.profitability.KEPT_FOR_SPEED)]
        print(f"FAIL: expected 1 rewrite, got {0 if report is None else len(report.rewrites)}"
              + (f" ({kept[0]})" if kept else ""), file=sys.stderr)
        return 1
    if not torch.equal(fused, baseline):
        rel = ((fused.float() - baseline.float()).norm() / baseline.float().norm()).item()
        differ = (fused != baseline).float().mean().item()
        # on CUDA Inductor's own code for the site (its exp) is not eager's to the last bit, so a
        # few FP8 codes of the layer without the pass may differ from the fused op's (eager's)
        if x.device.type == "cpu" or not rel < 1e-2:
            print(f"FAIL: the layer's output with the pass differs from the output without it "
                  f"({differ:.3%} of outputs, relative L2 {rel:.2e})", file=sys.stderr)
            return 2
        print(f"note: {differ:.3%} of outputs differ (relative L2 {rel:.2e}): Inductor's code for the site "
              "on CUDA is not eager's to the last bit")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
