"""Vectors per thread (1, 2, 4) and grid shape of the CUDA group and per-token kernels for every pair.

    python benchmarks/sweep_vectors.py [--tokens 4096,16384] [--hidden 2048,7168] [--schemes mxfp4,...]
                                      [--group v=1,v=2]

Group kernels: v = vectors per thread, "no loop" = one block per chunk of groups instead
of the persistent grid. Per-token kernel: "auto" = the launcher's choice, v = vectors per
thread per row, "/k" = blocks of about 512 / k threads (k blocks per SM share their
barriers).

Inputs that fit in L2 are loaded evict-first (launch_unit.cuh): by every per-token column,
but among the group columns only by the scheme's default vector count, so on such inputs
the group columns differ in that too.

Times ``act_quant`` of the CUDA extension directly (bf16 input, fresh random data
rotated past L2, CUDA-graph replay) and prints % of the copy bandwidth measured in
the same run; used to pick each scheme's default (csrc/launch_unit.cuh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_pairs import bench, copy_bandwidth, rotation_copies  # noqa: E402

from quantfuse import catalog  # noqa: E402
from quantfuse.custom_ops import cuda_backend  # noqa: E402

SCHEMES = {"fp8_per_group": (128, False, 1.0, 4 / 128), "mxfp8": (32, True, 1.0, 1 / 32),
           "mxfp4": (32, True, 0.5, 1 / 32), "fp8_per_token": (0, False, 1.0, 0.0)}
# "same-size copy": a device copy reading and writing nbytes in all (sources rotated
# like the inputs), in % of the large-copy bandwidth: what a kernel of that size can reach


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="4096,16384")
    p.add_argument("--hidden", default="2048,7168")
    p.add_argument("--schemes", default=",".join(SCHEMES))
    p.add_argument("--group", default="", help="group-kernel columns to run (names as printed), default all")
    args = p.parse_args()
    m = cuda_backend._mod()
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, copy {bw:.0f} GB/s")
    group_variants = tuple(v for v in (("v=1", 1, 0), ("v=2", 2, 0), ("v=4", 4, 0), ("v=2, no loop", 2, -1))
                           if not args.group or v[0] in args.group.split(","))
    token_variants = (("auto", 0, 0), ("v=4", 4, 0), ("v=4 /2", 4, 2), ("v=4 /4", 4, 4), ("v=2 /2", 2, 2))
    for name, variants in (("group", group_variants), ("per-token", token_variants)):
        print(f"{name}: | pair | T | H | " + " | ".join(v[0] for v in variants) + " | same-size copy |")
    for act in ("silu_and_mul", "relu2"):
        for key, (gs, flag, out_b, s_b) in SCHEMES.items():
            if key not in args.schemes.split(","):
                continue
            for t in map(int, args.tokens.split(",")):
                for h in map(int, args.hidden.split(",")):
                    n_in = 2 * h if act == "silu_and_mul" else h
                    nbytes = t * (n_in * 2 + h * out_b + h * s_b)
                    copies = rotation_copies(nbytes)
                    xs = [torch.randn(t, n_in, device="cuda", dtype=torch.bfloat16) * 3 for _ in range(copies)]
                    q = torch.empty(t, int(h * out_b), device="cuda",
                                    dtype=torch.uint8 if key == "mxfp4" else torch.float8_e4m3fn)
                    groups = 1 if key == "fp8_per_token" else h // gs
                    s = torch.empty(t, groups, device="cuda",
                                    dtype=torch.uint8 if key.startswith("mx") else torch.float32)
                    codes = catalog.codes()
                    code, scheme, layout = codes[f"act_{act}"], codes[f"scheme_{key}"], codes["layout_halves"]
                    use_ue8m0, rceil = (flag, False) if key == "fp8_per_group" else (False, flag)
                    cells = []
                    variants = token_variants if key == "fp8_per_token" else group_variants
                    for _, v, bps in variants:
                        us = bench(lambda x, v=v, bps=bps: m.act_quant(code, scheme, layout, q, s, x, None, None, gs,
                                                                       use_ue8m0, rceil, groups, 1, False, v, bps),
                                   xs)
                        cells.append(f"{nbytes / (us * 1e-6) / 1e9 / bw:.0%} ({us:.1f})")
                    srcs = [torch.empty(int(nbytes) // 2, dtype=torch.uint8, device="cuda").random_(0, 255)
                            for _ in range(copies)]
                    dst = torch.empty_like(srcs[0])
                    us = bench(lambda src: dst.copy_(src), srcs)
                    cells.append(f"{nbytes / (us * 1e-6) / 1e9 / bw:.0%} ({us:.1f})")
                    print(f"| {act}_{key} | {t} | {h} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
