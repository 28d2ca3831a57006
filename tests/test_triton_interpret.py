"""The Triton backend (``triton_schemes``) under the CPU interpreter, bit for bit.

Runs only where triton is importable (CI does not install it: skipped there). The checks
run in a subprocess with ``TRITON_INTERPRET=1`` set before triton is imported, so no other
test sees the interpreter. Every op of :data:`catalog.OPS`, in every gated layout of
:class:`catalog.Layout`, with every combination of its scheme's kernel parameter values
(:attr:`catalog.OpParam.kernel_values`), is run through the backend protocol
(``make_plan`` -> ``supports`` -> ``run``) and compared with
``reference.quantize(reference-activation(x), plan.recipe)`` on fresh random inputs with
per-row magnitudes over six decades, sparse outliers, NaN and inf rows, all-zero blocks
and exact rounding ties, for every input dtype of the catalog. Fused ops are also checked
against the backend's own unfused pair. Then every dynamic FP8 recipe (each value of each
``Recipe`` field, tests/recipe_spellings.py), eps values that make the floors bite, the static
scheme's apply form and clamp, and torch < 2.12's unsaturated cast (emulated) for recipes
without the clamp, against ``reference.quantize`` of the same recipe.

Interpreter limitations (the GPU tests cover these): the interpreter has no libdevice, so
the kernels use ``tl.exp`` (numpy's ``exp``), which differs from torch's CPU ``exp`` in
the last bit for about 40% of inputs; the subprocess therefore replaces the reference's
``torch.exp`` (fp32, CPU) by numpy's, everything else in reference.py is unchanged. The
interpreter's fp32 -> bf16 / fp8 casts truncate, so under it the kernels round to bf16
and encode e4m3 on the integer bits (``SOFT``), and its fma rounds twice, so the FP8
divisions divide instead of the Markstein correction; on the GPU the hardware paths run.
FP8 NaN codes are compared sign-blind (0x7F == 0xFF).

Run by hand: ``PYTHONPATH=. TRITON_INTERPRET=1 python tests/test_triton_interpret.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_triton_interpreter_bit_exact():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, capture_output=True,
                       text=True, timeout=1500, cwd=ROOT)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-6000:]}\nstderr:\n{r.stderr[-6000:]}"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["failures"] == [], summary["failures"][:20]
    assert summary["checks"] >= 1000, summary
    # every op of the catalog ran, in every layout it has
    assert summary["unrun"] == [], summary["unrun"]
    # the inputs hit elements where eager's two roundings of silu x mul differ from one
    assert summary["double_rounding_hits"] > 0, summary


def test_supports_without_cuda():
    """On the CPU without the interpreter the backend declines every plan, with a reason."""
    import torch

    from quantfuse import catalog
    from quantfuse.custom_ops import triton_schemes as ts
    from quantfuse.custom_ops.plan import make_plan

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs CPU plans")
    plan = make_plan(catalog.OPS["silu_and_mul_mxfp4_quant"], torch.zeros(2, 128))
    why = ts.supports(plan)
    assert why is not None and "CUDA" in why
    assert ts.NAME == "triton"


# ----------------------------------------------------------------------------------------
# everything below runs in the subprocess (TRITON_INTERPRET=1)

def _run() -> dict:
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import dataclasses
    import itertools

    import torch

    from helpers import emulate_interpreted_kernels, layout_inputs
    from recipe_spellings import covering, fp8_recipes, scheme_of
    from quantfuse import catalog
    from quantfuse.custom_ops import reference as ref

    emulate_interpreted_kernels()
    from quantfuse.custom_ops import triton_schemes as ts
    from quantfuse.custom_ops.plan import make_plan

    assert ts.is_available()
    FP8 = catalog.E4M3.dtype
    failures: list[str] = []
    checks = 0
    double_rounding_hits = 0
    ran: set[tuple[str, catalog.Layout]] = set()
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

    def inputs(entry, layout, lead, h, dtype):
        """(x, up, interleaved) of one call: the gate / up operands in ``layout``."""
        return layout_inputs(make, entry, layout, lead, h, dtype)

    def poisoned(outs):
        for t in outs:  # what the kernel leaves unwritten shows
            if t.element_size() == 1:
                t.view(torch.uint8).fill_(0xAB)
            else:
                t.fill_(float("nan"))
        return outs

    def call(entry, x, params, up, interleaved, scale, recipe=""):
        plan = make_plan(entry, x, params, up=up, interleaved=interleaved, scale=scale, recipe=recipe)
        why = ts.supports(plan)
        if why is not None:
            failures.append(f"{entry.name} {plan.layout.value}: supports() says {why!r}")
            return plan, None
        outs = poisoned(plan.empty_outputs(x.device))
        ts.run(plan, outs, x, up, scale)
        ran.add((entry.name, plan.layout))
        return plan, outs

    def param_sets(scheme):
        """Every combination of the scheme's kernel parameter values (the catalog's); MX roundings
        but floor and rceil run in the MX field loop below, with every special-block field."""
        if scheme is None:
            return [()]
        values = [p.kernel_values if p.field != "mx_rounding" else ("floor", "rceil") for p in scheme.params]
        return list(itertools.product(*values))


    def static_scales():
        # ordinary scales, and ones outside the GPU's Markstein range (a uniform div.rn
        # branch there; the interpreter divides everywhere)
        return [torch.tensor([v], dtype=torch.float32) for v in (0.013, 1.0, 3.0, 2.0 ** -70, 2.0 ** 70)]

    # (lead, activation-output hidden)
    shapes = [((1,), 256), ((7,), 384), ((2, 3), 128), ((9,), 1024)]
    layout_shapes = [((9,), 256), ((2, 3), 128)]  # SEPARATE / INTERLEAVED: fewer, every op
    long_rows = [((6,), 9216)]  # > 8192: the chunked row paths
    mx_padded = [((5,), 160), ((130,), 96)]  # G = 5, 3: column padding; T = 130: two row blocks

    for dtype in catalog.INPUT_DTYPES:
        for entry in catalog.OPS.values():
            if entry.experts:
                continue  # their offsets and scale buffer: tests/test_experts_ops.py
            scheme = entry.scheme
            layouts = tuple(catalog.Layout) if entry.activation.gated else (catalog.Layout.HALVES,)
            for layout in layouts:
                base = shapes if layout is catalog.Layout.HALVES else layout_shapes
                extra = []
                if scheme is None or scheme.base.grouping in (catalog.Grouping.PER_TOKEN, catalog.Grouping.PER_TENSOR):
                    extra = long_rows if layout is catalog.Layout.HALVES else []
                elif scheme.base.mx:
                    extra = mx_padded
                for lead, h in base + extra:
                    x, up, interleaved = inputs(entry, layout, lead, h, dtype)
                    tag = f"{entry.name}[{dtype}, {layout.value}, {lead}, {h}]"
                    y_ref = ref.activate(entry.activation.name, x, up, interleaved)
                    if entry.activation is catalog.SILU_AND_MUL and dtype != torch.float32:
                        g, u = ref.gate_up(x, up, interleaved)
                        gf = g.float()
                        once = (gf / (1.0 + torch.exp(-gf)) * u.float()).to(dtype)
                        double_rounding_hits += int((once != y_ref).sum())
                    if scheme is None:
                        _, outs = call(entry, x, (), up, interleaved, None)
                        if outs is not None:
                            same(tag, outs[0], y_ref)
                        continue
                    scales = static_scales() if scheme.tensor_inputs else [None]
                    for params, scale in itertools.product(param_sets(scheme), scales):
                        plan, outs = call(entry, x, params, up, interleaved, scale)
                        if outs is None:
                            continue
                        want = ref.quantize(y_ref, plan.recipe, scale)
                        want = want if isinstance(want, tuple) else (want,)
                        sub = f"{tag}{params}" + (f" scale={scale.item():g}" if scale is not None else "")
                        for i, (got, exp) in enumerate(zip(outs, want)):
                            same(f"{sub} out{i}", got, exp)
                        if entry.fused:  # fused == unfused, both from this backend
                            _, y = call(catalog.OPS[entry.activation.name], x, (), up, interleaved, None)
                            _, unf = call(catalog.OPS[scheme.unfused_name], y[0], params, None, False, scale)
                            for i, (got, exp) in enumerate(zip(outs, unf)):
                                same(f"{sub} fused==unfused out{i}", got, exp)

    # pair views (MXFP4, interleaved) need word-aligned inputs: a view one element into a
    # buffer (plan.aligned False) is copied first, and must give the same bytes
    for dtype in catalog.INPUT_DTYPES:
        for name, layout in (("mxfp4_quant", catalog.Layout.HALVES),
                             ("silu_and_mul_mxfp4_quant", catalog.Layout.HALVES),
                             ("silu_and_mul_mxfp4_quant", catalog.Layout.SEPARATE),
                             ("silu_and_mul_mxfp4_quant", catalog.Layout.INTERLEAVED),
                             ("silu_and_mul_per_block_quant", catalog.Layout.INTERLEAVED),
                             ("silu_and_mul", catalog.Layout.INTERLEAVED)):
            entry = catalog.OPS[name]
            h = 128
            x, up, interleaved = inputs(entry, layout, (7,), h, dtype)

            def shifted(t):
                buf = torch.empty(t.numel() + 1, dtype=dtype)
                buf[1:] = t.reshape(-1)
                return buf[1:].view(t.shape)

            xo = shifted(x)
            uo = None if up is None else shifted(up)
            params = (128,) if entry.scheme is catalog.FP8_PER_GROUP else ()
            plan, outs = call(entry, xo, params, uo, interleaved, None)
            assert not plan.aligned
            y_ref = ref.activate(entry.activation.name, x, up, interleaved)
            want = (y_ref,) if entry.scheme is None else ref.quantize(y_ref, plan.recipe)
            for i, (got, exp) in enumerate(zip(outs, want)):
                same(f"{name}[{dtype}, {layout.value}] unaligned out{i}", got, exp)

    # every dynamic FP8 recipe: each value of each field (recipe_spellings.fp8_recipes: per token,
    # per tensor, per group of 64 and 128), through the quant ops on rows with specials (NaN, inf, zero groups,
    # ties, scales that underflow without a floor, subnormal inputs); bf16 every recipe (groups of
    # 128: a covering set), the other dtypes a set holding every pair of field values
    # (recipe_spellings.covering)
    def run_recipe(entry, x, params, r, tag, up=None, scale=None):
        base = entry.scheme.recipe(*params)
        plan, outs = call(entry, x, params, up, False, scale, recipe=r.spec(base))
        if outs is None:
            return
        if plan.recipe != r:
            failures.append(f"{tag}: the plan's recipe is {plan.recipe}")
        want = ref.quantize(ref.activate(entry.activation.name, x, up), r, scale)
        for i, (got, exp) in enumerate(zip(outs, want if isinstance(want, tuple) else (want,))):
            same(f"{tag} recipe={r.spec(base)!r} out{i}", got, exp)
        recipes_run.add((r.floor_at, r.step_dtype, r.apply, r.clamp, r.ue8m0, r.ue8m0_after_floor, r.grouping))

    recipes_run: set = set()
    every = list(fp8_recipes())
    # bf16: every recipe per token and in groups of 64, a covering set in groups of 128
    bf16_set = [r for r in every if r.group_size != catalog.FP8_GROUP_SIZES[1]] + \
        covering([r for r in every if r.group_size == catalog.FP8_GROUP_SIZES[1]])
    for dtype in catalog.INPUT_DTYPES:
        x = make((9,), 256, dtype)
        for r in bf16_set if dtype == torch.bfloat16 else covering(every):
            scheme, params = scheme_of(r)
            run_recipe(catalog.OPS[scheme.unfused_name], x, params, r, f"{scheme.unfused_name}[{dtype}]")
        # floors that bite (eps above the rows' small scales, tiny, zero) and fused ops
        for eps, spec in itertools.product((1e-4, 1e-30, 0.0), ("floor_at=scale,step_dtype=input", "step_dtype=input",
                                                              "floor_at=scale,ue8m0=exact,ue8m0_after_floor=False")):
            for name, params in (("silu_and_mul_per_block_quant", (64,)), ("relu2_per_token_quant_fp8", ())):
                entry = catalog.OPS[name]
                r = entry.scheme.recipe(*params).with_spec(f"{spec},eps={eps!r}")
                xin = make((9,), 512 if entry.activation.gated else 256, dtype)
                run_recipe(entry, xin, params, r, f"{name}[{dtype}]")
        # static: the apply form and the clamp
        for spec, scale in itertools.product(("apply=mul_inv", "clamp=False", "apply=mul_inv,clamp=False"),
                                             static_scales()[::3]):
            for name in ("static_scaled_fp8_quant", "silu_and_mul_quant"):
                entry = catalog.OPS[name]
                xin = make((9,), 512 if entry.activation.gated else 256, dtype)
                run_recipe(entry, xin, (), entry.scheme.base.with_spec(spec), f"{name}[{dtype}] scale={scale.item():g}",
                           scale=scale)
    want_fields = {(r.floor_at, r.step_dtype, r.apply, r.clamp, r.ue8m0, r.ue8m0_after_floor, r.grouping)
                   for r in every}
    if not want_fields <= recipes_run:
        failures.append(f"recipes not run: {sorted(map(str, want_fields - recipes_run))[:5]}")

    # torch before 2.12 casts without saturating: NaN past E4M3's overflow (inf included), which a
    # recipe without the clamp gives; emulated here (catalog.E4M3_CAST_SATURATES and the
    # reference's cast), the Triton kernels' unclamped store checked against it
    saturates, apply_fp8 = catalog.E4M3_CAST_SATURATES, ref._apply_fp8

    def unsaturated_apply(yg, scale, r):
        q = apply_fp8(yg, scale, r)
        if r.clamp:
            return q
        v = yg.float()
        v = v / scale if r.apply is catalog.ApplyForm.DIV else v * scale.reciprocal()
        nan = (0x7F | (torch.signbit(v).to(torch.uint8) << 7))
        return torch.where(v.abs() > catalog.E4M3.overflow, nan, q.view(torch.uint8)).view(FP8)

    catalog.E4M3_CAST_SATURATES, ref._apply_fp8 = False, unsaturated_apply
    ts._reasons.clear()
    ts._launchers.clear()
    try:
        for dtype in catalog.INPUT_DTYPES:
            x = make((9,), 256, dtype)
            for spec in ("clamp=False", "clamp=False,floor_at=none", "clamp=False,floor_at=none,step_dtype=input",
                         "clamp=False,apply=mul_inv,floor_at=scale,eps=1e-30"):
                for name, params in (("per_token_group_quant_fp8", (64,)), ("per_token_quant_fp8", ())):
                    entry = catalog.OPS[name]
                    run_recipe(entry, x, params, entry.scheme.recipe(*params).with_spec(spec), f"{name}[{dtype}] unsat")
            for scale in static_scales()[3:]:
                entry = catalog.OPS["static_scaled_fp8_quant"]
                run_recipe(entry, x, (), entry.scheme.base.with_spec("clamp=False"), f"static[{dtype}] unsat", scale=scale)
    finally:
        catalog.E4M3_CAST_SATURATES, ref._apply_fp8 = saturates, apply_fp8
        ts._reasons.clear()
        ts._launchers.clear()

    # the MX recipe fields no op parameter sets (torchao's to_mx: an inf block's exponent from the
    # bits, a byte-0 block's multiplier, a NaN block's y / inf), each combination with each
    # rounding, reached with recipe= as the recogniser writes them; the inputs hold inf, NaN,
    # all-zero, tiny and subnormal blocks (make), and amaxes at EVEN's rounding edge
    mx_fields = list(itertools.product(catalog.MxInf, catalog.MxByte0, catalog.MxNan))
    mx_runs = [(dtype, name) for dtype in catalog.INPUT_DTYPES for name in ("mxfp8_quant", "mxfp4_quant")]
    mx_runs += [(torch.bfloat16, name) for name in ("silu_and_mul_mxfp8_quant", "silu_and_mul_mxfp4_quant")]
    for dtype, name in mx_runs:
        entry = catalog.OPS[name]
        x, up, interleaved = inputs(entry, catalog.Layout.HALVES, (10,), 256, dtype)
        edge = torch.tensor([2.0 ** k * (1 - 2.0 ** -(m + 2)) for m in (1, 3) for k in range(-5, 11)])
        x[9, :edge.numel()] = edge.to(dtype)  # amax at 1 - 2^-(mbits+2) of a binade: EVEN rounds up
        y_ref = ref.activate(entry.activation.name, x, up, interleaved)
        for rounding, (inf, byte0, nan) in itertools.product(catalog.MxRounding, mx_fields):
            if inf in catalog.MX_DEVICE_INF and byte0 in catalog.MX_DEVICE_BYTE0:
                continue  # two device values: no recipe (catalog.Recipe.device_factor)
            base = entry.recipe(rounding.value)
            spec = dataclasses.replace(base, mx_inf=inf, mx_byte0=byte0, mx_nan=nan).spec(base)
            plan, outs = call(entry, x, (rounding.value,), up, interleaved, None, recipe=spec)
            if outs is None:
                continue
            for i, (got, exp) in enumerate(zip(outs, ref.quantize(y_ref, plan.recipe))):
                same(f"{name}[{dtype}]({rounding.value}, recipe={spec}) out{i}", got, exp)

    # recipes the kernels do not implement get a reason, not a wrong answer
    x = make((4,), 256, torch.bfloat16)
    for name, params, spec in (("per_token_group_quant_fp8", (128,), "eps=nan"),
                               ("mxfp8_quant", (), "floor_at=scale")):
        plan = make_plan(catalog.OPS[name], x, params, recipe=spec)
        checks += 1
        if ts.supports(plan) is None:
            failures.append(f"{name} recipe={spec}: supports() accepted it")

    unrun = sorted(f"{e.name}/{lay.value}" for e in catalog.OPS.values() if not e.experts
                   for lay in (tuple(catalog.Layout) if e.activation.gated else (catalog.Layout.HALVES,))
                   if (e.name, lay) not in ran)
    return {"checks": checks, "failures": failures, "unrun": unrun, "double_rounding_hits": double_rounding_hits}


if __name__ == "__main__":
    print(json.dumps(_run()))
