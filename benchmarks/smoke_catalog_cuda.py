"""Smoke check of the CUDA backend's layouts, SiLU rounding and static FP8 against inline
torch maths (no dependency on reference.py's newest functions)."""
import time
import torch
import torch.nn.functional as F
from quantfuse import catalog
from quantfuse.custom_ops import cuda_backend as cb
from quantfuse.custom_ops.plan import make_plan

t0 = time.time()
assert cb.is_available(), cb.unavailable_reason()
print(f"build {time.time() - t0:.0f} s", flush=True)


def run(name, x, *params, **kw):
    p = make_plan(catalog.OPS[name], x, params, **kw)
    why = cb.supports(p)
    assert why is None, (name, why)
    outs = p.empty_outputs(x.device)
    for o in outs:
        o.view(torch.uint8).fill_(0xAB)
    cb.run(p, outs, x, kw.get("up"), kw.get("scale"))
    return outs


def same(a, b):
    a, b = a.view(torch.uint8), b.view(torch.uint8)
    return int((a != b).sum())


bad = 0
for dt in catalog.INPUT_DTYPES:
    for T, H in ((7, 2048), (33, 7168), (5, 3000)):
        g = (torch.randn(T, H, device="cuda") * 4).to(dt)
        u = (torch.randn(T, H, device="cuda") * 4).to(dt)
        eager = F.silu(g) * u
        halves = torch.cat([g, u], -1)
        inter = torch.stack([g, u], -1).flatten(-2).contiguous()
        outs = {"halves": run("silu_and_mul", halves)[0], "separate": run("silu_and_mul", g, up=u)[0],
                "interleaved": run("silu_and_mul", inter, interleaved=True)[0]}
        for k, o in outs.items():
            n = same(o, eager)
            bad += n
            print(f"{dt} {T}x{H} silu {k}: {n} differ from eager", flush=True)
        if H % 128:
            continue
        qh, sh = run("silu_and_mul_per_block_quant", halves, 128)
        for k, kw, x in (("separate", {"up": u}, g), ("interleaved", {"interleaved": True}, inter)):
            q, s = run("silu_and_mul_per_block_quant", x, 128, **kw)
            n = same(q, qh) + same(s, sh)
            q2, s2 = run("silu_and_mul_per_token_quant_fp8", x, **kw)
            q3, s3 = run("silu_and_mul_per_token_quant_fp8", halves)
            n += same(q2, q3) + same(s2, s3)
            q4, s4 = run("silu_and_mul_mxfp4_quant", x, "rceil", **kw)
            q5, s5 = run("silu_and_mul_mxfp4_quant", halves, "rceil")
            n += same(q4, q5) + same(s4, s5)
            bad += n
            print(f"{dt} {T}x{H} {k} fused == halves: {n} differ", flush=True)
        yq, ys = run("per_token_group_quant_fp8", outs["halves"], 128)
        n = same(yq, qh) + same(ys, sh)
        bad += n
        print(f"{dt} {T}x{H} fused == unfused: {n} differ", flush=True)
        for sv in (0.37, 2.0 ** -20, 3.0e5, 0.0, float("inf"), 1e-40, 2.0 ** 70):
            scale = torch.tensor([sv], device="cuda")
            (q,) = run("silu_and_mul_quant", halves, scale=scale)
            ref = (eager.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
            (q2,) = run("static_scaled_fp8_quant", eager, scale=scale)
            (q3,) = run("silu_and_mul_quant", inter, interleaved=True, scale=scale)
            n = same(q, ref) + same(q2, ref) + same(q3, ref)
            bad += n
            if n:
                print(f"{dt} {T}x{H} static scale={sv}: {n} differ", flush=True)
print("TOTAL differ", bad)
