"""bench_pairs' native spellings compute what the fused op of their cell computes (so Inductor's
time for them is a time for the same work), per-group variants included."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

from quantfuse import catalog

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_pairs  # noqa: E402


@pytest.mark.parametrize("act_name", ["silu_and_mul", "relu2"])
@pytest.mark.parametrize("variant", ["g128", "g64", "g128:col", "g64:col"])
def test_per_group_variants_spell_their_cell(act_name, variant):
    act, scheme = catalog.ACTIVATIONS[act_name], catalog.SCHEMES["fp8_per_group"]
    a_fn = bench_pairs.native.ACTIVATION_SPELLINGS[act_name][bench_pairs.NATIVE_ACT[act_name]]
    s_fn = bench_pairs.native.SCHEME_SPELLINGS["fp8_per_group"][bench_pairs.NATIVE_SCHEME["fp8_per_group"]]
    (label, qargs), = bench_pairs.group_variants(scheme, variant[1:], False)  # "--group-variants 64:col"
    assert label == variant
    fn = bench_pairs.native_cell_fn(lambda x: s_fn(a_fn(x)), "fp8_per_group", variant, qargs, act)
    torch.manual_seed(0)
    x = torch.randn(24, 512 * (2 if act.gated else 1), dtype=torch.bfloat16) * 3
    q, s = fn(x)
    fused_q, fused_s = getattr(torch.ops.quantfuse, catalog.fused_op_name(act_name, "fp8_per_group"))(x, *qargs)
    assert torch.equal(q.flatten(-2).view(torch.uint8) if q.dim() == 3 else q.view(torch.uint8),
                       fused_q.view(torch.uint8))
    s = s.squeeze(-1)
    assert torch.equal(s, fused_s) and s.stride() == fused_s.stride()


def test_cells_without_a_native_spelling():
    act = catalog.ACTIVATIONS["silu_and_mul"]
    assert bench_pairs.native_cell_fn(None, "fp8_per_group", "g128", (128,), act) is None
    assert bench_pairs.native_cell_fn(lambda x: x, "mxfp8", "E8", (), act) is None
