"""Configuration of the fusion pass: one frozen dataclass, part of the pass's uuid."""

from __future__ import annotations

import dataclasses
import os

import torch

from quantfuse import catalog, quant_keys
from quantfuse.custom_ops import ops as qops

#: every (activation, scheme) pair of the catalog
ALL_PAIRS = catalog.PAIRS

#: pairs whose native (plain-PyTorch) form is fused by default: those where the fused CUDA
#: kernel beat Inductor's own code for the native graph (docs/decisions/013-native-fusion-defaults.md),
#: which today is every pair
PROFITABLE_NATIVE = ALL_PAIRS

#: the pairs whose Triton kernel (used where no CUDA toolchain builds the CUDA kernels)
#: beat Inductor's code for the native graph (docs/decisions/013-native-fusion-defaults.md,
#: 010-triton-markstein-division.md); the others are
#: faster left to Inductor on such machines
PROFITABLE_NATIVE_TRITON = (("silu_and_mul", "fp8_per_group"), ("relu2", "fp8_per_token"), ("relu2", "mxfp8"),
                            ("silu_and_mul", "mxfp4"), ("relu2", "mxfp4"))


def _pairs(value, name: str) -> tuple[tuple[str, str], ...]:
    """``value`` as a tuple of (activation, scheme) tuples; lists accepted at every level."""
    try:
        pairs = tuple(tuple(p) for p in value)
    except TypeError:
        raise TypeError(f"FusionConfig.{name} must be a sequence of (activation, scheme) pairs, "
                        f"got {value!r}") from None
    for p in pairs:
        if len(p) != 2 or not all(isinstance(v, str) for v in p):
            raise TypeError(f"FusionConfig.{name}: {p!r} is not an (activation, scheme) pair of names")
    return pairs


def _names(value, name: str, kind=str) -> tuple:
    """``value`` as a tuple of ``kind`` (a list, or a single value, accepted)."""
    if isinstance(value, (str, int, torch.dtype)):
        value = (value,)  # a single value where a sequence belongs: one-element tuple
    out = tuple(value)
    for v in out:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise TypeError(f"FusionConfig.{name}: {v!r} is not a {kind.__name__}")
    return out


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """What :class:`quantfuse.FusionPass` may rewrite.

    Attributes:
        fusions: (activation, scheme) pairs to fuse, keys of ``quantfuse.custom_ops``'s
            ``ACTIVATIONS`` and ``SCHEMES`` tables. Default: all of them.
        native_fusions: the pairs among ``fusions`` whose plain-PyTorch spelling is fused
            too. Default: :data:`PROFITABLE_NATIVE`, where the fused kernel beats
            Inductor's code for the native graph; pass :data:`ALL_PAIRS` for every pair.
        forms: ``"op"`` (quantfuse ops called by the model) and/or ``"native"``
            (the same maths in plain PyTorch).
        group_sizes: FP8 per-group sizes to fuse (the fused kernels' sizes).
        dtypes: activation input dtypes to fuse, by name.
        dump_dir: if set, each pass run writes its report and the graphs before and
            after into a new sub-folder (also ``QUANTFUSE_DUMP_DIR``).
        native_on_cpu: rewrite plain-PyTorch sites of CPU graphs as well. Off by default:
            there the fused op runs the torch reference, slower than Inductor's C++ code
            (the report says "kept for speed"); ``QUANTFUSE_NATIVE_ON_CPU=1`` sets it.
        patterns: pattern family names, vLLM's where vLLM has them
            (``["SiluMulBlockQuantPattern", "SiluMulFp8StaticQuantPattern"]``,
            :data:`quantfuse.quant_keys.PATTERNS`): only their pairs are fused. Default: no narrowing.
        planned_outputs: leave each quantfuse call of a CUDA graph as its ``out`` overload on
            buffers Inductor allocates (``quantfuse.passes.planned_outputs``: less host time per
            call). On by default; ``QUANTFUSE_PLANNED_OUTPUTS=0`` turns it off.
        speed_table: keep native sites of GPU graphs where the benchmark records measured the
            fused op slower at their size (``quantfuse.passes.profitability.measured_reason``). On by
            default; ``QUANTFUSE_SPEED_TABLE=0`` turns it off.
        cuda_graphs: whether the compiled graph is replayed in a CUDA graph, which the speed table's
            rule weighs (kernel time only, or kernel and host time). None: Inductor's
            ``triton.cudagraphs`` (``mode="reduce-overhead"``); say True where something else
            captures the graph (vLLM's own CUDA graphs).
        quant_keys: vLLM quant key names or :class:`quantfuse.quant_keys.QuantKey` constants
            (``[kFp8Dynamic128Sym]``): only sites quantised as one of them are fused (a group
            key also narrows ``group_sizes``). Default: no narrowing. With ``patterns``: both hold.

    Lists are accepted wherever tuples are shown (stored as tuples: the config is
    hashed into the pass's uuid); values the fused kernels do not support raise a
    ``ValueError`` that lists the supported ones.
    """

    fusions: tuple[tuple[str, str], ...] = ALL_PAIRS
    native_fusions: tuple[tuple[str, str], ...] = PROFITABLE_NATIVE
    forms: tuple[str, ...] = ("op", "native")
    group_sizes: tuple[int, ...] = catalog.FP8_GROUP_SIZES
    dtypes: tuple[str, ...] = ("bfloat16", "float16", "float32")
    dump_dir: str | None = None
    #: rewrite native sites of CPU graphs too (slower there than Inductor's own code:
    #: quantfuse.passes.profitability); None: ``QUANTFUSE_NATIVE_ON_CPU=1``
    native_on_cpu: bool | None = None
    #: vLLM-style pattern family names (quantfuse.quant_keys.PATTERNS); None: every family
    patterns: tuple[str, ...] | None = None
    #: vLLM quant key names (quantfuse.quant_keys.QUANT_KEYS); None: every key
    quant_keys: tuple[str, ...] | None = None
    #: the fused calls' outputs planned by Inductor (quantfuse.passes.planned_outputs); None:
    #: on unless ``QUANTFUSE_PLANNED_OUTPUTS=0``
    planned_outputs: bool | None = None
    #: the measured profitability rule (quantfuse.passes.profitability.measured_reason); None: on
    #: unless ``QUANTFUSE_SPEED_TABLE=0``
    speed_table: bool | None = None
    #: the graph is replayed in a CUDA graph; None: Inductor's ``triton.cudagraphs`` at pass time
    cuda_graphs: bool | None = None

    def __post_init__(self):
        if self.native_on_cpu is None:
            object.__setattr__(self, "native_on_cpu", os.environ.get("QUANTFUSE_NATIVE_ON_CPU", "") == "1")
        if self.planned_outputs is None:
            object.__setattr__(self, "planned_outputs", os.environ.get("QUANTFUSE_PLANNED_OUTPUTS", "1") != "0")
        if self.speed_table is None:
            object.__setattr__(self, "speed_table", os.environ.get("QUANTFUSE_SPEED_TABLE", "1") != "0")
        # frozen: normalise through object.__setattr__ so lists hash (the config keys a cache)
        object.__setattr__(self, "fusions", _pairs(self.fusions, "fusions"))
        object.__setattr__(self, "native_fusions", _pairs(self.native_fusions, "native_fusions"))
        object.__setattr__(self, "forms", _names(self.forms, "forms"))
        object.__setattr__(self, "group_sizes", _names(self.group_sizes, "group_sizes", int))
        object.__setattr__(self, "dtypes", tuple(str(d).replace("torch.", "") for d in _names(
            self.dtypes, "dtypes", (str, torch.dtype))))
        for act, scheme in self.fusions + self.native_fusions:
            if act not in qops.ACTIVATIONS or scheme not in qops.SCHEMES:
                raise ValueError(f"unknown fusion ({act!r}, {scheme!r}); activations: "
                                 f"{sorted(qops.ACTIVATIONS)}, schemes: {sorted(qops.SCHEMES)}")
        bad = set(self.forms) - {"op", "native"}
        if bad:
            raise ValueError(f"unknown pattern forms {sorted(bad)}; expected 'op' and/or 'native'")
        supported = {str(d).replace("torch.", "") for d in catalog.INPUT_DTYPES}
        for name in self.dtypes:
            if not isinstance(getattr(torch, name, None), torch.dtype):
                raise ValueError(f"unknown dtype name {name!r}")
            if name not in supported:
                raise ValueError(f"dtype {name!r} is not supported by the fused kernels "
                                 f"(supported: {', '.join(sorted(supported))})")
        bad = sorted(set(self.group_sizes) - set(catalog.FP8_GROUP_SIZES))
        if bad:
            raise ValueError(f"group size(s) {bad} are not supported by the fused kernels "
                             f"(supported: {', '.join(map(str, catalog.FP8_GROUP_SIZES))})")
        self._narrow_by_vllm_names()

    def _narrow_by_vllm_names(self) -> None:
        """Apply ``patterns`` / ``quant_keys`` to ``fusions``, ``native_fusions`` and ``group_sizes``.

        Idempotent (``dataclasses.replace`` runs it again on the narrowed fields)."""
        for name in ("patterns", "quant_keys"):
            value = getattr(self, name)
            if value is not None:
                # QuantKey / FamilyName objects stand for their names (the config is hashed)
                value = (value,) if isinstance(value, (str, quant_keys.QuantKey, quant_keys.FamilyName)) \
                    else tuple(value)
                object.__setattr__(self, name, tuple(getattr(v, "name", v) for v in value))
                _names(getattr(self, name), name)
        pairs, sizes = quant_keys.select(self.patterns, self.quant_keys)
        if pairs is not None:
            object.__setattr__(self, "fusions", tuple(p for p in self.fusions if p in pairs))
            object.__setattr__(self, "native_fusions", tuple(p for p in self.native_fusions if p in pairs))
            if not self.fusions:
                raise ValueError(f"FusionConfig(patterns={self.patterns}, quant_keys={self.quant_keys}) "
                                 "selects no (activation, scheme) pair of fusions")
        if sizes is not None:
            object.__setattr__(self, "group_sizes", tuple(g for g in self.group_sizes if g in sizes))
            if not self.group_sizes and any(s == "fp8_per_group" for _, s in self.fusions):
                raise ValueError(f"quant_keys={self.quant_keys} select group sizes {sorted(sizes)}, "
                                 "none of them in group_sizes")

    @property
    def torch_dtypes(self) -> tuple[torch.dtype, ...]:
        """:attr:`dtypes` as ``torch.dtype`` objects."""
        return tuple(getattr(torch, name) for name in self.dtypes)

    def pattern_key(self) -> "FusionConfig":
        """The config with fields that do not affect matching cleared (pattern cache key)."""
        return dataclasses.replace(self, dump_dir=None)
