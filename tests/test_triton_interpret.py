"""The Triton kernel family of ``triton_schemes`` under the CPU interpreter, bit for bit.

Runs only where triton is importable (CI does not install it: skipped there).  The
checks run in a subprocess with ``TRITON_INTERPRET=1`` set before triton is imported,
so no other test sees the interpreter.  Every op of ``triton_schemes`` (and the
activation-only / per-group ops it also generates) is compared with reference.py on
fresh random inputs with per-row magnitudes over six decades, sparse outliers, NaN and
inf rows, all-zero blocks and exact rounding ties, for fp32 / bf16 / fp16 inputs.

Interpreter limitations (the GPU test covers these): the interpreter has no libdevice,
so the kernels use ``tl.exp`` (numpy's ``exp``), which differs from torch's CPU ``exp``
in the last bit for about 40% of inputs; the subprocess therefore replaces the
reference's ``torch.exp`` (fp32, CPU) by numpy's, everything else in reference.py is
unchanged.  The interpreter's fp32 -> bf16 / fp8 casts truncate, so under it the
kernels round to bf16 and encode e4m3 on the integer bits (``SOFT``); on the GPU the
hardware ``cvt`` is used.  FP8 NaN codes are compared sign-blind (0x7F == 0xFF).

Run by hand: ``PYTHONPATH=/path/to/triton:. TRITON_INTERPRET=1 python tests/test_triton_interpret.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_triton_schemes_interpreter_bit_exact():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, capture_output=True,
                       text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-6000:]}\nstderr:\n{r.stderr[-6000:]}"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["failures"] == [], summary["failures"][:20]
    assert summary["checks"] >= 500, summary


# ----------------------------------------------------------------------------------------
# everything below runs in the subprocess (TRITON_INTERPRET=1)

def _run() -> dict:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import numpy as np
    import torch

    _exp = torch.exp

    def numpy_exp(t, *a, **k):  # the interpreter's tl.exp is numpy's (see module doc)
        if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type == "cpu" and not a and not k:
            with np.errstate(over="ignore", under="ignore"):
                return torch.from_numpy(np.exp(t.numpy()))
        return _exp(t, *a, **k)

    torch.exp = numpy_exp

    from quantfuse.custom_ops import kernel_inputs as ki
    from quantfuse.custom_ops import reference as ref
    from quantfuse.custom_ops import triton_schemes as ts

    assert ts.is_available()
    FP8 = torch.float8_e4m3fn
    failures: list[str] = []
    checks = 0
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))

    def fp8_bytes(q):
        b = q.view(torch.uint8).clone()
        b[(b & 0x7F) == 0x7F] = 0x7F  # NaN, sign-blind
        return b

    def same(name, a, b):
        nonlocal checks
        checks += 1
        if a.shape != b.shape or a.dtype != b.dtype:
            failures.append(f"{name}: shape/dtype {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
            return
        if a.dtype == FP8:
            a, b = fp8_bytes(a), fp8_bytes(b)
        if a.is_floating_point():
            na, nb = torch.isnan(a), torch.isnan(b)
            ib = {4: torch.int32, 2: torch.int16}[a.element_size()]
            ok = torch.equal(na, nb) and torch.equal(a.masked_fill(na, 0).contiguous().view(ib),
                                                     b.masked_fill(nb, 0).contiguous().view(ib))
        else:
            ok = torch.equal(a, b)
        if not ok:
            if a.is_floating_point():
                bad = ~((a == b) | (torch.isnan(a) & torch.isnan(b))) | (torch.signbit(a) != torch.signbit(b))
            else:
                bad = a != b
            idx = bad.nonzero()[:3].tolist()
            failures.append(f"{name}: {int(bad.sum())} of {a.numel()} differ, e.g. at {idx}: "
                            f"{[a[tuple(i)].item() for i in idx]} vs {[b[tuple(i)].item() for i in idx]}")

    def make(lead, width, dtype, specials=True):
        x = torch.randn(*lead, width, generator=gen)
        mag = torch.pow(10.0, torch.empty(*lead, 1).uniform_(-3, 3, generator=gen))
        x = x * mag
        outl = torch.rand(*lead, width, generator=gen) < 0.01
        x = torch.where(outl, x * 50, x)
        x = x.reshape(-1, width)
        if specials and x.shape[0] >= 4:
            x[0, 5] = float("nan")
            x[1, width // 3] = float("inf")
            x[2, : min(width, 64)] = 0.0  # all-zero blocks / groups
            x[3, 7] = -float("inf")
        if specials and x.shape[0] >= 6:
            # exact ties: E2M1 ties at scale 1 (amax 4), e4m3 midpoints at scale 1 (amax 256
            # floor) and > 448 saturation, and -0
            ties = torch.tensor([4.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75,
                                 -2.5, -3.5, -5.0, -0.0, 0.125, 2.25, 1.0, 3.0, 4.5, 5.5, 6.0, -6.0,
                                 0.5, 1.5, 2.0, -4.0, 0.0, -0.0, 0.375, 5.25])
            mids = torch.tensor([256.0, 1.0625, 1.1875, 2.0 ** -10, 3 * 2.0 ** -10, 2.0 ** -7 * 1.0625,
                                 500.0, -500.0, 104.0, 120.0, -1.0625, 2.0 ** -11, 15.0 * 2.0 ** -10, 0.0,
                                 -0.0, 7.5, 9.0, 11.0, 13.0, 17.0, 19.0, 44.0, 52.0, 200.0, 232.0, 240.0,
                                 1e-3, -1e-3, 3.0, 5.0, 6.0, 7.0])
            x[4] = ties.repeat(width // 32 + 1)[:width]
            x[5] = mids.repeat(width // 32 + 1)[:width]
        if specials and x.shape[0] >= 8:
            # tiny blocks: amax * (1/448) or (1/6) subnormal (row 6), subnormal inputs (row 7)
            x[6] = torch.randn(width, generator=gen) * 1e-36
            x[7] = torch.randn(width, generator=gen) * 1e-41
        if specials and x.shape[0] >= 9:
            # amax * (1/max_elem) underflows to 0 (fp32 only): reference exponent 0 (frexp(0))
            x[8] = torch.randn(width, generator=gen) * 1e-44
        return x.reshape(*lead, width).to(dtype)

    def run_act(fn, x, out_h):
        out = torch.full((*x.shape[:-1], out_h), float("nan"), dtype=x.dtype)
        fn(out, x)
        return out

    def run_quant(fn, x, out_h, key, *params):
        lead = x.shape[:-1]
        if key == "fp8_per_token":
            q = torch.full((*lead, out_h), 0xAB, dtype=torch.uint8).view(FP8)
            s = torch.full((*lead, 1), float("nan"))
            fn(q, s, x)
        elif key == "fp8_per_group":
            gs, cm, ue = params
            q = torch.full((*lead, out_h), 0xAB, dtype=torch.uint8).view(FP8)
            s = ref._alloc_scales(tuple(lead), out_h // gs, x.device, cm)
            s.fill_(float("nan"))
            fn(q, s, x, gs, ue)
        else:
            elem = out_h if key == "mxfp8" else out_h // 2
            q = torch.full((*lead, elem), 0xAB, dtype=torch.uint8)
            if key == "mxfp8":
                q = q.view(FP8)
            groups = out_h // 32
            # swizzled: the padded tiled layout, poisoned so that unwritten padding shows
            shape = ki.swizzled_scale_shape(x.numel() // x.shape[-1], groups) if params[1:] == (True,) \
                else (*lead, groups)
            s = torch.full(shape, 0xAB, dtype=torch.uint8)
            fn(q, s, x, *params)
        return q, s

    ref_scheme = {"fp8_per_token": lambda y: ref.per_token_quant_fp8(y),
                  "fp8_per_group": lambda y, gs, cm, ue: ref.per_token_group_quant_fp8(y, gs, cm, ue),
                  "mxfp8": lambda y, r, sw=False: ref.mxfp8_quant(y, r, sw),
                  "mxfp4": lambda y, r, sw=False: ref.mxfp4_quant(y, r, sw)}
    ref_act = {"": lambda x: x, "silu_and_mul": ref.silu_and_mul, "relu2": ref.relu2}
    params_of = {"fp8_per_token": [()],
                 "fp8_per_group": [(64, False, False), (128, True, False), (128, False, True), (64, True, True)],
                 "mxfp8": [("floor",), ("rceil",), ("rceil", True)],
                 "mxfp4": [("floor",), ("rceil",), ("floor", True)]}
    # (lead, activation-output hidden)
    shapes = [((1,), 256), ((7,), 384), ((2, 3), 128), ((9,), 1024)]
    long_rows = [((6,), 9216)]  # > 8192: the chunked two-pass per-token path
    mx_padded = [((5,), 160), ((130,), 96)]  # G = 5, 3: column padding; T = 130: two row blocks

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for op, (act, key) in ts._TABLE.items():
            fn = getattr(ts, op)
            extra = [long_rows[0]] if key in ("fp8_per_token", "none") else []
            if key in ("mxfp8", "mxfp4"):
                extra = mx_padded  # swizzled layouts with padded columns / several row blocks
            for lead, h in shapes + extra:
                in_h = 2 * h if act == "silu_and_mul" else h
                x = make(lead, in_h, dtype)
                tag = f"{op}[{dtype}, {lead}, {h}]"
                if key == "none":
                    same(tag, run_act(fn, x, h), ref_act[act](x))
                    continue
                y_ref = ref_act[act](x)
                for params in params_of[key]:
                    q, s = run_quant(fn, x, h, key, *params)
                    rq, rs = ref_scheme[key](y_ref, *params)
                    same(f"{tag}{params} q", q, rq)
                    same(f"{tag}{params} s", s, rs)
                    if act:  # fused == unfused, both from this module
                        y = run_act(getattr(ts, act), x, h)
                        uq, us = run_quant(getattr(ts, ts._SCHEMES[key][0]), y, h, key, *params)
                        same(f"{tag}{params} fused==unfused q", q, uq)
                        same(f"{tag}{params} fused==unfused s", s, us)
    # MXFP4 reads x as element pairs: an input that starts at an odd element (a view one
    # element into a buffer) is copied first, and must give the same bytes
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for op in ("mxfp4_quant", "relu2_mxfp4_quant", "silu_and_mul_mxfp4_quant"):
            act, key = ts._TABLE[op]
            h = 96
            x = make((7,), 2 * h if act == "silu_and_mul" else h, dtype)
            buf = torch.empty(x.numel() + 1, dtype=dtype)
            buf[1:] = x.reshape(-1)
            xo = buf[1:].view(x.shape)
            assert xo.storage_offset() == 1
            q, s = run_quant(getattr(ts, op), xo, h, key, "rceil")
            rq, rs = ref_scheme[key](ref_act[act](x), "rceil")
            same(f"{op}[{dtype}] odd offset q", q, rq)
            same(f"{op}[{dtype}] odd offset s", s, rs)
    return {"checks": checks, "failures": failures}


if __name__ == "__main__":
    print(json.dumps(_run()))
