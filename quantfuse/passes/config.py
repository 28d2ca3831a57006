"""Configuration of the fusion pass: one frozen dataclass, part of the pass's uuid."""

from __future__ import annotations

import dataclasses

import torch

from quantfuse.custom_ops import ops as qops


#: every (activation, scheme) pair of the op tables
ALL_PAIRS = tuple((act, scheme) for act in qops.ACTIVATIONS for scheme in qops.SCHEMES)

#: pairs whose fused CUDA kernel beat Inductor's own code for the plain-PyTorch graph on
#: the H100 at T >= 4096 (benchmarks/RESULTS.md): since the CUDA kernels, every pair
#: (FP8 / MXFP8 1.01-1.79x, MXFP4 2.1-4.1x). With only the Triton backend (no CUDA
#: toolchain) several are slower than Inductor: use :data:`PROFITABLE_NATIVE_TRITON`.
PROFITABLE_NATIVE = ALL_PAIRS

#: the pairs whose Triton kernel (the backend without a CUDA toolchain) was at least as
#: fast as Inductor's code for the native graph on the H100 at T >= 4096 (RESULTS.md, % of
#: copy bandwidth, Triton vs Inductor): MXFP4 47-63% vs 25-35%, ReLU² -> MXFP8 88-100% vs
#: 74-91%, ReLU² -> FP8 per-token 81-92% vs 54-70% and SiLU x Mul -> FP8 per-group 58-70%
#: vs 52-56% (both since the one-reciprocal division, seventh session). Left out: ReLU² ->
#: FP8 per-group (75-93% vs 64-95%: below on three of four cells), SiLU x Mul -> MXFP8
#: (59-81% vs 78-93%) and per-token (48-51% vs 59-63% at H = 7168).
PROFITABLE_NATIVE_TRITON = (("silu_and_mul", "fp8_per_group"), ("relu2", "fp8_per_token"), ("relu2", "mxfp8"),
                            ("silu_and_mul", "mxfp4"), ("relu2", "mxfp4"))


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
            after into a numbered sub-folder (also ``QUANTFUSE_DUMP_DIR``).
    """

    fusions: tuple[tuple[str, str], ...] = ALL_PAIRS
    native_fusions: tuple[tuple[str, str], ...] = PROFITABLE_NATIVE
    forms: tuple[str, ...] = ("op", "native")
    group_sizes: tuple[int, ...] = (64, 128)
    dtypes: tuple[str, ...] = ("bfloat16", "float16", "float32")
    dump_dir: str | None = None

    def __post_init__(self):
        for act, scheme in self.fusions + self.native_fusions:
            if act not in qops.ACTIVATIONS or scheme not in qops.SCHEMES:
                raise ValueError(f"unknown fusion ({act!r}, {scheme!r}); activations: "
                                 f"{sorted(qops.ACTIVATIONS)}, schemes: {sorted(qops.SCHEMES)}")
        bad = set(self.forms) - {"op", "native"}
        if bad:
            raise ValueError(f"unknown pattern forms {sorted(bad)}; expected 'op' and/or 'native'")
        for name in self.dtypes:
            if not isinstance(getattr(torch, name, None), torch.dtype):
                raise ValueError(f"unknown dtype name {name!r}")

    @property
    def torch_dtypes(self) -> tuple[torch.dtype, ...]:
        return tuple(getattr(torch, name) for name in self.dtypes)

    def pattern_key(self) -> "FusionConfig":
        """The config with fields that do not affect matching cleared (pattern cache key)."""
        return dataclasses.replace(self, dump_dir=None)
