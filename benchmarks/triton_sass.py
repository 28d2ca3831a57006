"""Compile the Triton kernels for sm_90 without a GPU and count what matters in them.

For Triton work on a machine with no GPU: ``triton.compile`` of the two kernel modules'
kernels (``triton_schemes``' group and row kernels, ``triton_backend``'s quant kernel) for
an H100 target. Pointer arguments and H are marked 16-divisible, as Triton specialises them
at run time for aligned tensors: without that the loads come out scalar and the layouts
differ, so the counts would mislead. Prints, per kernel variant, the ``div.rn`` and
``fma.rn`` in the PTX, the barriers, the shared memory, the 16-byte loads, and the SASS
instruction count (static, slow paths included).

Needs triton (``pip download triton==3.6.0 --no-deps`` and ``pip install --no-deps``
into a directory on PYTHONPATH); ``cuobjdump`` is the one the triton wheel ships.

    PYTHONPATH=/path/to/triton:. python benchmarks/triton_sass.py
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from quantfuse.custom_ops import triton_backend, triton_schemes

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _compile(fn, signature: dict, constexprs: dict, aligned: tuple, warps: int):
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"enable_fp_fusion": False, "num_warps": warps})


def _counts(c) -> dict:
    ptx = c.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(c.asm["cubin"])
    try:
        sass = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    return {"div.rn": len(re.findall(r"div\.rn", ptx)), "fma.rn": len(re.findall(r"fma\.rn", ptx)),
            "bar.sync": len(re.findall(r"bar\.sync", ptx)), "shared B": c.metadata.shared,
            "ld.v4": len(re.findall(r"ld\.global\.v4", ptx)),
            "SASS": len(re.findall(r"^\s+/\*[0-9a-f]{4}\*/", sass, re.M))}


def group_kernel(scheme: int, act: int, gs: int, flag: bool = False):
    """triton_schemes' group kernel for bf16 input (scheme 2 FP8 per-group, 3 MXFP8, 4 MXFP4)."""
    sig = {"x_ptr": "*i32" if scheme == 4 else "*bf16", "q_ptr": "*fp8e4nv" if scheme in (2, 3) else "*u8",
           "s_ptr": "*fp32" if scheme == 2 else "*u8", "total_groups": "i32", "groups_per_row": "i32", "H": "i32",
           "s_st": "i32", "s_sg": "i32", **{n: "constexpr" for n in (
               "ACT", "SCHEME", "KIND", "GS", "BLOCK_G", "FLAG", "SOFT", "INTERP", "SWIZZLED")}}
    consts = {"ACT": act, "SCHEME": scheme, "KIND": 2, "GS": gs, "BLOCK_G": triton_schemes._TILE // gs, "FLAG": flag,
              "SOFT": False, "INTERP": False, "SWIZZLED": False}
    return _compile(triton_schemes._kernels()["group"], sig, consts, (0, 1, 2, 5), 4)


def row_kernel(act: int, hidden: int):
    """triton_schemes' row kernel, FP8 per-token, bf16 input, launched as _launch does."""
    block = 1 << max(0, hidden - 1).bit_length()
    rows = max(1, triton_schemes._TILE // block)
    sig = {"x_ptr": "*bf16", "o_ptr": "*fp8e4nv", "s_ptr": "*fp32", "T": "i32", "H": "i32",
           **{n: "constexpr" for n in ("ACT", "SCHEME", "KIND", "ROWS", "BLOCK", "NCHUNK", "SOFT", "INTERP")}}
    consts = {"ACT": act, "SCHEME": 1, "KIND": 2, "ROWS": rows, "BLOCK": block, "NCHUNK": 1, "SOFT": False,
              "INTERP": False}
    return _compile(triton_schemes._kernels()["row"], sig, consts, (0, 1, 2, 4), 8 if rows * block >= 4096 else 4)


def backend_quant_kernel(gated: bool, gs: int = 128, ue8m0: bool = False):
    """triton_backend's act_group_quant_kernel (silu_and_mul_per_block_quant), bf16 input."""
    sig = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", "total_groups": "i32", "groups_per_row": "i32",
           "hidden": "i32", "s_st": "i32", "s_sg": "i32",
           **{n: "constexpr" for n in ("GS", "BLOCK_G", "GATED", "UE8M0")}}
    consts = {"GS": gs, "BLOCK_G": triton_backend._TILE // gs, "GATED": gated, "UE8M0": ue8m0}
    return _compile(triton_backend._kernels()["quant"], sig, consts, (0, 1, 2, 5), 4)


def main():
    acts = {2: "relu2", 1: "silu_and_mul"}
    rows = []
    for act in (2, 1):
        for scheme, name, gs in ((2, "fp8 per-group", 128), (3, "mxfp8", 32), (4, "mxfp4", 32)):
            rows.append((f"{acts[act]} -> {name} (group kernel)", _counts(group_kernel(scheme, act, gs))))
        for h in (2048, 8192):
            rows.append((f"{acts[act]} -> fp8 per-token, H={h} (row kernel)", _counts(row_kernel(act, h))))
    for gated in (True, False):
        rows.append((f"triton_backend quant, gated={gated}", _counts(backend_quant_kernel(gated))))
    keys = list(rows[0][1])
    print("| kernel | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, c in rows:
        print(f"| {name} | " + " | ".join(str(c[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
