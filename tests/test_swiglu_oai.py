"""GPT-OSS's clamped SwiGLU (``catalog.SWIGLUOAI_AND_MUL``, vLLM's ``swigluoai_and_mul``).

The reference is eager PyTorch running transformers' code bit for bit: ``_eager`` below is
``GptOssExperts._apply_gate`` of ``transformers/models/gpt_oss/modeling_gpt_oss.py``
(the same computation written here; the real method is checked too where transformers is
installed). NaN is compared
by position (eager's NaN sign depends on the op order of the CPU kernels). The Triton
kernels are checked under the interpreter in a subprocess (``TRITON_INTERPRET=1``), every
scheme, bit for bit against the reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

import quantfuse  # noqa: F401  (registers the ops)
from quantfuse import catalog
from quantfuse.custom_ops import cuda_backend, reference
from quantfuse.custom_ops.plan import make_plan

qf = torch.ops.quantfuse
ACT = catalog.SWIGLUOAI_AND_MUL
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: (alpha, limit): GPT-OSS's defaults, a limit no 16-bit dtype holds, a small limit
PARAMS = [tuple(ACT.defaults.values()), (1.3, 7.1), (2.0, 0.5)]


def _eager(gate_up, alpha, limit):
    # transformers/models/gpt_oss/modeling_gpt_oss.py, GptOssExperts._apply_gate
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(min=None, max=limit)
    up = up.clamp(min=-limit, max=limit)
    glu = gate * torch.sigmoid(gate * alpha)
    gated_output = (up + 1) * glu
    return gated_output


def _same(a, b):
    """Bit-equal, NaN by position."""
    assert a.shape == b.shape and a.dtype == b.dtype
    na, nb = torch.isnan(a), torch.isnan(b)
    assert torch.equal(na, nb)
    ib = {2: torch.int16, 4: torch.int32}[a.element_size()]
    assert torch.equal(a.masked_fill(na, 0).view(ib), b.masked_fill(nb, 0).view(ib))


def _interleaved_inputs(dtype):
    """Every finite and special 16-bit gate value (fp32: random ones) with random up values,
    interleaved, plus edge rows: beyond +-limit, NaN, inf, -0."""
    torch.manual_seed(0)
    if dtype == torch.float32:
        g = torch.randn(1 << 16) * 10
    else:
        g = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype).float()
    u = torch.randn(g.shape) * 8
    edges = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 7.0, -7.0, 7.03125, -7.03125,
                          7.1, 100.0, -100.0, 0.5, -0.5, 6.9, 1e-30])
    ge = edges.repeat_interleave(len(edges))
    ue = edges.repeat(len(edges))
    g, u = torch.cat([g, ge]), torch.cat([u, ue])
    return torch.stack([g, u], -1).flatten().to(dtype)[None]


@pytest.mark.parametrize("alpha,limit", PARAMS)
@pytest.mark.parametrize("dtype", catalog.INPUT_DTYPES)
def test_reference_is_eager_transformers_bit_for_bit(dtype, alpha, limit):
    x = _interleaved_inputs(dtype)
    want = _eager(x, alpha, limit)
    _same(reference.swigluoai_and_mul(x, interleaved=True, alpha=alpha, limit=limit), want)
    _same(qf.swigluoai_and_mul(x, interleaved=True, alpha=alpha, limit=limit), want)


def test_reference_is_transformers_own_method():
    m = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    alpha, limit = ACT.defaults["alpha"], ACT.defaults["limit"]
    experts = types.SimpleNamespace(alpha=alpha, limit=limit)  # _apply_gate reads only these
    for dtype in catalog.INPUT_DTYPES:
        x = _interleaved_inputs(dtype)
        _same(qf.swigluoai_and_mul(x, interleaved=True), m.GptOssExperts._apply_gate(experts, x))


def test_eager_rounds_each_op():
    """The 16-bit result differs from one fp32 rounding (the EACH_OP rounding is needed)."""
    x = _interleaved_inputs(torch.bfloat16)
    g, u = x[..., ::2].float().clamp(max=7.0), x[..., 1::2].float().clamp(-7.0, 7.0)
    once = ((u + 1) * g * torch.sigmoid(g * 1.702)).bfloat16()
    assert (once != reference.swigluoai_and_mul(x, interleaved=True)).sum() > 0
    assert ACT.rounding is catalog.ActRounding.EACH_OP


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("limit", [7.0, 7.1, 0.5, -3.3, 1e-3, 7e4, 1e30])
def test_clamps_on_pairs_equal_fp32_clamps_every_value(dtype, limit):
    """The CUDA kernels clamp 16-bit pairs as min / max (NaN-keeping) with the rounded limit
    (act_quant.cuh SwigluOai::pairs) wherever that limit is neither 0 nor NaN; torch clamps
    in fp32 against the fp32 limit and rounds. Both, for every value of the dtype."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    xf, lim = x.float(), torch.tensor(limit, dtype=torch.float32)
    gate = torch.where(xf > lim, lim, xf).to(dtype)
    up_lo = torch.where(xf < -lim, -lim, xf)
    up = torch.where(up_lo > lim, lim, up_lo).to(dtype)
    ld = lim.to(dtype)
    if ld.item() == 0 or ld.isnan():
        pytest.skip("the kernels clamp in fp32 for this limit")
    for got, want in ((torch.minimum(x, ld), gate), (torch.minimum(torch.maximum(x, -ld), ld), up)):
        # NaN by position (min.NaN returns the canonical NaN), every other value bit for bit
        assert torch.equal(got.isnan(), want.isnan()) and int(want.isnan().sum()) > 0
        keep = ~want.isnan()
        assert torch.equal(got[keep].view(torch.int16), want[keep].view(torch.int16))


def test_catalog_entry_and_schemas():
    assert catalog.ACTIVATIONS["swigluoai_and_mul"] is ACT and ACT.gated and ACT.cuda
    assert [p.name for p in ACT.params] == ["alpha", "limit"]
    assert ACT.defaults == {"alpha": 1.702, "limit": 7.0}  # GPT-OSS's config defaults
    ops = [e for e in catalog.OPS.values() if e.activation is ACT]
    assert len(ops) == 1 + len(catalog.SCHEMES) + len(catalog.EXPERTS_SCHEMES)
    for e in ops:
        schema = str(getattr(qf, e.name).default._schema)
        assert "*, bool interleaved=False, float alpha=1.702, float limit=7." in schema, schema
    # activations without parameters have none in their schema
    assert "alpha" not in catalog.OPS["silu_and_mul_mxfp8_quant"].schema
    assert ACT in catalog.KERNEL_ACTIVATIONS and ACT in catalog.CUDA_ACTIVATIONS
    header = catalog.cpp_header()
    code = catalog.codes()["act_swigluoai_and_mul"]
    # the kernels' ActArgs::p indices and the count the binding checks, from Activation.params
    assert "constexpr int kSwigluOaiAlpha = 0, kSwigluOaiLimit = 1;" in header
    assert f"kActSwigluOai = {code}," in header
    counts = header.split("kActNumParams[] = {")[1].split("}")[0].split(", ")
    assert counts[code] == "2" and counts[catalog.codes()["act_silu_and_mul"]] == "0"


def test_params_are_part_of_the_plan_key():
    x = torch.randn(2, 64)
    entry = catalog.OPS["swigluoai_and_mul_mxfp8_quant"]
    a = make_plan(entry, x)
    b = make_plan(entry, x, act_params={"alpha": 1.5})
    assert a.act_params == (1.702, 7.0) and b.act_params == (1.5, 7.0)
    assert a.key != b.key and b.act_kwargs == {"alpha": 1.5, "limit": 7.0}
    assert make_plan(catalog.OPS["silu_and_mul"], x).act_params == ()


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(limit=0.0), ValueError, "limit must be positive, got 0.0"),
    (dict(limit=-7.0), ValueError, "limit must be positive"),
    (dict(alpha=float("nan")), ValueError, "alpha must be finite"),
    (dict(limit=float("inf")), ValueError, "limit must be finite"),
])
def test_bad_params_name_the_problem(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        qf.swigluoai_and_mul(torch.randn(2, 8), interleaved=True, **kwargs)
    with pytest.raises(error, match=re.escape(message)):
        qf.swigluoai_and_mul_mxfp8_quant(torch.randn(2, 64), interleaved=True, **kwargs)


def test_unknown_activation_parameter_is_refused():
    with pytest.raises(TypeError, match="unexpected activation parameters"):
        make_plan(catalog.OPS["swigluoai_and_mul"], torch.randn(2, 8), act_params={"beta": 1.0})


def _call_args(scheme):
    tensors = [torch.tensor([0.0123])] if scheme.tensor_inputs else []
    return tensors + [p.example for p in scheme.params]


def _bits(t):
    return t.contiguous().view(torch.uint8)


@pytest.mark.parametrize("alpha,limit", PARAMS)
@pytest.mark.parametrize("scheme", list(catalog.SCHEMES))
@pytest.mark.parametrize("dtype", catalog.INPUT_DTYPES)
def test_fused_equals_unfused_pair_in_every_layout(scheme, dtype, alpha, limit):
    s = catalog.SCHEMES[scheme]
    fused = getattr(qf, catalog.fused_op_name(ACT.name, scheme))
    args = _call_args(s)
    torch.manual_seed(3)
    g = (torch.randn(3, 256) * 5).to(dtype)
    u = (torch.randn(3, 256) * 5).to(dtype)
    inter = torch.stack([g, u], -1).flatten(-2)
    p = dict(alpha=alpha, limit=limit)
    want = getattr(qf, s.unfused_name)(qf.swigluoai_and_mul(inter, interleaved=True, **p), *args)
    want = want if isinstance(want, tuple) else (want,)
    for got in (fused(inter, *args, interleaved=True, **p), fused(torch.cat([g, u], -1), *args, **p),
                fused(g, *args, up=u, **p)):
        got = got if isinstance(got, tuple) else (got,)
        for a, b in zip(got, want):
            assert torch.equal(_bits(a), _bits(b))


def test_cuda_backend_runs_it_with_its_parameters(monkeypatch):
    """Every swigluoai op has a CUDA unit (no decline for the activation), and run() hands the
    plan's alpha and limit to the extension (act_params, in Activation.params order)."""
    for e in catalog.OPS.values():
        if e.activation is not ACT or e.experts:  # the experts ops: tests/test_experts_ops.py
            continue
        scale = torch.ones(1) if e.scheme is not None and e.scheme.tensor_inputs else None
        args = tuple(p.example for p in e.scheme.params) if e.scheme is not None else ()
        plan = dataclasses.replace(make_plan(e, torch.zeros(2, 512), args, scale=scale,
                                             act_params={"alpha": 1.5, "limit": 3.0}),
                                   device_type="cuda", aligned=True)
        assert "no CUDA unit" not in (cuda_backend._reason(plan) or "")
        seen = {}

        class Extension:
            def act_quant(self, *args, act_params=(), vectors=0, **recipe):
                seen["act_params"] = act_params
                seen["vectors"] = vectors
                return ""

        monkeypatch.setattr(cuda_backend, "_module", Extension())
        cuda_backend.run(plan, plan.empty_outputs(torch.device("cpu")), torch.zeros(2, 512), None, scale)
        assert seen["act_params"] == (1.5, 3.0)
        assert seen["vectors"] == 0  # nothing tuned without a GPU: the kernel's default


def test_op_form_site_keeps_its_parameters_when_fused():
    """quant(swigluoai_and_mul(x, interleaved=True, alpha=..., limit=...)) compiled with the
    pass: fused, with the layout and parameters of the site."""
    def f(x):
        return qf.per_token_group_quant_fp8(qf.swigluoai_and_mul(x, interleaved=True, alpha=1.5, limit=3.0), 128)

    x = (torch.randn(4, 512) * 4).bfloat16()
    want = f(x)
    got = quantfuse.compile(f, config=quantfuse.FusionConfig(native_on_cpu=True))(x)
    report = str(quantfuse.last_report())
    assert "swigluoai_and_mul_per_block_quant" in report and "alpha=1.5" in report, report
    assert torch.equal(_bits(got[0]), _bits(want[0])) and torch.equal(got[1], want[1])


# --- the Triton kernels under the interpreter ---------------------------------------------

def test_triton_interpreter_bit_exact_every_scheme():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["failures"] == [], summary["failures"][:20]
    assert summary["unrun"] == [], summary["unrun"]
    assert summary["checks"] >= 100, summary


def _interpret() -> dict:
    """Every swigluoai op, layout, dtype, kernel parameter set and (alpha, limit) through the
    Triton backend, against the reference (runs with TRITON_INTERPRET=1)."""
    import itertools

    import numpy as np

    assert os.environ.get("TRITON_INTERPRET") == "1"
    from quantfuse.custom_ops import triton_schemes as ts

    def numpy_sigmoid(t):
        # the interpreter's tl.exp is numpy's; the kernels compute 1 / (1 + exp(-z)) as torch's CUDA sigmoid
        with np.errstate(over="ignore", under="ignore"):
            return 1.0 / (1.0 + torch.from_numpy(np.exp(-t.numpy())))

    reference.sigmoid = numpy_sigmoid
    reference.div_scalar = lambda t, qmax: t * torch.full_like(t, 1.0 / qmax)  # as on CUDA
    assert ts.is_available()
    failures, checks, ran = [], 0, set()
    for dtype, entry, layout, (alpha, limit) in itertools.product(
            catalog.INPUT_DTYPES, [e for e in catalog.OPS.values() if e.activation is ACT and not e.experts],
            catalog.Layout, PARAMS):
        torch.manual_seed(checks)
        g = torch.randn(5, 256) * 6
        u = torch.randn(5, 256) * 6
        g[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 100.0])
        u[1, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -100.0])
        g, u = g.to(dtype), u.to(dtype)
        if layout is catalog.Layout.SEPARATE:
            x, up, inter = g, u, False
        elif layout is catalog.Layout.INTERLEAVED:
            x, up, inter = torch.stack([g, u], -1).flatten(-2), None, True
        else:
            x, up, inter = torch.cat([g, u], -1), None, False
        scheme = entry.scheme
        sets = itertools.product(*(p.kernel_values for p in scheme.params)) if scheme is not None else [()]
        scale = torch.tensor([0.0123]) if scheme is not None and scheme.tensor_inputs else None
        y = reference.swigluoai_and_mul(x, up, inter, alpha, limit)
        for params in sets:
            plan = make_plan(entry, x, params, up=up, interleaved=inter, scale=scale,
                             act_params=dict(alpha=alpha, limit=limit))
            why = ts.supports(plan)
            tag = f"{entry.name}[{dtype}, {layout.value}, {params}, alpha={alpha}, limit={limit}]"
            if why is not None:
                failures.append(f"{tag}: supports() says {why}")
                continue
            outs = plan.empty_outputs(x.device)
            ts.run(plan, outs, x, up, scale)
            ran.add((entry.name, layout))
            want = (y,) if scheme is None else reference.quantize(y, plan.recipe, scale)
            want = want if isinstance(want, tuple) else (want,)
            for i, (a, b) in enumerate(zip(outs, want)):
                checks += 1
                if a.dtype == catalog.E4M3.dtype:  # NaN codes sign-blind
                    a, b = (t.view(torch.uint8) for t in (a, b))
                    nan = lambda t: (t & 0x7F) == 0x7F  # noqa: E731
                    ok = torch.equal(nan(a), nan(b)) and torch.equal(a[~nan(a)], b[~nan(b)])
                elif a.is_floating_point():
                    na, nb = torch.isnan(a), torch.isnan(b)
                    ib = {2: torch.int16, 4: torch.int32}[a.element_size()]
                    ok = torch.equal(na, nb) and torch.equal(a.masked_fill(na, 0).view(ib),
                                                             b.masked_fill(nb, 0).view(ib))
                else:
                    ok = torch.equal(a, b)
                if not ok:
                    failures.append(f"{tag} out{i} differs")
    unrun = sorted(f"{e.name}/{lay.value}" for e in catalog.OPS.values() if e.activation is ACT and not e.experts
                   for lay in catalog.Layout if (e.name, lay) not in ran)
    return {"checks": checks, "failures": failures, "unrun": unrun}


if __name__ == "__main__":
    print(json.dumps(_interpret()))
