"""The CUDA backend's CPU-side parts: the generated sources (catalog header, units), the
answers of ``supports(plan)`` and the extension arguments ``run`` derives from a plan.
No GPU needed (plans on CUDA are built by replacing a CPU plan's device)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from quantfuse import catalog
from quantfuse.custom_ops import cuda_backend, plan, tuning

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _cuda_plan(name, x, *params, **kw):
    """The plan of a call on CUDA with x's shape and dtype (aligned)."""
    p = plan.make_plan(catalog.OPS[name], x, params, **kw)
    return dataclasses.replace(p, device_type="cuda", aligned=True)


def test_units_cover_every_dtype_and_activation():
    """One translation unit per (catalog input dtype, kernel activation), listed once in the
    header bindings.cpp dispatches on, with the catalog's ActCode enumerator and gating."""
    files = cuda_backend._generated_sources()
    units = [n for n in files if n.endswith(".cu")]
    assert len(units) == len(catalog.INPUT_DTYPES) * len(catalog.CUDA_ACTIVATIONS)
    header = files["quantfuse_units.h"]
    for name, traits, scalar, struct, code in cuda_backend.UNITS:
        assert f"X({name}, {scalar}, {code})" in header
        assert f"#define QF_TRAITS {traits}\n#define QF_ACT {struct}\n" in files[f"unit_{name}.cu"]
    gated = ", ".join("true" if a.gated else "false" for a in catalog.CUDA_ACTIVATIONS)
    assert f"kActGated[kNumActs] = {{{gated}}}" in header
    assert files["quantfuse_catalog.h"] == catalog.cpp_header()
    for a in catalog.CUDA_ACTIVATIONS:
        assert f"kAct{a.cname} = {catalog.codes()['act_' + a.name]}," in files["quantfuse_catalog.h"]


def test_csrc_restates_no_catalog_fact():
    """Codes, names and format constants come from the generated quantfuse_catalog.h: the
    hand-written sources compare no activation / scheme / layout against a literal and
    define none of the header's constants."""
    bare = [re.compile(p) for p in (r"\b(act|scheme|layout)\s*(==|!=|<=?|>)\s*\d", r"\b(act|scheme|layout)\s*>=\s*[1-9]",
                                    r"\bkCode\s*=\s*\d",
                                    r"\benum\s+Scheme\b", r"\bkActNames\s*\[\]\s*=", r"\bkSchemeNames\s*\[\]\s*=",
                                    r"\bkFp8Max\s*=", r"\bkEps\b", r"448\.0f", r"1e-10f")]
    for f in sorted(CSRC.iterdir()):
        if f.suffix not in (".h", ".cuh", ".cu", ".cpp"):
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("//")[0]
            for pat in bare:
                assert not pat.search(code), f"{f.name}:{i}: {line.strip()}"
        if f.name in ("act_quant.h", "act_quant.cuh", "scale_layout.h"):
            assert '#include "quantfuse_catalog.h"' in f.read_text(), f.name


def test_supports_reasons():
    x = torch.randn(4, 256)
    p = plan.make_plan(catalog.OPS["silu_and_mul"], x)
    assert cuda_backend.supports(p) == "input on cpu, not CUDA"
    assert "aligned" in cuda_backend.supports(dataclasses.replace(p, device_type="cuda", aligned=False))
    # per-token and static rows are walked in 16-byte vectors
    for name in ("relu2_per_token_quant_fp8", "per_token_quant_fp8"):
        assert "multiple of 8" in cuda_backend.supports(_cuda_plan(name, torch.randn(4, 100).bfloat16()))
    scale = torch.ones(1)
    assert "multiple of 4" in cuda_backend.supports(
        _cuda_plan("static_scaled_fp8_quant", torch.randn(4, 102), scale=scale))
    # a recipe the kernels do not implement (an override of a non-parameter field)
    p = _cuda_plan("mxfp8_quant", torch.randn(4, 64), recipe="clamp=False")
    assert "not a kernel recipe" in cuda_backend.supports(p)


def test_unclamped_recipes_follow_the_running_torch(monkeypatch):
    """A recipe without the clamp: the CUDA kernels (SATFINITE) run it where torch's cast saturates
    (torch >= 2.12: the clamped bits) and decline it, with the reason, where it does not."""
    from quantfuse.custom_ops import triton_schemes

    x = torch.randn(4, 256).bfloat16()
    assert "torch < 2.12" not in (cuda_backend.supports(_cuda_plan("per_token_quant_fp8", x, recipe="clamp=False")) or "")
    monkeypatch.setattr(catalog, "E4M3_CAST_SATURATES", False)
    for name, kw in (("per_token_quant_fp8", {}), ("static_scaled_fp8_quant", {"scale": torch.ones(1)})):
        p = _cuda_plan(name, x, recipe="clamp=False", **kw)
        assert not p.clamps
        assert cuda_backend._reason(p) == "clamp=False with this torch's unsaturated E4M3 cast has no CUDA kernel " \
                                           "(torch < 2.12)"
        assert triton_schemes._recipe_consts(p)["CLAMP"] is False
    assert _cuda_plan("per_token_quant_fp8", x).clamps


def test_run_arguments_follow_the_catalog():
    """The codes and recipe flags run() passes for a plan: catalog.codes() and the recipe."""
    codes, strides = catalog.codes(), catalog.mx_strides()
    x = torch.randn(6, 256).bfloat16()
    # torchao's to_mx FLOOR, as the recogniser writes it: every MX field in the one code
    torchao = (codes["mx_rounding_floor"] * strides["mx_rounding"] + codes["mx_inf_bits"] * strides["mx_inf"]
               + codes["mx_byte0_min_normal"] * strides["mx_byte0"] + codes["mx_nan_div_inf"] * strides["mx_nan"])
    cases = [
        (("silu_and_mul_per_block_quant", (64, True, True), {}), (
            "silu_and_mul", "fp8_per_group", "halves", 64, True, 0, False, True, 2)),
        (("relu2_mxfp4_quant", ("floor", True), {}), (
            "relu2", "mxfp4", "halves", 32, False, codes["mx_rounding_floor"], True, False, 8)),
        (("silu_and_mul_mxfp8_quant", ("rceil",), {"interleaved": True}), (
            "silu_and_mul", "mxfp8", "interleaved", 32, False, codes["mx_rounding_rceil"], False, False, 4)),
        (("mxfp8_quant", ("floor",), {"recipe": "mx_inf=bits,mx_byte0=min_normal,mx_nan=div_inf"}), (
            "identity", "mxfp8", "halves", 32, False, torchao, False, False, 8)),
        (("silu_and_mul_quant", (), {"up": x, "scale": torch.ones(1)}), (
            "silu_and_mul", "fp8_static", "separate", 0, False, 0, False, False, 1)),
        (("silu_and_mul", (), {"up": x}), ("silu_and_mul", None, "separate", 0, False, 0, False, False, 0)),
    ]
    for (name, params, kw), (act, scheme, layout, *rest) in cases:
        got = cuda_backend._fixed_args(_cuda_plan(name, x, *params, **kw))
        want = (codes[f"act_{act}"], codes[f"scheme_{scheme}"] if scheme else codes["scheme_none"],
                codes[f"layout_{layout}"], *rest)
        assert got == want, name


@pytest.mark.parametrize("name", sorted(catalog.OPS))
def test_every_op_has_a_kernel_unit(name):
    """Every op runs on a CUDA unit, or (an activation without one) is declined with a reason."""
    entry = catalog.OPS[name]
    assert entry.scheme is None or entry.scheme in catalog.KERNEL_SCHEMES
    if entry.activation.cuda:
        assert entry.activation in catalog.CUDA_ACTIVATIONS
        return
    scheme = entry.scheme
    args = tuple(p.example for p in scheme.params) if scheme is not None else ()
    scale = torch.ones(1) if scheme is not None and scheme.tensor_inputs else None
    p = _cuda_plan(name, torch.zeros(2, 512), *args, scale=scale)
    assert cuda_backend.supports(p) == f"activation {entry.activation.name} has no CUDA unit " \
                                          "(catalog: Activation.cuda)"


def test_launch_args_hold_every_key_the_dispatcher_reads(monkeypatch):
    """csrc/dispatch.cpp reads launch_args()'s dict by key and, on any missing key, quietly runs the
    call on the Python path (a lost fast path, not an error): every plan kind's dict holds every key
    it reads, and no other."""
    monkeypatch.setenv("QUANTFUSE_TUNE", "0")
    monkeypatch.setattr(cuda_backend, "_recipes", {})
    monkeypatch.setattr(cuda_backend, "_fixed", {})
    text = (Path(cuda_backend.__file__).parents[2] / "csrc" / "dispatch.cpp").read_text()
    wanted = set(re.findall(r'f\["(\w+)"\]', text))
    assert {"mx_device_factor", "token_classes", "scale_floors"} <= wanted
    x = torch.randn(6, 256).bfloat16()
    cases = [("silu_and_mul", (), {}), ("silu_and_mul_per_block_quant", (128,), {}),
             ("silu_and_mul_per_token_quant_fp8", (), {"recipe": "floor_at=scale,eps=1e-06"}),
             ("relu2_per_token_quant_fp8", (), {}), ("silu_and_mul_quant", (), {"up": x, "scale": torch.ones(1)}),
             ("silu_and_mul_mxfp8_quant", ("rceil",), {}), ("mxfp4_quant", ("floor", True), {})]
    for name, params, kw in cases:
        p = _cuda_plan(name, x, *params, **kw)
        names = [a.name for a in getattr(torch.ops.quantfuse, name).default._schema.arguments]
        assert set(cuda_backend.launch_args(p, names)) == wanted, name


def test_token_classes_are_the_tuples_the_dispatcher_casts(monkeypatch):
    """csrc/dispatch.cpp casts launch_args()'s token_classes to (min tokens, then one element per
    tuning.Choice field, in its order): a tuple of another length or order would fail the cast and
    lose the fast path."""
    text = (Path(cuda_backend.__file__).parents[2] / "csrc" / "dispatch.cpp").read_text()
    cast = re.search(r'f\["token_classes"\]\.cast<std::vector<std::tuple<([^>]*)>>>', text)
    types = [t.strip() for t in cast.group(1).split(",")]
    fields = dataclasses.fields(tuning.Choice)
    assert types == ["int64_t"] + ["bool" if f.type in (bool, "bool") else "int64_t" for f in fields]
    choice = tuning.Choice(2, 1, True)
    monkeypatch.setattr(cuda_backend, "_classes", lambda plan: (((64, choice),), True))
    p = _cuda_plan("silu_and_mul_per_token_quant_fp8", torch.randn(6, 256).bfloat16())
    names = [a.name for a in torch.ops.quantfuse.silu_and_mul_per_token_quant_fp8.default._schema.arguments]
    assert cuda_backend.launch_args(p, names)["token_classes"] == [
        (64, *(getattr(choice, f.name) for f in fields))]
