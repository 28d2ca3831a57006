"""``cuda`` backend: the compiled ``csrc/`` kernels, built lazily for the running GPU.

The extension is JIT-built with :func:`torch.utils.cpp_extension.load` on first use
into a persistent cache (``$QUANTFUSE_CACHE_DIR`` or ``~/.cache/quantfuse``), in a
folder keyed by a hash of the sources, the torch/CUDA versions and the GPU arch, so
a rebuild happens only when one of those changes. Any failure (no CUDA, no nvcc,
compile error) is logged once as a warning and the backend reports itself
unavailable; nothing here raises into the caller except a call made after
:func:`is_available` returned False.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from quantfuse.custom_ops import kernel_inputs

NAME = "cuda"

log = logging.getLogger("quantfuse.cuda")

OPS = ("silu_and_mul", "per_token_group_quant_fp8", "silu_and_mul_per_block_quant")
SUPPORTED_DTYPES = kernel_inputs.SUPPORTED_DTYPES
SUPPORTED_GROUPS = kernel_inputs.FP8_GROUPS
_SOURCES = ("act_quant.cu", "act_quant_f32.cu", "act_quant_f16.cu", "act_quant_bf16.cu", "bindings.cpp")

_lock = threading.Lock()
_module: ModuleType | None = None
_failed: str | None = None


def csrc_dir() -> Path | None:
    """Folder holding the CUDA sources: ``<repo>/csrc`` (editable install) or
    ``quantfuse/_csrc`` (wheel). None if neither exists."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "csrc", here.parents[1] / "_csrc"):
        if all((cand / f).is_file() for f in _SOURCES):
            return cand
    return None


def _arch() -> tuple[int, int]:
    return torch.cuda.get_device_capability()


def _build_dir(src: Path, arch: tuple[int, int]) -> tuple[Path, str]:
    h = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.suffix in (".cu", ".cuh", ".cpp", ".h"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    h.update(f"{torch.__version__}|{torch.version.cuda}|sm_{arch[0]}{arch[1]}".encode())
    key = h.hexdigest()[:16]
    root = Path(os.environ.get("QUANTFUSE_CACHE_DIR") or Path.home() / ".cache" / "quantfuse")
    return root / f"cuda_{key}", key


def _load() -> ModuleType | None:
    """Build (or load the cached build of) the extension; None on any failure."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    with _lock:
        if _module is not None or _failed is not None:
            return _module
        try:
            if not torch.cuda.is_available() or torch.version.cuda is None:
                raise RuntimeError("CUDA is not available")
            src = csrc_dir()
            if src is None:
                raise RuntimeError("csrc sources not found next to the package")
            from torch.utils import cpp_extension

            arch = _arch()
            bdir, key = _build_dir(src, arch)
            bdir.mkdir(parents=True, exist_ok=True)
            sm = f"{arch[0]}{arch[1]}"
            # Naming an arch in the flags stops cpp_extension from adding its own
            # list (one target only: faster build, Hopper's own instructions).
            cuda_flags = ["-O3", "-std=c++17", f"-gencode=arch=compute_{sm},code=sm_{sm}"]
            t0 = time.perf_counter()
            log.info("building quantfuse CUDA kernels for sm_%s in %s", sm, bdir)
            mod = cpp_extension.load(
                name=f"quantfuse_C_{key}",
                sources=[str(src / f) for f in _SOURCES],
                extra_cflags=["-O3", "-std=c++17"],
                extra_cuda_cflags=cuda_flags,
                extra_include_paths=[str(src)],
                build_directory=str(bdir),
                verbose=bool(os.environ.get("QUANTFUSE_VERBOSE_BUILD")),
            )
            log.info("quantfuse CUDA kernels ready in %.1f s", time.perf_counter() - t0)
            _module = mod
        except Exception as e:  # noqa: BLE001 - any failure means "unavailable"
            _failed = f"{type(e).__name__}: {e}"
            log.warning("quantfuse CUDA backend unavailable: %s", _failed.splitlines()[0][:500])
            log.debug("full build error:\n%s", _failed)
    return _module


def is_available() -> bool:
    """True once the extension is built/loaded for this GPU (triggers the build)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why the backend is unavailable (after :func:`is_available`), else None."""
    return _failed


def unsupported_reason(op: str, x: torch.Tensor, group_size: int | None) -> str | None:
    """None when ``op`` on ``x`` (and ``group_size``) runs here, else a short reason."""
    why = kernel_inputs.silu_fp8_group_reason(op, OPS, x, group_size)
    if why:
        return why
    if op != "silu_and_mul" and x.numel() and x.data_ptr() % 16:
        return "input not 16-byte aligned"
    if not is_available():
        return f"CUDA extension unavailable ({_failed})"
    return None


def _validate(op: str, x: torch.Tensor, group_size: int | None) -> None:
    """Raise a clear RuntimeError for unsupported inputs before entering C++
    (the C++ side checks again, including the outputs)."""
    if not isinstance(x, torch.Tensor):
        raise RuntimeError(f"quantfuse cuda backend: x must be a tensor, got {type(x)}")
    reason = unsupported_reason(op, x, group_size)
    if reason is not None:
        raise RuntimeError(f"quantfuse cuda backend: {op}: {reason}")


def _mod() -> ModuleType:
    m = _load()
    if m is None:
        raise RuntimeError(f"quantfuse CUDA backend unavailable: {_failed}")
    return m


def _scale_strides(s: torch.Tensor, tokens: int, groups: int) -> tuple[int, int]:
    """(token stride, group stride) of ``s`` seen as [T, G] (leading dims flattened)."""
    if tokens == 0 or groups == 0:
        return (groups, 1)
    try:
        return tuple(s.view(tokens, groups).stride())  # type: ignore[return-value]
    except RuntimeError as e:
        raise RuntimeError(
            f"quantfuse: scales of shape {tuple(s.shape)} / strides {s.stride()} cannot be "
            "viewed as [T, G]; leading dims must be flattenable"
        ) from e


def silu_and_mul(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out[..., d] = silu(x[..., :d]) * x[..., d:]`` in ``x.dtype``."""
    _validate("silu_and_mul", x, None)
    _mod().silu_and_mul(out, x)


def per_token_group_quant_fp8(
    q: torch.Tensor, s: torch.Tensor, x: torch.Tensor, group_size: int, use_ue8m0: bool
) -> None:
    """FP8 E4M3 per-token-group quantisation of ``x`` into ``q`` and scales ``s``."""
    _validate("per_token_group_quant_fp8", x, group_size)
    tokens = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    st, sg = _scale_strides(s, tokens, x.shape[-1] // group_size if group_size > 0 else 0)
    _mod().per_token_group_quant_fp8(q, s, x, group_size, bool(use_ue8m0), st, sg)


def silu_and_mul_per_block_quant(
    q: torch.Tensor, s: torch.Tensor, x: torch.Tensor, group_size: int, use_ue8m0: bool
) -> None:
    """Fused ``silu_and_mul`` + ``per_token_group_quant_fp8`` (activation rounded to x.dtype)."""
    _validate("silu_and_mul_per_block_quant", x, group_size)
    tokens = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    st, sg = _scale_strides(s, tokens, x.shape[-1] // 2 // group_size if group_size > 0 else 0)
    _mod().silu_and_mul_per_block_quant(q, s, x, group_size, bool(use_ue8m0), st, sg)
