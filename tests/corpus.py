"""Test corpus: one small module per way people write SiLU×Mul → FP8 per-group quant.

Each class sets ``expect`` = (rewrites, group_size, use_ue8m0 (True, False or "exp2": the
``exp2(ceil(log2(s)))`` recipe), column_major) and
``make_input`` builds its input; ``near_misses`` lists modules that must be left
alone, with a fragment of the reason the report must give.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
qf = torch.ops.quantfuse


def _halves_slice(x):
    d = x.shape[-1] // 2
    return x[..., :d], x[..., d:]


def _quant(y, group=128, eps=1e-10, lo=-448.0, hi=448.0):
    yg = y.unflatten(-1, (-1, group)).float()
    s = yg.abs().amax(-1, keepdim=True).clamp(min=eps) / 448.0
    return (yg / s).clamp(lo, hi).to(FP8).flatten(-2), s.squeeze(-1)


class Style(torch.nn.Module):
    """Base: 2-D bf16 input [T, 2H]; FP8 per-group styles set ``expect``, others ``params``."""

    expect = (1, 128, False, False)
    fused = "silu_and_mul_per_block_quant"
    scheme = "fp8_per_group"

    @classmethod
    def expected(cls) -> tuple[int, str, dict]:
        """(rewrites, fused op, its parameters)."""
        if cls.scheme != "fp8_per_group":
            return cls.expect[0], cls.fused, cls.params
        n, group, ue8m0, col_major = cls.expect
        params = {"group_size": group, "column_major_scales": col_major, "use_ue8m0": ue8m0 is True}
        if ue8m0 == "exp2":  # exp2(ceil(log2(s))): its own recipe (catalog.Ue8m0.EXP2_CEIL_LOG2)
            params["recipe"] = "ue8m0=exp2"
        return n, cls.fused, params
    shape = (33, 1024)
    dtype = torch.bfloat16
    transposed_scales = False  # the module returns scales as [G, T]

    def make_input(self):
        return torch.randn(*self.shape, dtype=self.dtype) * 3


class SliceSiluView(Style):
    def forward(self, x):
        d = x.shape[-1] // 2
        y = F.silu(x[:, :d]) * x[:, d:]
        t = y.shape[0]
        yg = y.view(t, -1, 128).float()
        amax = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10)
        s = amax / 448.0
        q = (yg / s).clamp(-448, 448).to(FP8)
        return q.view(t, -1), s.squeeze(-1)


class ChunkSigmoidReshape(Style):
    expect = (1, 64, False, False)

    def forward(self, x):
        a, b = x.chunk(2, -1)
        y = a * torch.sigmoid(a) * b
        yg = y.reshape(y.shape[0], -1, 64).to(torch.float32)
        amax = torch.maximum(yg.abs().amax(dim=-1, keepdim=True), torch.tensor(1e-10))
        s = amax * (1 / 448.0)
        q = torch.clamp(yg / s, min=-448.0, max=448.0).to(FP8)
        return q.reshape(y.shape), s.reshape(y.shape[0], -1)


class SplitSiluUnflatten(Style):
    def forward(self, x):
        a, b = torch.split(x, x.shape[-1] // 2, dim=-1)
        y = F.silu(a) * b
        yg = y.unflatten(-1, (-1, 128)).float()
        s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448
        q = (yg / s).clamp(-448, 448).to(FP8)
        return q.flatten(-2), s.squeeze(-1)


class ThreeDimSlice(Style):
    """[B, S, 2H] input, groups by view over the last dim."""

    shape = (2, 9, 512)

    def forward(self, x):
        a, b = _halves_slice(x)
        y = F.silu(a) * b
        yg = y.view(*y.shape[:-1], -1, 128).float()
        s = yg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
        q = (yg / s).clamp(-448, 448).to(FP8)
        return q.view(y.shape), s.squeeze(-1)


class ThreeDimChunkSigmoid(Style):
    shape = (3, 5, 768)
    expect = (1, 128, False, False)

    def forward(self, x):
        a, b = x.chunk(2, dim=-1)
        y = a * torch.sigmoid(a) * b
        yg = y.unflatten(-1, (-1, 128)).float()
        s = torch.maximum(yg.abs().amax(-1, keepdim=True), torch.tensor(1e-10)) * (1 / 448)
        q = torch.clamp(yg / s, min=-448, max=448).to(FP8)
        return q.flatten(-2), s.squeeze(-1)


class Ue8m0Exp2(Style):
    expect = (1, 64, "exp2", False)

    def forward(self, x):
        a, b = _halves_slice(x)
        y = F.silu(a) * b
        yg = y.unflatten(-1, (-1, 64)).float()
        s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
        s = torch.exp2(torch.ceil(torch.log2(s)))
        q = (yg / s).clamp(-448, 448).to(FP8)
        return q.flatten(-2), s.squeeze(-1)


class Ue8m0Pow(Style):
    expect = (1, 128, "exp2", False)

    def forward(self, x):
        a, b = x.chunk(2, -1)
        y = F.silu(a) * b
        yg = y.view(y.shape[0], -1, 128).float()
        s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
        s = 2 ** torch.ceil(torch.log2(s))
        q = (yg / s).clamp(-448, 448).to(FP8)
        return q.view(y.shape), s.squeeze(-1)


class Fp16Input(SplitSiluUnflatten):
    dtype = torch.float16


class Fp32Input(SliceSiluView):
    dtype = torch.float32


class Fp32InputSigmoid(ChunkSigmoidReshape):
    dtype = torch.float32


class ColumnMajorScales(Style):
    """Scales made column-major the way a [T, G] view of [G, T] storage is made: folded."""

    expect = (1, 128, False, True)

    def forward(self, x):
        a, b = x.chunk(2, -1)
        q, s = _quant(F.silu(a) * b)
        return q, s.t().contiguous().t()


class TwoLayers(Style):
    """Two MLP activations in one graph: both fused."""

    expect = (2, 128, False, False)

    def forward(self, x):
        outs = []
        for inp in (x, x * 0.5 + 1):
            a, b = _halves_slice(inp)
            y = F.silu(a) * b
            yg = y.unflatten(-1, (-1, 128)).float()
            s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
            outs += [(yg / s).clamp(-448, 448).to(FP8).flatten(-2), s.squeeze(-1)]
        return tuple(outs)


class OpForm(Style):
    def forward(self, x):
        return qf.per_token_group_quant_fp8(qf.silu_and_mul(x), 128)


class OpFormColumnMajor(Style):
    expect = (1, 64, False, True)

    def forward(self, x):
        return qf.per_token_group_quant_fp8(qf.silu_and_mul(x), 64, True)


class OpFormKwargs(Style):
    shape = (2, 7, 512)
    expect = (1, 128, True, True)

    def forward(self, x):
        y = qf.silu_and_mul(x)
        return qf.per_token_group_quant_fp8(y, group_size=128, column_major_scales=True, use_ue8m0=True)


class ColumnMajorScales3D(Style):
    """[B, S, G] scales over [G, B, S] storage, made with movedim: folded."""

    shape = (2, 5, 512)
    expect = (1, 128, False, True)

    def forward(self, x):
        a, b = _halves_slice(x)
        y = F.silu(a) * b
        yg = y.view(*y.shape[:-1], -1, 128).float()
        s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
        q = (yg / s).clamp(-448, 448).to(FP8)
        return q.view(y.shape), s.squeeze(-1).movedim(-1, 0).contiguous().movedim(0, -1)


class TransposedScalesNotFolded(Style):
    """A transposed copy is a different value layout ([G, T]): kept as a copy, not folded."""

    transposed_scales = True

    def forward(self, x):
        a, b = x.chunk(2, -1)
        q, s = _quant(F.silu(a) * b)
        return q, s.t().contiguous()


class Relu2SquareGroup(Style):
    fused = "relu2_per_block_quant"
    shape = (9, 512)

    def forward(self, x):
        y = F.relu(x).square()
        yg = y.unflatten(-1, (-1, 128)).float()
        s = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
        return (yg / s).clamp(-448, 448).to(FP8).flatten(-2), s.squeeze(-1)


class Relu2PowUe8m0(Style):
    fused = "relu2_per_block_quant"
    expect = (1, 64, "exp2", False)
    shape = (2, 3, 256)

    def forward(self, x):
        y = torch.relu(x) ** 2
        yg = y.unflatten(-1, (-1, 64)).float()
        s = torch.exp2(torch.ceil(torch.log2(yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0)))
        return (yg / s).clamp(-448, 448).to(FP8).flatten(-2), s.squeeze(-1)


def _token_quant(y):
    yf = y.float()
    s = yf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (yf / s).clamp(-448, 448).to(FP8), s


class Relu2MulPerToken(Style):
    fused, scheme, params, shape = "relu2_per_token_quant_fp8", "fp8_per_token", {}, (5, 384)

    def forward(self, x):
        return _token_quant(F.relu(x) * F.relu(x))


class SiluPerToken(Style):
    fused, scheme, params = "silu_and_mul_per_token_quant_fp8", "fp8_per_token", {}

    def forward(self, x):
        a, b = x.chunk(2, -1)
        return _token_quant(F.silu(a) * b)


class SiluPerTensor(Style):
    """One amax over the whole tensor (rank 3): the dynamic per-tensor op, its scale a 0-dim tensor."""
    fused, scheme, params, shape = "silu_and_mul_per_tensor_quant_fp8", "fp8_per_tensor", {}, (2, 5, 512)

    def forward(self, x):
        a, b = x.chunk(2, -1)
        y = (F.silu(a) * b).float()
        s = y.abs().amax().clamp(min=1e-10) / 448.0
        return (y / s).clamp(-448, 448).to(FP8), s


def _mx8(y, rceil):
    yg = y.unflatten(-1, (-1, 32)).float()
    amax = yg.abs().amax(dim=-1, keepdim=True)
    e = torch.ceil(torch.log2(amax / 448.0)) if rceil else torch.floor(torch.log2(amax)) - 8
    e = e.clamp(-127, 127)
    return (yg / torch.exp2(e)).clamp(-448, 448).to(FP8).flatten(-2), (e + 127).to(torch.uint8).squeeze(-1)


class SiluMxfp8Rceil(Style):
    fused, scheme, params = "silu_and_mul_mxfp8_quant", "mxfp8", {"scale_rounding": "rceil"}

    def forward(self, x):
        a, b = _halves_slice(x)
        return _mx8(F.silu(a) * b, True)


class Relu2Mxfp8Floor(Style):
    fused, scheme, params, shape = "relu2_mxfp8_quant", "mxfp8", {"scale_rounding": "floor"}, (2, 4, 256)
    dtype = torch.float16

    def forward(self, x):
        return _mx8(F.relu(x).square(), False)


def _mx4(y, rceil):
    yg = y.unflatten(-1, (-1, 32)).float()
    amax = yg.abs().amax(dim=-1, keepdim=True)
    e = torch.ceil(torch.log2(amax / 6.0)) if rceil else torch.floor(torch.log2(amax)) - 2
    e = e.clamp(-127, 127)
    v = yg / torch.exp2(e)
    a = v.abs()
    c = ((a > 0.25).to(torch.uint8) + (a >= 0.75).to(torch.uint8) + (a > 1.25).to(torch.uint8)
         + (a >= 1.75).to(torch.uint8) + (a > 2.5).to(torch.uint8) + (a >= 3.5).to(torch.uint8)
         + (a > 5.0).to(torch.uint8))
    c = (c | (torch.signbit(v).to(torch.uint8) << 3)).flatten(-2)
    return c[..., 0::2] | (c[..., 1::2] << 4), (e + 127).to(torch.uint8).squeeze(-1)


class SiluMxfp4Rceil(Style):
    fused, scheme, params = "silu_and_mul_mxfp4_quant", "mxfp4", {"scale_rounding": "rceil"}

    def forward(self, x):
        a, b = x.chunk(2, -1)
        return _mx4(F.silu(a) * b, True)


class Relu2Mxfp4Floor(Style):
    fused, scheme, params, shape = "relu2_mxfp4_quant", "mxfp4", {"scale_rounding": "floor"}, (2, 4, 256)

    def forward(self, x):
        return _mx4(F.relu(x) * F.relu(x), False)


class SiluMxfp8E8m0Scales(Style):
    """Scales handed on as torch.float8_e8m0fnu (a view of the E8M0 bytes, as torchao's MX
    tensors hold them): the view stays on the fused op's uint8 scales."""

    fused, scheme, params = "silu_and_mul_mxfp8_quant", "mxfp8", {"scale_rounding": "rceil"}

    def forward(self, x):
        q, s = _mx8(F.silu(x[:, :512]) * x[:, 512:], True)
        return q, s.view(torch.float8_e8m0fnu)


class Relu2Mxfp4E8m0Scales(Style):
    fused, scheme, params = "relu2_mxfp4_quant", "mxfp4", {"scale_rounding": "rceil"}

    def forward(self, x):
        q, s = _mx4(F.relu(x).square(), True)
        return q, s.view(torch.float8_e8m0fnu)


class OpFormPairs(Style):
    """Every (activation, scheme) pair called as quantfuse ops in one graph."""

    scheme, fused, params = "all", "*", None
    expect = (8, None, None, None)
    shape = (6, 512)

    def forward(self, x):
        outs = []
        for act in (qf.silu_and_mul, qf.relu2):
            outs += qf.per_token_group_quant_fp8(act(x), 64)
            outs += qf.per_token_quant_fp8(act(x + 1))
            outs += qf.mxfp8_quant(act(x + 2), "floor")
            outs += qf.mxfp4_quant(act(x + 3))
        return tuple(outs)


class OpFormSwizzledScales(Style):
    """The MX ops asked for the 128x4 tiled scale layout (positional and keyword)."""

    fused, scheme, params, shape = "relu2_mxfp4_quant", "mxfp4", {"scale_rounding": "floor",
                                                                  "is_sf_swizzled_layout": True}, (130, 256)

    def forward(self, x):
        return (*qf.mxfp4_quant(qf.relu2(x), "floor", True),
                *qf.mxfp4_quant(qf.relu2(x + 1), scale_rounding="floor", is_sf_swizzled_layout=True))

    expect = (2, None, None, None)


STYLES = [SliceSiluView, ChunkSigmoidReshape, SplitSiluUnflatten, ThreeDimSlice, ThreeDimChunkSigmoid,
          Ue8m0Exp2, Ue8m0Pow, Fp16Input, Fp32Input, Fp32InputSigmoid, ColumnMajorScales, ColumnMajorScales3D, TransposedScalesNotFolded, TwoLayers,
          OpForm, OpFormColumnMajor, OpFormKwargs, Relu2SquareGroup, Relu2PowUe8m0, Relu2MulPerToken, SiluPerToken,
          SiluPerTensor,
          SiluMxfp8Rceil, Relu2Mxfp8Floor, SiluMxfp4Rceil, Relu2Mxfp4Floor, SiluMxfp8E8m0Scales, Relu2Mxfp4E8m0Scales,
          OpFormSwizzledScales, OpFormPairs]


# --- near misses: (module, fragment of the reason) -------------------------------------

class LoraBranch(Style):
    """The activation output also feeds a LoRA-style branch."""

    def forward(self, x):
        a, b = _halves_slice(x)
        y = F.silu(a) * b
        q, s = _quant(y)
        return q, s, (y @ torch.ones(y.shape[-1], 4, dtype=y.dtype))


class ReturnsActivation(Style):
    def forward(self, x):
        a, b = x.chunk(2, -1)
        y = F.silu(a) * b
        return (*_quant(y), y)


class GroupSize32(Style):
    def forward(self, x):
        a, b = x.chunk(2, -1)
        return _quant(F.silu(a) * b, group=32)


class Float64Input(Style):
    dtype = torch.float64

    def forward(self, x):
        a, b = x.chunk(2, -1)
        return _quant(a * torch.sigmoid(a) * b)


class NonContiguousInput(Style):
    shape = (1024, 16)

    def forward(self, x):
        x = x.t()  # [16, 1024] view with strides (1, 16)
        a, b = _halves_slice(x)
        return _quant(F.silu(a) * b)


class OtherEps(Style):
    def forward(self, x):
        a, b = x.chunk(2, -1)
        return _quant(F.silu(a) * b, eps=1e-6)


class OtherClamp(Style):
    def forward(self, x):
        a, b = x.chunk(2, -1)
        return _quant(F.silu(a) * b, lo=-240.0, hi=240.0)


class SwappedHalves(Style):
    """silu(up) * gate: the fused op's [gate | up] order does not hold."""

    def forward(self, x):
        d = x.shape[-1] // 2
        return _quant(F.silu(x[..., d:]) * x[..., :d])


class OpFormExtraUse(Style):
    def forward(self, x):
        y = qf.silu_and_mul(x)
        q, s = qf.per_token_group_quant_fp8(y, 128)
        return q, s, y.sum()


class OpFormGroup32(Style):
    def forward(self, x):
        return qf.per_token_group_quant_fp8(qf.silu_and_mul(x), 32)


NEAR_MISSES = [
    (LoraBranch, "activation output"),
    (ReturnsActivation, "consumer outside the pattern"),
    (GroupSize32, "group size 32 is not supported"),
    (Float64Input, "input dtype torch.float64 is not supported"),
    (NonContiguousInput, "input is not contiguous"),
    (OtherClamp, "240.0 where the fused op needs"),
    (SwappedHalves, "not the expected half"),
    (OpFormExtraUse, "activation output"),
    (OpFormGroup32, "group size 32 is not supported"),
]
