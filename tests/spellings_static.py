"""Random spellings of activation -> static per-tensor FP8 (the scale is an input tensor).

:class:`StaticSpelling` adds to the activation's choices (:class:`spellings.ActSpelling`) the
scale's shape (0-d, ``[1]``, ``[1, 1]``), its no-op casts, the division or the multiply by its
reciprocal (``y / s``, ``y * s.reciprocal()`` as vLLM's ``QuantFP8.forward_native`` writes it,
``y * (1 / s)``, the reciprocal computed before the activation), the clamp's spellings (or
none: a recipe of its own) and the output's shape. ``near()`` names the changes that alter the
numerics or the site: a narrower clamp, a bf16 scale, the quotient rounded to bf16 (a 0-d scale
does not promote a bf16 ``y``), the reciprocal precomputed outside the graph (an input ``y`` is
multiplied by), a reciprocal read outside the site, a scale of one value per channel.
"""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import strategies as st

from quantfuse import catalog
from quantfuse.catalog import ApplyForm, Recipe
from spellings import ActSpelling, _act_choices, _act_consistent

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


@dataclasses.dataclass(frozen=True)
class StaticSpelling(ActSpelling):
    """A static per-tensor FP8 spelling: ``fn(*activation inputs, scale)``."""

    scale_shape: str = "1"          # 0d | 1 | 11 | channel (near: one scale per column)
    scale_dtype: torch.dtype = torch.float32  # bfloat16 (near)
    scale_cast: str = "none"        # none | float (s.float()) | to (s.to(torch.float32))
    cast_first: bool = True         # y.float() before the flatten (else after it)
    apply: str = "div"              # div | div_promote (y / s, no .float()) | recip | one_over | inv_first
    #                                 near: inv_input (y * inv, inv an input), recip_out (1 / s also returned)
    clamp: str = "clamp"            # clamp | kw | finfo | chain | none | narrow (near)
    out_shape: str = "back"         # back (q as y's shape) | flat ([T, H])
    return_scale: bool = False      # (q, scale), as vLLM's QuantFP8 returns

    def make_inputs(self):
        xs = super().make_inputs()
        g = self._generator()
        # about 1 / 100 of the activation's range: the clamp at ±448 matters
        shape = {"0d": (), "1": (1,), "11": (1, 1), "channel": (self.width,)}[self.scale_shape]
        scale = (torch.rand(shape, generator=g) * 0.03 + 0.005).to(self.scale_dtype)
        if self.apply == "inv_input":
            scale = 1 / scale
        return (*xs, scale)

    def fn(self, *args):
        *xs, scale = args
        s = scale
        if self.scale_cast == "float":
            s = s.float()
        elif self.scale_cast == "to":
            s = s.to(torch.float32)
        inv = s.reciprocal() if self.apply in ("inv_first", "recip_out") else None
        y = self._activation(*xs)
        h = y.shape[-1]
        work = y.float() if self.cast_first else y
        work = work.reshape(-1, h)
        if self.apply != "div_promote":
            work = work.float()
        v = {"div": lambda: work / s, "div_promote": lambda: work / s, "recip": lambda: work * s.reciprocal(),
             "one_over": lambda: work * (1 / s), "inv_first": lambda: work * inv, "recip_out": lambda: work * inv,
             "inv_input": lambda: work * s}[self.apply]()
        if self.clamp == "clamp":
            v = v.clamp(-FP8_MAX, FP8_MAX)
        elif self.clamp == "kw":
            v = torch.clamp(v, min=-FP8_MAX, max=FP8_MAX)
        elif self.clamp == "finfo":
            info = torch.finfo(FP8)
            v = v.clamp(min=info.min, max=info.max)
        elif self.clamp == "chain":
            v = v.clamp_min(-FP8_MAX).clamp_max(FP8_MAX)
        elif self.clamp == "narrow":
            v = v.clamp(-240.0, 240.0)
        q = v.to(FP8)
        if self.out_shape == "back":
            q = q.reshape(y.shape)
        out = (q,)
        if self.return_scale:
            out += (scale,)
        if self.apply == "recip_out":
            out += (inv,)
        return out if len(out) > 1 else q

    # --- what it computes ------------------------------------------------------------------
    @property
    def scheme(self) -> catalog.Scheme:
        return catalog.FP8_STATIC

    def _rounded_quotient(self) -> bool:
        # a 0-d fp32 tensor does not promote a 16-bit y (one dimension category): y / s is 16-bit
        return self.apply == "div_promote" and self.scale_shape == "0d" and self.dtype != torch.float32 \
            and not self.cast_first

    def recipe(self) -> Recipe | None:
        """The recipe this spelling computes, or None (a near-spelling no recipe computes)."""
        if self.clamp == "narrow" or self.scale_dtype != torch.float32 or self.scale_shape == "channel" \
                or self.apply in ("inv_input", "recip_out") or self._rounded_quotient():
            return None
        return dataclasses.replace(
            self.scheme.base, clamp=self.clamp != "none",
            apply=ApplyForm.DIV if self.apply in ("div", "div_promote") else ApplyForm.MUL_INV)


def _base():
    return st.builds(
        StaticSpelling, **_act_choices(),
        scale_shape=st.sampled_from(["0d", "1", "1", "11"]), scale_cast=st.sampled_from(["none", "float", "to"]),
        cast_first=st.booleans(), apply=st.sampled_from(["div", "div_promote", "recip", "recip", "one_over",
                                                         "inv_first"]),
        clamp=st.sampled_from(["clamp", "kw", "finfo", "chain", "none"]), out_shape=st.sampled_from(["back", "flat"]),
        return_scale=st.booleans())


def _consistent(s: StaticSpelling, near: bool = False) -> StaticSpelling:
    s = _act_consistent(s)
    if s._rounded_quotient() and not near:
        s = dataclasses.replace(s, scale_shape="1")
    return s


def static_spellings():
    """Equivalent spellings of static per-tensor FP8 (each computes ``recipe()``)."""
    return _base().map(_consistent)


#: the changes of :func:`static_near_spellings`, each with what its near miss's reason says (a
#: regular expression), or None where the change is a recipe of its own (fused)
STATIC_NEAR_CHANGES = [
    ({"clamp": "narrow"}, r"clamped to \[-240\.0, 240\.0\] where e4m3 spans"),
    ({"scale_dtype": torch.bfloat16}, r"the static scale is torch\.bfloat16"),
    ({"scale_shape": "channel"}, r"the static scale `\w+` has 512 elements"),
    ({"apply": "div_promote", "scale_shape": "0d", "cast_first": False, "dtype": torch.bfloat16},
     r"y / s is rounded to bfloat16 before the FP8 cast"),
    ({"apply": "inv_input"}, r"the activation is multiplied by the input `\w+`"),
    ({"apply": "recip_out"}, r"intermediate value `\w+` has a consumer outside the pattern"),
    ({"clamp": "none"}, None),
]


def static_near_spellings(change: dict):
    """Static spellings with ``change`` (one of :data:`STATIC_NEAR_CHANGES`'s)."""
    return static_spellings().map(lambda s: _consistent(dataclasses.replace(s, **change), near=True))
