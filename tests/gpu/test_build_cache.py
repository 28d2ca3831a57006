"""On a GPU: a damaged cached CUDA library is detected and rebuilt by the next process.

Before the manifest check, a library truncated as an interrupted build or a full disk
leaves it killed every later process with SIGBUS on load (exit -7, no message).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).resolve().parents[2]
# builds (or loads) the extension, runs one kernel against the reference, prints the cache folder
_CHILD = """
import torch
from quantfuse.custom_ops import cuda_backend as c, reference
assert c.is_available(), c.unavailable_reason()
x = torch.randn(8, 512, device="cuda", dtype=torch.bfloat16)
q, s = torch.ops.quantfuse.silu_and_mul_per_block_quant(x, 128)
qr, sr = reference.silu_and_mul_per_block_quant(x, 128)
assert torch.equal(s, sr)
print(c._build_dir(c.csrc_dir(), c._arch(), c._generated_sources())[0])
"""


def _child(cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUANTFUSE_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=900)


def test_truncated_cached_library_is_rebuilt_by_the_next_process(tmp_path):
    first = _child(tmp_path)
    assert first.returncode == 0, first.stderr
    bdir = Path(first.stdout.strip().splitlines()[-1])
    record = json.loads((bdir / "manifest.json").read_text())
    library = bdir / record["library"]
    assert library.stat().st_size == record["size"]
    with open(library, "r+b") as f:  # what an interrupted copy or a full disk leaves
        f.truncate(record["size"] // 3)

    second = _child(tmp_path)
    assert second.returncode == 0, (second.returncode, second.stderr)
    assert "is not usable" in second.stderr and "rebuilding" in second.stderr
    rebuilt = json.loads((bdir / "manifest.json").read_text())
    assert library.stat().st_size == rebuilt["size"] > record["size"] // 3
    # nothing left over from the temporary build folders
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [bdir.name]

    stat = library.stat()
    third = _child(tmp_path)  # verified, loaded without building
    assert third.returncode == 0, third.stderr
    assert "rebuilding" not in third.stderr
    assert (library.stat().st_ino, library.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
