"""Random spellings of activation -> FP8 quantisation, as everyday model code writes them.

A :class:`Spelling` is a set of independent choices (cast placement, view chains, operand
order, amax and floor forms, 2-D / 3-D, layouts ...); :meth:`Spelling.fn` writes the code,
:meth:`Spelling.recipe` says which catalog recipe it computes (``None``: a near-spelling no
recipe computes, which must be reported, never fused). ``spellings()`` and
``near_spellings()`` are hypothesis strategies.
"""

from __future__ import annotations

import dataclasses
import zlib

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from quantfuse import catalog
from quantfuse.catalog import ApplyForm, FloorAt, Recipe, StepDtype, Ue8m0

FP8 = torch.float8_e4m3fn
EPS_VALUES = (1e-10, 1e-6, 1.0 / (448.0 * 512.0), 1e-4)


@dataclasses.dataclass(frozen=True)
class ActSpelling:
    """The activation's choices, shared by every quantisation's spellings."""

    dtype: torch.dtype = torch.bfloat16
    three_d: bool = False
    flatten_first: bool = False     # a [B, S, H] activation flattened to [T, H] before the quant
    act: str = "silu"               # silu | relu2
    layout: str = "slice"           # slice | chunk | split | separate | interleaved
    swap_operands: bool = False     # up * act(gate)
    relu2_form: str = "square"      # square | pow | mul
    silu_form: str = "functional"   # functional | module (nn.SiLU) | exp (x / (1 + exp(-x)), float32 only)

    #: the activation's output width
    width = 512

    def _generator(self):
        # the spelling's text, not hash(): string hashes differ between processes
        return torch.Generator().manual_seed(zlib.crc32(repr(self).encode()))

    def make_inputs(self):
        g = self._generator()
        shape = (2, 3) if self.three_d else (5,)
        width = self.width
        if self.act == "silu" and self.layout == "separate":
            return (torch.randn(*shape, width, generator=g).to(self.dtype) * 3,
                    torch.randn(*shape, width, generator=g).to(self.dtype) * 3)
        w = 2 * width if self.act == "silu" else width
        return (torch.randn(*shape, w, generator=g).to(self.dtype) * 3,)

    def _silu(self, t):
        if self.silu_form == "module":
            return torch.nn.SiLU()(t)
        if self.silu_form == "exp":
            return t / (1 + torch.exp(-t))
        return F.silu(t)

    def _activation(self, *xs):
        if self.act == "relu2":
            r = F.relu(xs[0])
            return {"square": lambda: r.square(), "pow": lambda: r ** 2, "mul": lambda: r * r}[self.relu2_form]()
        if self.layout == "separate":
            gate, up = xs
        else:
            x = xs[0]
            d = x.shape[-1] // 2
            gate, up = {"slice": lambda: (x[..., :d], x[..., d:]),
                        "chunk": lambda: x.chunk(2, dim=-1),
                        "split": lambda: torch.split(x, d, dim=-1),
                        "interleaved": lambda: (x[..., ::2], x[..., 1::2])}[self.layout]()
        return up * self._silu(gate) if self.swap_operands else self._silu(gate) * up

    def _act_note_ok(self, note: str) -> bool:
        """The rewrite's note is the one this activation's spelling calls for: a float32 SiLU is
        noted (post-grad, F.silu and x / (1 + exp(-x)) are one graph; the fused op computes the
        former, which on the CPU the formula written out is not to the last bit)."""
        return ("float32 silu" in note) == (self.dtype == torch.float32 and self.act == "silu")

    @property
    def act_bit_exact(self) -> bool:
        """Eager runs the activation as the fused op computes it on the CPU (not an fp32
        x / (1 + exp(-x)) written out: the fused op computes F.silu)."""
        return not (self.dtype == torch.float32 and self.act == "silu" and self.silu_form == "exp")

    @property
    def activation(self) -> str:
        return "silu_and_mul" if self.act == "silu" else "relu2"


def _act_choices():
    """Hypothesis strategies of :class:`ActSpelling`'s fields."""
    return dict(
        dtype=st.sampled_from([torch.bfloat16, torch.bfloat16, torch.float16, torch.float32]),
        three_d=st.booleans(), flatten_first=st.booleans(),
        act=st.sampled_from(["silu", "silu", "silu", "relu2"]),
        layout=st.sampled_from(["slice", "chunk", "split", "separate", "interleaved"]),
        swap_operands=st.booleans(), relu2_form=st.sampled_from(["square", "pow", "mul"]),
        silu_form=st.sampled_from(["functional", "functional", "module", "exp"]))


def _act_consistent(s):
    # x / (1 + exp(-x)) rounds each op in a 16-bit dtype (fused with a note, within one step): it is
    # spelled in float32 only (within an fp32 ulp of the F.silu the fused op computes, on the CPU)
    if s.silu_form == "exp" and s.dtype != torch.float32:
        s = dataclasses.replace(s, silu_form="functional")
    return s


@dataclasses.dataclass(frozen=True)
class Spelling(ActSpelling):
    """A dynamic FP8 per-group / per-token / per-tensor spelling."""

    group: int = 128                # 64 | 128 | 0 (per token)
    per_tensor: bool = False        # one amax over every element (group unused)
    group_view: str = "view"        # view | unflatten | reshape
    cast_first: bool = False        # y.float() before the grouping reshape
    step_input: bool = False        # amax / 448 in the input dtype, then .float()
    amax_in_input: bool = False     # amax reduced in the input dtype, then .float()
    amax_form: str = "amax"         # amax | values | getitem | unsqueeze
    floor_at: str = "amax"          # amax | scale | none | both (near)
    floor_form: str = "clamp"       # clamp | clamp_min | maximum | where
    eps: float = 1e-10
    ue8m0: str = "none"             # none | after | before (the floor)
    ue8m0_form: str = "exp2"        # exp2 | pow (torch.pow(2.0, ...)) | rpow (2 ** ...) | pow_abs (DeepGEMM: log2(|s|))
    apply: str = "div"              # div | div_promote | recip | one_over | div_rounded (near)
    clamp: str = "clamp"            # clamp | kw | none | narrow (near)
    divisor: float = 448.0          # 447.0 (near)
    out_shape: str = "back"         # back (q as y's shape, s squeezed) | grouped

    # --- the code --------------------------------------------------------------------------
    def _floor(self, t):
        eps = self.eps
        return {"clamp": lambda: t.clamp(min=eps), "clamp_min": lambda: torch.clamp_min(t, eps),
                "maximum": lambda: torch.maximum(t, torch.tensor(eps)),
                "where": lambda: torch.where(t < eps, eps, t)}[self.floor_form]()

    def _pow2(self, s):
        return {"exp2": lambda: torch.exp2(torch.ceil(torch.log2(s))),
                "pow": lambda: torch.pow(2.0, torch.ceil(torch.log2(s))),
                "rpow": lambda: 2 ** torch.ceil(torch.log2(s)),
                "pow_abs": lambda: torch.pow(2.0, torch.ceil(torch.log2(s.abs())))}[self.ue8m0_form]()

    def fn(self, *xs):
        y = self._activation(*xs)
        if self.flatten_first:
            y = y.reshape(-1, y.shape[-1])
        h = y.shape[-1]
        g = self.group or h
        work = y.float() if self.cast_first else y
        grouped = {"view": lambda t: t.view(-1, h // g, g),
                   "unflatten": lambda t: t.unflatten(-1, (-1, g)),
                   "reshape": lambda t: t.reshape(*t.shape[:-1], h // g, g)}[self.group_view]
        if not self.per_tensor:
            work = grouped(work)
        amax_src = work if (self.cast_first or self.amax_in_input or self.step_input) else work.float()
        a = amax_src.abs()
        if self.per_tensor:
            # a 0-dim amax (vLLM: x.abs().max(); torchao: amax over every dim), or [1]
            amax = {"amax": lambda: a.amax(), "values": lambda: a.max(), "getitem": lambda: torch.max(a),
                    "unsqueeze": lambda: a.max().unsqueeze(-1)}[self.amax_form]()
        elif self.amax_form == "amax":
            amax = a.amax(dim=-1, keepdim=True)
        elif self.amax_form == "values":
            amax = a.max(dim=-1, keepdim=True).values
        elif self.amax_form == "getitem":
            amax = torch.max(a, -1, True)[0]
        else:
            amax = a.max(dim=-1)[0].unsqueeze(-1)
        if not self.step_input:
            amax = amax.float()
        if self.floor_at in ("amax", "both"):
            amax = self._floor(amax)
        s = amax / self.divisor
        if self.step_input:
            s = s.float()
        if self.ue8m0 == "before":
            s = self._pow2(s)
        if self.floor_at in ("scale", "both"):
            s = self._floor(s)
        if self.ue8m0 == "after":
            s = self._pow2(s)
        v = work if self.apply in ("div_promote", "div_rounded") else work.float()
        if self.apply == "div_rounded":
            v = v / s.to(v.dtype)
        elif self.apply in ("div", "div_promote"):
            v = v / s
        elif self.apply == "recip":
            v = v * s.reciprocal()
        else:
            v = v * (1 / s)
        if self.clamp == "clamp":
            v = v.clamp(-448.0, 448.0)
        elif self.clamp == "kw":
            v = torch.clamp(v, min=-448, max=448)
        elif self.clamp == "narrow":
            v = v.clamp(-240.0, 240.0)
        q = v.to(FP8)
        if self.out_shape == "grouped":
            return q, s
        if self.per_tensor:
            return q.reshape(y.shape), s.reshape(1)
        return q.reshape(y.shape), s.reshape(*y.shape[:-1], h // g)

    # --- what it computes ------------------------------------------------------------------
    @property
    def scheme(self) -> catalog.Scheme:
        if self.per_tensor:
            return catalog.FP8_PER_TENSOR
        return catalog.FP8_PER_GROUP if self.group else catalog.FP8_PER_TOKEN

    @property
    def zero_dim(self) -> bool:
        """A per-tensor amax without the unsqueeze is 0-dim, and a 0-dim tensor does not promote a
        dimensioned one: ``y_bf16 / s_fp32`` stays bf16, where ``torch.maximum(amax_bf16,
        torch.tensor(eps))`` of two 0-dim tensors is fp32."""
        return self.per_tensor and self.amax_form != "unsqueeze"

    def recipe(self) -> Recipe | None:
        """The recipe this spelling computes, or None where no recipe does (a near-spelling)."""
        rounded = self.apply == "div_rounded" and self.dtype != torch.float32 and not self.cast_first
        rounded |= self.zero_dim and self.apply == "div_promote" and self.dtype != torch.float32 and not self.cast_first
        if self.floor_at == "both" or rounded or self.clamp == "narrow" \
                or self.divisor != 448.0:
            return None
        if self.step_input and self.ue8m0 != "none":
            return None
        # the 0-dim floor torch.maximum(amax, tensor(eps)) promotes the amax to fp32 (zero_dim)
        step_input = self.step_input and not (self.zero_dim and self.floor_at == "amax" and self.floor_form == "maximum")
        fields = dict(
            floor_at={"amax": FloorAt.AMAX, "scale": FloorAt.SCALE, "none": FloorAt.NONE}[self.floor_at],
            step_dtype=StepDtype.INPUT if step_input and self.dtype != torch.float32 else StepDtype.FP32,
            apply=ApplyForm.DIV if self.apply in ("div", "div_promote", "div_rounded") else ApplyForm.MUL_INV,
            clamp=self.clamp != "none",
            ue8m0=Ue8m0.NONE if self.ue8m0 == "none" else Ue8m0.EXP2_CEIL_LOG2,
            ue8m0_after_floor=not (self.ue8m0 == "before" and self.floor_at == "scale"))
        if self.floor_at != "none":
            fields["eps"] = self.eps
            if fields["step_dtype"] is StepDtype.INPUT and self.floor_at == "amax":
                # the amax is floored in the input dtype: max(amax, eps rounded to it)
                fields["eps"] = float(torch.tensor(self.eps, dtype=torch.float32).to(self.dtype))
        if self.group and not self.per_tensor:
            fields["group_size"] = self.group
        return dataclasses.replace(self.scheme.base, **fields)


def _base():
    return st.builds(
        Spelling, **_act_choices(),
        group=st.sampled_from([64, 128, 0]), group_view=st.sampled_from(["view", "unflatten", "reshape"]),
        per_tensor=st.sampled_from([False, False, False, True]),
        cast_first=st.booleans(), step_input=st.booleans(), amax_in_input=st.booleans(),
        amax_form=st.sampled_from(["amax", "values", "getitem", "unsqueeze"]),
        floor_at=st.sampled_from(["amax", "scale", "none"]),
        floor_form=st.sampled_from(["clamp", "clamp_min", "maximum", "where"]),
        eps=st.sampled_from(EPS_VALUES), ue8m0=st.sampled_from(["none", "none", "after", "before"]),
        ue8m0_form=st.sampled_from(["exp2", "pow", "rpow", "pow_abs"]),
        apply=st.sampled_from(["div", "div_promote", "recip", "one_over"]),
        clamp=st.sampled_from(["clamp", "kw", "none"]),
        out_shape=st.sampled_from(["back", "grouped"]),
    )


def _consistent(s: Spelling) -> Spelling:
    s = _act_consistent(s)
    # a scale computed in the input dtype needs the values still in it
    if s.step_input:
        s = dataclasses.replace(s, cast_first=False, ue8m0="none")
    if s.zero_dim and s.apply == "div_promote":
        s = dataclasses.replace(s, apply="div")  # y_bf16 / a 0-dim fp32 s stays bf16: a near spelling
    if s.group_view == "view" and s.three_d and not s.flatten_first and s.group:
        s = dataclasses.replace(s, group_view="unflatten")  # view(-1, G, g) flattens tokens (fine too)
    return s


def spellings():
    """Equivalent spellings of supported recipes (each computes ``recipe()``)."""
    return _base().map(_consistent)


def near_spellings():
    """Spellings one change away from a recipe that change the numerics."""
    change = st.sampled_from([
        {"clamp": "narrow"}, {"apply": "div_rounded"}, {"divisor": 447.0}, {"floor_at": "both"},
        {"eps": 1e-5}, {"floor_at": "none"}, {"clamp": "none"}, {"step_input": True},
    ])
    return st.tuples(spellings(), change).map(lambda t: _consistent(dataclasses.replace(t[0], **t[1])))
