"""Compile the Triton kernels for sm_90 without a GPU and count what matters in them.

For Triton work on a machine with no GPU: ``triton.compile`` of ``triton_schemes``' group
and row kernels for an H100 target, in each layout and scheme. Pointer arguments and H are
marked 16-divisible, as Triton specialises them at run time for aligned tensors: without
that the loads come out scalar and the layouts differ, so the counts would mislead. Prints, per kernel variant, the ``div.rn`` and
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

import torch
import triton
from triton.backends.compiler import GPUTarget

from quantfuse import catalog
from quantfuse.catalog import Layout
from quantfuse.custom_ops import triton_schemes

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


_C = triton_schemes._CODES
_ACT = {"relu2": _C["act_relu2"], "silu_and_mul": _C["act_silu_and_mul"]}
_LAYOUT = {lay: _C[f"layout_{lay.value}"] for lay in Layout}


def _x_type(scheme: str, layout: Layout, gated: bool) -> str:
    """bf16 input as run() passes it: raw bf16, or a pair view (int32 / int64 words)."""
    inter = gated and layout is Layout.INTERLEAVED
    if inter and scheme == "mxfp4":
        return "*i64"
    return "*i32" if inter or scheme == "mxfp4" else "*bf16"


def _consts(act: str, layout: Layout, scheme: str) -> dict:
    gated = catalog.ACTIVATIONS[act].gated
    return {"ACT": _ACT[act], "GATED": gated, "LAYOUT": _LAYOUT[layout], "SCHEME": _C[f"scheme_{scheme}"],
            "KIND": triton_schemes._KIND_OF[torch.bfloat16],
            "SILU_ROUNDED": catalog.ACTIVATIONS[act].rounding is catalog.ActRounding.SILU_THEN_MUL,
            "SOFT": False, "INTERP": False}


def group_kernel(scheme: str, act: str, gs: int, layout: Layout = Layout.HALVES, ue8m0: bool = False,
                 rceil: bool = True):
    """The group kernel for bf16 input (fp8_per_group, mxfp8, mxfp4), launched as run() does."""
    xt = _x_type(scheme, layout, catalog.ACTIVATIONS[act].gated)
    sig = {"x_ptr": xt, "u_ptr": xt, "q_ptr": "*u8" if scheme == "mxfp4" else "*fp8e4nv",
           "s_ptr": "*fp32" if scheme == "fp8_per_group" else "*u8", "total_groups": "i32",
           "groups_per_row": "i32", "H": "i32", "s_st": "i32", "s_sg": "i32", "alpha": "fp32", "limit": "fp32",
           **{n: "constexpr" for n in ("ACT", "GATED", "LAYOUT", "SCHEME", "KIND", "SILU_ROUNDED", "GS", "BLOCK_G",
                                       "UE8M0", "RCEIL", "SWIZZLED", "SOFT", "INTERP")}}
    consts = {**_consts(act, layout, scheme), "GS": gs, "BLOCK_G": triton_schemes._TILE // gs, "UE8M0": ue8m0,
              "RCEIL": rceil, "SWIZZLED": False}
    return _compile(triton_schemes._kernels()["group"], sig, consts, (0, 1, 2, 3, 6), 4)


def row_kernel(act: str, hidden: int, scheme: str = "fp8_per_token", layout: Layout = Layout.HALVES):
    """The row kernel (FP8 per-token or static), bf16 input, launched as run() does."""
    block = 1 << max(0, hidden - 1).bit_length()
    rows = max(1, triton_schemes._TILE // block)
    xt = _x_type(scheme, layout, catalog.ACTIVATIONS[act].gated)
    sig = {"x_ptr": xt, "u_ptr": xt, "o_ptr": "*fp8e4nv", "s_ptr": "*fp32", "T": "i32", "H": "i32", "alpha": "fp32", "limit": "fp32",
           **{n: "constexpr" for n in ("ACT", "GATED", "LAYOUT", "SCHEME", "KIND", "SILU_ROUNDED", "ROWS", "BLOCK",
                                       "NCHUNK", "SOFT", "INTERP")}}
    consts = {**_consts(act, layout, scheme), "ROWS": rows, "BLOCK": block, "NCHUNK": 1}
    return _compile(triton_schemes._kernels()["row"], sig, consts, (0, 1, 2, 3, 5), 8 if rows * block >= 4096 else 4)


def main():
    rows = []
    for act in ("relu2", "silu_and_mul"):
        for scheme, name, gs in (("fp8_per_group", "fp8 per-group", 128), ("mxfp8", "mxfp8", 32),
                                 ("mxfp4", "mxfp4", 32)):
            rows.append((f"{act} -> {name} (group kernel)", _counts(group_kernel(scheme, act, gs))))
        for h in (2048, 8192):
            rows.append((f"{act} -> fp8 per-token, H={h} (row kernel)", _counts(row_kernel(act, h))))
        rows.append((f"{act} -> fp8 static, H=2048 (row kernel)", _counts(row_kernel(act, 2048, "fp8_static"))))
    for layout in (Layout.SEPARATE, Layout.INTERLEAVED):
        for scheme, name, gs in (("fp8_per_group", "fp8 per-group", 128), ("mxfp4", "mxfp4", 32)):
            rows.append((f"silu_and_mul {layout.value} -> {name} (group kernel)",
                         _counts(group_kernel(scheme, "silu_and_mul", gs, layout))))
        rows.append((f"silu_and_mul {layout.value} -> fp8 per-token, H=2048 (row kernel)",
                     _counts(row_kernel("silu_and_mul", 2048, layout=layout))))
    keys = list(rows[0][1])
    print("| kernel | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, c in rows:
        print(f"| {name} | " + " | ".join(str(c[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
