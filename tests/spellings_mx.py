"""Random spellings of activation -> MXFP8 / MXFP4, as everyday model code writes them.

:class:`MxSpelling` adds the MX choices to the activation's (:class:`spellings.ActSpelling`):
the exponent (RCEIL ``ceil(log2(amax / max))`` or ``amax * (1 / max)``, FLOOR
``floor(log2(amax)) - emax``, each as a function or a method), the E8M0 clamp's spellings, the
power of two (``exp2`` / ``2 ** e`` / ``torch.pow``), the division or multiply by it, the scale
bytes (squeezed before or after the uint8 cast, viewed or cast as ``float8_e8m0fnu``), and for
MXFP4 the E2M1 encoding (threshold counting, ``torch.round`` on the grid, torchao's bit trick,
``torch.bucketize`` on constant boundaries) and the nibble packing. :data:`MX_NEAR_CHANGES`
are the changes that alter the numerics (no clamp, another emax, ties away from zero, ...).

The inputs hold the blocks where spellings part: an all-zero block (exponent clamped to -127),
a block of subnormals, an activation value that overflows to inf, and +inf (never NaN: a NaN
block is where the fused op does not follow eager's undefined byte, ``docs/numerics.md``).
"""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import strategies as st

from quantfuse import catalog
from quantfuse.catalog import MxByte0, MxRounding, Recipe
from spellings import ActSpelling, _act_choices, _act_consistent
from test_recognise_mxfp4 import pack_lanes, pack_pairs, pack_torchao, round_codes, threshold_codes, torchao_codes

FP8 = torch.float8_e4m3fn
MAX = {"e4m3": 448.0, "e2m1": 6.0}
EMAX = {"e4m3": 8, "e2m1": 2}
#: E2M1's round-to-nearest-even thresholds of |v|: a tie rounds up where the code above is even
#: (0.75 -> 1.0, 1.75 -> 2, 3.5 -> 4), so those boundaries are the float just below the tie
_TIES = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_EVEN_BOUNDS = tuple(torch.nextafter(torch.tensor(t), torch.tensor(0.0)).item() if t in (0.75, 1.75, 3.5) else t
                     for t in _TIES)


def bucketize_codes(v, ties_even=True):
    """``torch.bucketize`` of ``|v|`` against a constant boundary tensor; the sign from signbit."""
    b = torch.tensor(_EVEN_BOUNDS if ties_even else _TIES, dtype=torch.float32, device=v.device)
    return torch.bucketize(v.abs(), b).to(torch.uint8) | (torch.signbit(v).to(torch.uint8) << 3)


def sign_lt_codes(v):
    """``v < 0`` for the sign: -0.0 and tiny negatives that round to 0 lose E2M1's sign bit."""
    return round_codes(v.abs()) | ((v < 0).to(torch.uint8) << 3)


ENCODINGS = {"thresholds": threshold_codes, "round": round_codes, "torchao": torchao_codes,
             "bucketize": bucketize_codes,
             # near: other codes
             "ties_away": lambda v: threshold_codes(v, ties_even=False),
             "no_saturation": lambda v: round_codes(v, saturate=False),
             "sign_lt": sign_lt_codes, "bucketize_ties_down": lambda v: bucketize_codes(v, ties_even=False)}
PACKINGS = {"lanes": pack_lanes, "pairs": pack_pairs, "torchao": pack_torchao,
            "lanes_add": lambda c: c[..., ::2] + c[..., 1::2] * 16,
            "lanes_swapped": lambda c: (c[..., 1::2] << 4) | c[..., ::2],
            # near: element 2i in the high nibble
            "high_first": lambda c: (c[..., ::2] << 4) | c[..., 1::2]}


@dataclasses.dataclass(frozen=True)
class MxSpelling(ActSpelling):
    """An MXFP8 / MXFP4 spelling."""

    element: str = "e4m3"           # e4m3 (MXFP8) | e2m1 (MXFP4)
    rounding: str = "rceil"         # rceil | floor | frexp (near: FLOOR read by torch.frexp)
    rceil_form: str = "div"         # div (amax / max) | mul (amax * (1 / max))
    log_form: str = "fn"            # fn (torch.ceil(torch.log2(.))) | method (.log2().ceil())
    group_view: str = "unflatten"   # unflatten | view | reshape
    cast_first: bool = True         # y.float() before the block reshape (else after it)
    amax_in_input: bool = False     # |y| reduced in the input dtype, then .float()
    amax_form: str = "amax"         # amax | values | getitem
    exp_clamp: str = "clamp"        # clamp | kw | chain | chain_rev | torch | none, wide (near)
    emax_delta: int = 0             # near: FLOOR's emax off by this
    divisor_delta: float = 0.0      # near: RCEIL's max off by this
    scale_form: str = "exp2"        # exp2 | pow (2 ** e) | pow_fn (torch.pow(2, e))
    apply: str = "div"              # div | one_over (y * (1 / s)) | recip (y * s.reciprocal()) | times_neg (y * exp2(-e))
    elem_clamp: str = "clamp"       # clamp | kw | none (MXFP8: near unless torch's cast saturates; MXFP4: the encodings saturate)
    bytes_form: str = "squeeze_first"  # squeeze_first | squeeze_after | e8m0_view | e8m0_cast
    q_out: str = "flatten"          # flatten | reshape
    encoding: str = "round"         # ENCODINGS
    packing: str = "lanes"          # PACKINGS
    block: int = 32                 # 16 (near: not an MX block)

    def make_inputs(self, tiny: bool = True):
        """The inputs; ``tiny=False`` leaves out the bf16 block of subnormals, the one block whose
        nonzero amax (2^-129) clamps the exponent to -127, where CUDA's ``exp2(-127)`` is not
        2^-127 (docs/numerics.md, "CUDA's 2^-127")."""
        g = self._generator()
        shape = (2, 3) if self.three_d else (5,)
        w = self.width
        # twelve decades (bf16), eight (fp16: no -inf gate, whose SiLU is NaN)
        gate = torch.randn(*shape, w, generator=g) * (torch.logspace(-6, 6, w) if self.dtype == torch.bfloat16
                                                      else torch.logspace(-4, 4, w))
        up = torch.randn(*shape, w, generator=g) * 3
        gate[..., :32] = 0                           # an all-zero block: exponent -127
        fin = torch.finfo(self.dtype)
        if tiny or self.dtype != torch.bfloat16:
            gate[..., 32:64] = fin.tiny / 4          # subnormals
            up[..., 32:64] = 1.0
        gate[..., 70], up[..., 70] = fin.max / 2, 3.0  # overflows to inf in the product
        gate[..., 100], up[..., 100] = float("inf"), 0.5
        gate, up = gate.to(self.dtype), up.to(self.dtype)
        if self.act == "relu2":
            return (gate,)
        if self.layout == "separate":
            return gate, up
        if self.layout == "interleaved":
            return (torch.stack((gate, up), dim=-1).flatten(-2),)
        return (torch.cat((gate, up), dim=-1),)

    # --- the code --------------------------------------------------------------------------
    def _log(self, t, fn):
        return getattr(t.log2(), fn)() if self.log_form == "method" else getattr(torch, fn)(torch.log2(t))

    def _exponent(self, amax):
        mx = MAX[self.element]
        if self.rounding == "rceil":
            mx += self.divisor_delta
            r = amax / mx if self.rceil_form == "div" else amax * (1 / mx)
            return self._log(r, "ceil")
        emax = EMAX[self.element] + self.emax_delta
        if self.rounding == "frexp":
            return (torch.frexp(amax)[1] - 1 - emax).float()
        return self._log(amax, "floor") - emax

    def _clamp_exponent(self, e):
        c = self.exp_clamp
        if c == "clamp":
            return e.clamp(-127, 127)
        if c == "kw":
            return torch.clamp(e, min=-127, max=127)
        if c == "chain":
            return e.clamp_min(-127).clamp_max(127)
        if c == "chain_rev":
            return e.clamp(max=127).clamp(min=-127)
        if c == "torch":
            return torch.clamp(e, -127.0, 127.0)
        if c == "wide":
            return e.clamp(-127, 128)
        return e

    def fn(self, *xs):
        y = self._activation(*xs)
        if self.flatten_first:
            y = y.reshape(-1, y.shape[-1])
        h, b = y.shape[-1], self.block
        work = y.float() if self.cast_first else y
        blocks = {"view": lambda t: t.view(-1, h // b, b), "unflatten": lambda t: t.unflatten(-1, (-1, b)),
                  "reshape": lambda t: t.reshape(*t.shape[:-1], h // b, b)}[self.group_view](work)
        a = (blocks if self.amax_in_input or self.cast_first else blocks.float()).abs()
        if self.amax_form == "amax":
            amax = a.amax(dim=-1, keepdim=True)
        elif self.amax_form == "values":
            amax = a.max(dim=-1, keepdim=True).values
        else:
            amax = torch.max(a, -1, True)[0]
        e = self._clamp_exponent(self._exponent(amax.float()))
        s = {"exp2": lambda: torch.exp2(e), "pow": lambda: 2 ** e, "pow_fn": lambda: torch.pow(2, e)}[self.scale_form]()
        v = blocks.float()
        v = {"div": lambda: v / s, "one_over": lambda: v * (1 / s), "recip": lambda: v * s.reciprocal(),
             "times_neg": lambda: v * (torch.exp2(-e) if self.scale_form == "exp2" else 2 ** -e)}[self.apply]()
        mx = MAX[self.element]
        if self.elem_clamp == "clamp":
            v = v.clamp(-mx, mx)
        elif self.elem_clamp == "kw":
            v = torch.clamp(v, min=-mx, max=mx)
        if self.element == "e4m3":
            q = v.to(FP8)
            q = q.flatten(-2) if self.q_out == "flatten" else q.reshape(*y.shape[:-1], h)
        else:
            codes = ENCODINGS[self.encoding](v.reshape(y.shape) if self.q_out == "reshape" else v.flatten(-2))
            q = PACKINGS[self.packing](codes)
        if self.bytes_form == "squeeze_first":
            sb = (e.squeeze(-1) + 127).to(torch.uint8)
        elif self.bytes_form == "squeeze_after":
            sb = (e + 127).to(torch.uint8).squeeze(-1)
        elif self.bytes_form == "e8m0_view":
            sb = (e + 127).to(torch.uint8).squeeze(-1).view(torch.float8_e8m0fnu)
        else:
            sb = s.squeeze(-1).to(torch.float8_e8m0fnu)
        return q, sb.reshape(*y.shape[:-1], h // b)

    # --- what it computes ------------------------------------------------------------------
    @property
    def scheme(self) -> catalog.Scheme:
        return catalog.MXFP8 if self.element == "e4m3" else catalog.MXFP4

    def recipe(self) -> Recipe | None:
        """The recipe this spelling computes, or None (a near-spelling no recipe computes)."""
        if self.dtype == torch.float32 or self.rounding == "frexp" or self.exp_clamp in ("none", "wide") \
                or self.emax_delta or self.divisor_delta or self.block != catalog.MX_BLOCK:
            return None
        if self.element == "e4m3" and self.elem_clamp == "none" and not catalog.E4M3_CAST_SATURATES:
            return None  # where torch's cast saturates, the unclamped elements are the clamped recipe
        if self.element == "e2m1" and (self.encoding not in ("thresholds", "round", "torchao", "bucketize")
                                       or self.packing == "high_first"):
            return None
        if self.apply == "times_neg":
            if self.scale_form != "exp2":
                return None  # y * 2 ** -e: no recipe has the device's pow(2., -127.) as an inf block's factor
            # exp2(-e): exact but for an inf block's exp2(-127.), the device's
            return dataclasses.replace(self.scheme.base, mx_rounding=MxRounding(self.rounding),
                                       mx_inf=catalog.MxInf.EXP2)
        # a byte-0 block's scale is the device's exp2(-127.) / pow(2., -127.)
        return dataclasses.replace(self.scheme.base, mx_rounding=MxRounding(self.rounding),
                                   mx_byte0=MxByte0.EXP2 if self.scale_form == "exp2" else MxByte0.POW)


def _base():
    act = _act_choices()
    act["dtype"] = st.sampled_from([torch.bfloat16, torch.bfloat16, torch.float16])
    return st.builds(
        MxSpelling, **act,
        element=st.sampled_from(["e4m3", "e2m1"]), rounding=st.sampled_from(["rceil", "floor"]),
        rceil_form=st.sampled_from(["div", "div", "mul"]), log_form=st.sampled_from(["fn", "method"]),
        group_view=st.sampled_from(["unflatten", "view", "reshape"]), cast_first=st.booleans(),
        amax_in_input=st.booleans(), amax_form=st.sampled_from(["amax", "values", "getitem"]),
        exp_clamp=st.sampled_from(["clamp", "kw", "chain", "chain_rev", "torch"]),
        scale_form=st.sampled_from(["exp2", "exp2", "pow", "pow_fn"]),
        apply=st.sampled_from(["div", "div", "one_over", "recip", "times_neg"]),
        elem_clamp=st.sampled_from(["clamp", "kw", "none"]),
        bytes_form=st.sampled_from(["squeeze_first", "squeeze_after", "e8m0_view", "e8m0_cast"]),
        q_out=st.sampled_from(["flatten", "reshape"]),
        encoding=st.sampled_from(["thresholds", "round", "torchao", "bucketize"]),
        packing=st.sampled_from(["lanes", "pairs", "torchao", "lanes_add", "lanes_swapped"]),
    )


def _consistent(s: MxSpelling, near: bool = False) -> MxSpelling:
    s = _act_consistent(s)
    if s.group_view == "view" and s.three_d and not s.flatten_first:
        s = dataclasses.replace(s, group_view="unflatten")  # view(-1, G, 32) flattens the tokens
    if s.element == "e4m3" and s.elem_clamp == "none" and not near:
        s = dataclasses.replace(s, elem_clamp="clamp")  # MXFP8 without the clamp is a near-spelling
    if s.apply == "times_neg" and not near:
        s = dataclasses.replace(s, scale_form="exp2")  # y * 2 ** -e is a near-spelling
    if s.apply == "times_neg" and s.bytes_form == "e8m0_cast":
        # the bytes from a second power exp2(e) beside the multiplier exp2(-e): the exponent has a
        # consumer outside the site (reported as such); the bytes are e + 127 here
        s = dataclasses.replace(s, bytes_form="squeeze_first")
    return s


def mx_spellings():
    """Equivalent spellings of MXFP8 / MXFP4 (each computes ``recipe()``)."""
    return _base().map(_consistent)


#: the changes of :func:`mx_near_spellings`, each with what its near miss's reason says (a
#: regular expression: the first thing that does not fit)
MX_NEAR_CHANGES = [
    ({"exp_clamp": "none"}, r"the MX exponent is not clamped to \[-127, 127\]"),
    ({"exp_clamp": "wide"}, r"the MX exponent is not clamped to \[-127, 127\]"),
    ({"rounding": "floor", "emax_delta": 1}, r"the MX exponent is floor\(log2\(amax\)\) - (9|3)\.0, not - (8|2)"),
    ({"rounding": "floor", "emax_delta": -1}, r"the MX exponent is floor\(log2\(amax\)\) - (7|1)\.0, not - (8|2)"),
    ({"rounding": "rceil", "divisor_delta": -1.0}, r"the MX exponent is ceil\(log2\(.*(447|5)\.0"),
    ({"rounding": "frexp"}, r"the exponent is read by torch\.frexp"),
    # y * 2 ** -e: the device's pow(2., -127.) as an inf block's factor is no recipe's
    ({"apply": "times_neg", "scale_form": "pow"}, r"(is not y / scale or y \* \(1 / scale\)|not the E8M0 bytes)"),
    ({"dtype": torch.float32}, r"MX of a float32 activation"),
    ({"block": 16}, r"(power of two 2\^e over groups of 16|over groups of \[16\])"),
    # where torch's cast saturates (catalog.E4M3_CAST_SATURATES) no clamp is the clamped recipe: fused
    ({"element": "e4m3", "elem_clamp": "none"},
     None if catalog.E4M3_CAST_SATURATES else r"the MX elements are not clamped to \[-448\.0, 448\.0\]"),
    ({"element": "e4m3", "rounding": "floor", "elem_clamp": "none"},
     None if catalog.E4M3_CAST_SATURATES else r"the MX elements are not clamped"),
    ({"element": "e2m1", "encoding": "ties_away"}, r"rounds ties away from zero"),
    ({"element": "e2m1", "encoding": "no_saturation", "elem_clamp": "none"}, r"does not saturate at ±6"),
    ({"element": "e2m1", "encoding": "sign_lt"}, r"sets the sign bit unlike E2M1's sign"),
    ({"element": "e2m1", "encoding": "bucketize_ties_down"}, r"rounds ties toward zero"),
    ({"element": "e2m1", "packing": "high_first"}, r"element 2i in the high nibble"),
]


def mx_near_spellings(change: dict):
    """MX spellings with ``change`` (one of :data:`MX_NEAR_CHANGES`), which alters the numerics."""
    return mx_spellings().map(lambda s: _consistent(dataclasses.replace(s, **change), near=True))
