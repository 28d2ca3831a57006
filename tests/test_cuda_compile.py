"""The CUDA sources build without a GPU: generated translation units compiled by nvcc for sm_90a
with cuda_backend's flags, every kernel the experts ops launch instantiated (each tuning choice,
and the default count's evict-first and interleaved variants); bindings.cpp and
dispatch.cpp parsed against torch's headers (-fsyntax-only). Skipped without nvcc; the C++
check is skipped when torch's CUDA headers cannot be parsed here at all (a toolkit without the
CUDA math libraries gets stubs of the handle types torch's headers name, nothing more)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from quantfuse import catalog
from quantfuse.custom_ops import cuda_backend, tuning

CSRC = Path(__file__).resolve().parents[1] / "csrc"
NVCC = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc") if os.path.exists(p)),
                                   None)
pytestmark = pytest.mark.skipif(NVCC is None, reason="no nvcc")
#: the toolkit's headers (nvcc may be a wrapper script outside the toolkit)
CUDA_INCLUDE = next((Path(c) / "include" for c in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                                                   NVCC and Path(NVCC).resolve().parents[1], "/usr/local/cuda")
                     if c and (Path(c) / "include" / "cuda_runtime_api.h").exists()), None)

#: the unit compiled (about a minute): a gated activation, whose experts kernels cover both MX
#: schemes and roundings and every layout (the other units differ in DT / Act only)
UNIT = "bf16_silu"
#: headers of the CUDA math libraries torch's ATen/cuda headers include, as stubs
STUBS = {
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\ntypedef enum { CUSPARSE_STATUS_SUCCESS = 0 } "
                  "cusparseStatus_t;\n",
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\ntypedef enum { CUBLAS_STATUS_SUCCESS = 0 } "
                   "cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;\n",
    "cusolver_common.h": "typedef enum { CUSOLVER_STATUS_SUCCESS = 0 } cusolverStatus_t;\n",
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    gen = tmp_path_factory.mktemp("cuda_gen")
    for name, text in cuda_backend._generated_sources().items():
        (gen / name).write_text(text)
    return gen


def _nvcc(gen: Path, unit: str) -> subprocess.Popen:
    # cuda_backend._build's flags, for the H100 / H200 arch; -Xptxas -v lists every kernel
    cmd = [NVCC, "-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v", "-I", str(CSRC),
           "-I", str(gen), "-c", str(gen / f"unit_{unit}.cu"), "-o", str(gen / f"{unit}.o")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _entries(ptxas: str) -> list[str]:
    return re.findall(r"Compiling entry function '(\S+)'", ptxas)


def test_unit_compiles_for_sm90a_with_every_experts_kernel(sources):
    p = _nvcc(sources, UNIT)
    log = p.communicate(timeout=1500)[0]
    assert p.returncode == 0, log[-6000:]
    kernels = [k for k in _entries(log) if "ExpertScales" in k]
    # the register kernel: Mx<bits, rceil>, vectors, evict-first, interleaved; the staged one:
    # Mx<bits, rceil>, vectors (two groups ahead, plain loads)
    reg = {re.search(r"MxILi(\d)ELb(\d)EEELi(\d)ELi0ELb(\d)ELb(\d)E", k).groups() for k in kernels if "staged" not in k}
    staged = {re.search(r"MxILi(\d)ELb(\d)EEELi(\d)ELi2ELb0E", k).groups() for k in kernels if "staged" in k}
    counts = [str(v) for v in tuning.EXPERTS_VECTORS]
    # every tuning choice (tuning.candidates) has its kernel, for both schemes and roundings
    assert staged == {(bits, rceil, v) for bits in "84" for rceil in "01" for v in counts}
    assert {(b, r, v) for b, r, v, ef, il in reg if (ef, il) == ("0", "0")} == set(staged)
    # one count per scheme (its default) also has the evict-first and interleaved variants
    for bits in "84":
        for rceil in "01":
            full = [v for v in counts if {(ef, il) for b, r, vv, ef, il in reg if (b, r, vv) == (bits, rceil, v)}
                    == {(ef, il) for ef in "01" for il in "01"}]
            assert len(full) == 1, (bits, rceil, full)
    assert len(reg) == 2 * 2 * (len(counts) + 3)


def _torch_includes(stubs: Path) -> list[str]:
    inc = Path(torch.__file__).parent / "include"
    return ["-I", str(inc), "-I", str(inc / "torch" / "csrc" / "api" / "include"), "-I", sysconfig.get_paths()["include"],
            "-I", str(CUDA_INCLUDE), "-I", str(stubs)]


def test_host_sources_parse_against_torch(sources, tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or CUDA_INCLUDE is None:
        pytest.skip("no C++ compiler" if cxx is None else "no CUDA toolkit headers")
    stubs = tmp_path / "stubs"
    for name, text in STUBS.items():
        path = stubs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (CUDA_INCLUDE / name).exists():
            path.write_text("#pragma once\n" + text)
    flags = [cxx, "-std=c++17", "-fsyntax-only", "-w", f"-DTORCH_EXTENSION_NAME={catalog.NAMESPACE}_C",
             "-I", str(CSRC), "-I", str(sources), *_torch_includes(stubs)]
    procs = {f: subprocess.Popen([*flags, str(CSRC / f)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for f in ("bindings.cpp", "dispatch.cpp")}
    outs = {f: p.communicate(timeout=900)[0] for f, p in procs.items()}
    if any(p.returncode for p in procs.values()):
        probe = tmp_path / "probe.cpp"  # the headers the sources include, alone
        probe.write_text("#include <torch/extension.h>\n#include <ATen/cuda/CUDAContext.h>\n"
                         "#include <c10/cuda/CUDAGuard.h>\n#include <torch/csrc/jit/python/pybind_utils.h>\n")
        r = subprocess.run([*flags, str(probe)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"torch's CUDA headers do not parse here: {r.stderr[-500:]}")
    for f, p in procs.items():
        assert p.returncode == 0, f"{f}:\n{outs[f][-6000:]}"
