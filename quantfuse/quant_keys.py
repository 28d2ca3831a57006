"""vLLM's names for what quantfuse fuses: quant keys and pattern families, for people coming from vLLM.

vLLM describes a quantisation with a ``QuantKey`` (element dtype, scale group shape, static
or dynamic, symmetric; ``vllm/model_executor/layers/quantization/utils/quant_utils.py``) and
its activation -> quant fusions with one pattern class per family
(``vllm/compilation/activation_quant_fusion.py``: ``SiluMulFp8StaticQuantPattern``,
``SiluMulBlockQuantPattern(quant_key, is_scale_transposed, is_e8m0)``,
``SiluMulNvfp4QuantPattern``). Here both are data over the catalog:

* :class:`QuantKey` constants under vLLM's names (``kFp8Dynamic128Sym``, ``kFp8Dynamic64Sym``,
  ``kFp8DynamicTokenSym``, ``kFp8DynamicTensorSym``, ``kFp8StaticTensorSym``, ``kMxfp8Dynamic``,
  ``kMxfp4Dynamic``), each
  one catalog scheme (and group size);
* :class:`FamilyName` entries, one per catalog (activation, scheme) pair, built as vLLM
  builds its class names (activation, then the quantisation, then ``Pattern``): the two
  families vLLM has are spelled exactly as vLLM spells them, the others follow the same
  style and say so (``in_vllm``).

``FusionConfig(patterns=[...], quant_keys=[...])`` selects by these names; every report
``Rewrite`` carries them (``vllm_pattern``, ``quant_key``); ``quantfuse.list_patterns()`` lists
them. Names vLLM has and quantfuse cannot fuse are known too, so that choosing one fails
with the reason rather than "unknown name".

This module imports only the catalog.
"""

from __future__ import annotations

import dataclasses

from quantfuse import catalog


@dataclasses.dataclass(frozen=True)
class QuantKey:
    """A quantisation under its vLLM name, mapped to one catalog scheme (and group size)."""

    name: str
    #: catalog scheme key (``catalog.SCHEMES``)
    scheme: str
    #: per-group keys: their one group size; 0: the scheme's own grouping
    group_size: int = 0
    doc: str = ""

    @property
    def recipe(self) -> catalog.Recipe:
        """The catalog recipe of this key with every op parameter at its default."""
        base = catalog.SCHEMES[self.scheme].base
        return dataclasses.replace(base, group_size=self.group_size) if self.group_size else base

    def covers(self, scheme: str, group_size: int | None = None) -> bool:
        """Whether a site of ``scheme`` (per group: of ``group_size``) is quantised as this key."""
        return scheme == self.scheme and (not self.group_size or group_size == self.group_size)

    def __str__(self) -> str:
        return self.name


kFp8Dynamic128Sym = QuantKey("kFp8Dynamic128Sym", "fp8_per_group", 128,
                             "FP8 E4M3, dynamic, one fp32 scale per 1x128 group of a token, symmetric")
kFp8Dynamic64Sym = QuantKey("kFp8Dynamic64Sym", "fp8_per_group", 64,
                            "FP8 E4M3, dynamic, one fp32 scale per 1x64 group of a token, symmetric")
kFp8DynamicTokenSym = QuantKey("kFp8DynamicTokenSym", "fp8_per_token", 0,
                               "FP8 E4M3, dynamic, one fp32 scale per token, symmetric")
kFp8StaticTensorSym = QuantKey("kFp8StaticTensorSym", "fp8_static", 0,
                               "FP8 E4M3, static: one given fp32 scale for the tensor, symmetric")
kFp8DynamicTensorSym = QuantKey("kFp8DynamicTensorSym", "fp8_per_tensor", 0,
                                "FP8 E4M3, dynamic, one fp32 scale for the tensor (its amax), symmetric")
kMxfp8Dynamic = QuantKey("kMxfp8Dynamic", "mxfp8", 0,
                         "OCP MXFP8: E4M3 with one E8M0 scale byte per 1x32 block, dynamic")
kMxfp4Dynamic = QuantKey("kMxfp4Dynamic", "mxfp4", 0,
                         "OCP MXFP4: E2M1 (packed two a byte) with one E8M0 scale byte per 1x32 block, dynamic")

#: every key quantfuse fuses, by name
QUANT_KEYS: dict[str, QuantKey] = {k.name: k for k in (
    kFp8Dynamic128Sym, kFp8Dynamic64Sym, kFp8DynamicTokenSym, kFp8DynamicTensorSym, kFp8StaticTensorSym,
    kMxfp8Dynamic, kMxfp4Dynamic)}

#: vLLM keys with no fused op here, and why (choosing one raises with this reason)
UNSUPPORTED_KEYS: dict[str, str] = {
    "kFp8StaticTokenSym": "static per-token scales are not a catalog recipe",
    "kFp8StaticChannelSym": "per-channel scales quantise weights, not activations",
    "kFp8Static128BlockSym": "128x128 block scales quantise weights, not activations",
    "kFp8Dynamic128x128Sym": "128x128 block scales quantise weights, not activations",
    "kNvfp4Dynamic": "NVFP4 (E2M1 with FP8 scales per 16 and a global scale) is not in the catalog",
    "kNvfp4Static": "NVFP4 (E2M1 with FP8 scales per 16 and a global scale) is not in the catalog",
}

# the quantisation part of a family's class name, per scheme; vLLM's for the two it has
_SCHEME_PART = {"fp8_per_group": "BlockQuant", "fp8_static": "Fp8StaticQuant",
                "fp8_per_token": "Fp8DynamicTokenQuant", "fp8_per_tensor": "Fp8DynamicTensorQuant", "mxfp8": "Mxfp8Quant", "mxfp4": "Mxfp4Quant"}
#: the family classes of vLLM's activation_quant_fusion.py that quantfuse fuses
VLLM_CLASSES = frozenset({"SiluMulBlockQuantPattern", "SiluMulFp8StaticQuantPattern"})
#: vLLM families with no fused op here, and why
UNSUPPORTED_PATTERNS: dict[str, str] = {"SiluMulNvfp4QuantPattern": UNSUPPORTED_KEYS["kNvfp4Dynamic"]}


@dataclasses.dataclass(frozen=True)
class FamilyName:
    """One (activation, scheme) pair of the catalog under a vLLM-style class name."""

    name: str
    activation: str
    scheme: str
    #: the quant keys the family fuses (SiluMulBlockQuantPattern: the 128 and 64 group keys)
    keys: tuple[QuantKey, ...]
    #: vLLM has a pattern class of this name (else: quantfuse's name, in vLLM's style)
    in_vllm: bool

    @property
    def fused_op(self) -> str:
        """The fused op's name (without namespace)."""
        return catalog.fused_op_name(self.activation, self.scheme)

    def describe(self, key: QuantKey, params: dict) -> str:
        """The family as vLLM would construct it for one site: ``SiluMulBlockQuantPattern(kFp8Dynamic128Sym,
        is_scale_transposed=True, is_e8m0=False)`` (vLLM's arguments; other families take the key only)."""
        args = [key.name]
        if self.scheme == "fp8_per_group":
            args += [f"is_scale_transposed={bool(params.get('column_major_scales', False))}",
                     f"is_e8m0={bool(params.get('use_ue8m0', False))}"]
        return f"{self.name}({', '.join(args)})"


def _families() -> dict[str, FamilyName]:
    out = {}
    for act, scheme in catalog.PAIRS:
        name = f"{catalog.ACTIVATIONS[act].cname}{_SCHEME_PART.get(scheme, catalog._camel(scheme) + 'Quant')}Pattern"
        keys = tuple(k for k in QUANT_KEYS.values() if k.scheme == scheme)
        out[name] = FamilyName(name, act, scheme, keys, name in VLLM_CLASSES)
    return out


#: every pattern family, by class name, in catalog pair order
PATTERNS: dict[str, FamilyName] = _families()
_BY_PAIR = {(f.activation, f.scheme): f for f in PATTERNS.values()}


def _lookup(name, table: dict, unsupported: dict[str, str], what: str):
    name = getattr(name, "name", name)  # a QuantKey / FamilyName object stands for its name
    if name in table:
        return table[name]
    if name in unsupported:
        raise ValueError(f"{what} {name!r} is vLLM's but quantfuse cannot fuse it: {unsupported[name]}")
    raise ValueError(f"unknown {what} {name!r}; known: {', '.join(table)}")


def quant_key(name) -> QuantKey:
    """The :class:`QuantKey` of a vLLM key name; ValueError names the known ones (or why vLLM's is not fused)."""
    return _lookup(name, QUANT_KEYS, UNSUPPORTED_KEYS, "quant key")


def pattern(name) -> FamilyName:
    """The :class:`FamilyName` of a class name; ValueError names the known ones (or why vLLM's is not fused)."""
    return _lookup(name, PATTERNS, UNSUPPORTED_PATTERNS, "pattern family")


def family(activation: str, scheme: str) -> FamilyName | None:
    """The family of an (activation, scheme) pair, None for a pair the catalog does not list."""
    return _BY_PAIR.get((activation, scheme))


def key_for(scheme: str, params: dict) -> QuantKey | None:
    """The key a site of ``scheme`` with these op parameters is quantised as (None: no key names it)."""
    group = params.get("group_size")
    return next((k for k in QUANT_KEYS.values() if k.covers(scheme, group)), None)


def names_for(activation: str, scheme: str, params: dict) -> tuple[str, str, str]:
    """``(family name, key name, vLLM-style construction)`` of one fused site, "" where none names it."""
    fam, key = family(activation, scheme), key_for(scheme, params)
    if fam is None or key is None:
        return (fam.name if fam else "", key.name if key else "", "")
    return fam.name, key.name, fam.describe(key, params)


def select(patterns, keys) -> tuple[set[tuple[str, str]] | None, set[int] | None]:
    """The (activation, scheme) pairs and FP8 group sizes that ``FusionConfig(patterns=, quant_keys=)``
    allow (None: that field does not narrow); ValueError for an unknown or unfusable name."""
    pairs, sizes = None, None
    if patterns is not None:
        pairs = {(f.activation, f.scheme) for f in map(pattern, patterns)}
    if keys is not None:
        chosen = [quant_key(k) for k in keys]
        by_key = {(a, s) for a, s in catalog.PAIRS if any(k.scheme == s for k in chosen)}
        pairs = by_key if pairs is None else pairs & by_key
        groups = {k.group_size for k in chosen if k.group_size}
        sizes = groups or None
    return pairs, sizes
