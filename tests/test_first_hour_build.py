"""The CUDA build cache's crash safety, without a GPU or nvcc: the manifest check and the
build-in-a-temporary-folder flow of ``cuda_backend._load`` (cpp_extension faked)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from quantfuse.custom_ops import cuda_backend


def _library(folder: Path, data: bytes = b"\x7fELF" + bytes(range(256)) * 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / "quantfuse_C_test.so"
    lib.write_bytes(data)
    cuda_backend.write_manifest(folder, lib)
    return lib


def test_manifest_vouches_for_an_intact_library(tmp_path):
    lib = _library(tmp_path / "cuda_x")
    record = json.loads((tmp_path / "cuda_x" / "manifest.json").read_text())
    assert record["library"] == lib.name and record["size"] == lib.stat().st_size == 4 + 256 * 64
    assert cuda_backend.verify_cached(tmp_path / "cuda_x") == (lib, "")


def test_truncated_library_is_rejected_by_size(tmp_path):
    lib = _library(tmp_path / "cuda_x")
    with open(lib, "r+b") as f:
        f.truncate(100)
    found, why = cuda_backend.verify_cached(tmp_path / "cuda_x")
    assert found is None and why == f"{lib} has 100 bytes, the build wrote {4 + 256 * 64}"


def test_same_size_corruption_is_rejected_by_hash(tmp_path):
    lib = _library(tmp_path / "cuda_x")
    data = bytearray(lib.read_bytes())
    data[1000] ^= 0xFF
    lib.write_bytes(bytes(data))
    found, why = cuda_backend.verify_cached(tmp_path / "cuda_x")
    assert found is None and "sha256 differs" in why


@pytest.mark.parametrize("manifest, expected", [
    (None, "is missing (an interrupted or older build)"),
    ("{not json", "is unreadable (JSONDecodeError"),
    ('{"library": "quantfuse_C_test.so"}', "is unreadable (KeyError"),
])
def test_missing_or_broken_manifest_is_rejected(tmp_path, manifest, expected):
    _library(tmp_path / "cuda_x")
    path = tmp_path / "cuda_x" / "manifest.json"
    if manifest is None:
        path.unlink()
    else:
        path.write_text(manifest)
    found, why = cuda_backend.verify_cached(tmp_path / "cuda_x")
    assert found is None and expected in why


@pytest.fixture
def fake_cuda(monkeypatch, tmp_path):
    """A machine with 'CUDA' whose cpp_extension.load writes a Python file as the library."""
    from torch.utils import cpp_extension

    builds = []

    def fake_load(name, sources, build_directory, **kwargs):
        builds.append(Path(build_directory))
        lib = Path(build_directory) / f"{name}.py"
        lib.write_text(f"BUILT_IN = {build_directory!r}\n" + "REGISTERED = []\n"
                       "def register_ops(names, out_counts, decide):\n    REGISTERED.append((list(names), decide))\n"
                       + "# padding\n" * 50)
        return cuda_backend._import_library(name, lib)

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cuda_backend, "_arch", lambda: (9, 0))
    monkeypatch.setenv("QUANTFUSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cuda_backend, "_module", None)
    monkeypatch.setattr(cuda_backend, "_failed", None)
    return builds


def _fresh_load():
    cuda_backend._module = cuda_backend._failed = None  # what a new process starts with
    return cuda_backend._load()


def test_build_lands_atomically_and_a_damaged_one_is_rebuilt(fake_cuda, tmp_path, caplog):
    mod = _fresh_load()
    assert mod is not None and cuda_backend._failed is None
    (bdir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert bdir.name.startswith("cuda_") and len(fake_cuda) == 1
    # a loaded library becomes the CUDA kernel of the ops with CUDA units (csrc/dispatch.cpp),
    # the experts ops included
    from quantfuse import catalog
    from quantfuse.custom_ops import ops

    (names, decide), = cuda_backend._module.REGISTERED
    assert names == [e.name for e in catalog.OPS.values() if cuda_backend.implements(e)]
    assert {"mxfp4_experts_quant", "silu_and_mul_mxfp8_experts_quant"} <= set(names)
    assert decide is ops.fast_path_decision
    assert fake_cuda[0].parent == tmp_path and fake_cuda[0] != bdir  # built elsewhere, then renamed
    lib, why = cuda_backend.verify_cached(bdir)
    assert why == "" and lib.parent == bdir

    assert _fresh_load() is not None and len(fake_cuda) == 1  # verified cache: no build

    lib.write_bytes(lib.read_bytes()[:20])  # an interrupted write
    with caplog.at_level(logging.WARNING, logger="quantfuse.cuda"):
        assert _fresh_load() is not None
    assert len(fake_cuda) == 2
    assert any("is not usable" in r.message and "rebuilding" in r.message for r in caplog.records)
    assert cuda_backend.verify_cached(bdir)[1] == ""
    # the temporary build folders and the damaged build are gone
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [bdir.name]


def test_cache_path_that_cannot_be_a_folder_falls_back_with_a_warning(fake_cuda, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QUANTFUSE_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="quantfuse.cuda"):
        assert _fresh_load() is None
    assert "quantfuse CUDA backend unavailable" in caplog.text and fake_cuda == []
    cuda_backend._failed = None
