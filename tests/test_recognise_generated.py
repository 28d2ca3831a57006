"""Generated spellings: every equivalent spelling fused to its recipe and equal to eager bit for
bit; every near-spelling fused to its own recipe (equal to eager) or reported, never fused wrong.

Four families: dynamic FP8 per group / per token (``spellings.py``), MXFP8 and MXFP4
(``spellings_mx.py``), static per-tensor FP8 (``spellings_static.py``). Graphs are post-grad
traces (``helpers.post_grad_graph_and_inputs``, no code generation) and the recogniser runs on
them directly: the pattern matcher's own spellings are ``tests/test_patterns.py``'s business.
Under ``CI=true`` the examples are derandomized (the same cases every run); elsewhere each run
draws new ones. ``python -m pytest -s tests/test_recognise_generated.py`` prints the counts.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import quantfuse
from quantfuse.passes.report import PassReport
from quantfuse.patterns import recognise
from helpers import post_grad_graph_and_inputs
from spellings import near_spellings, spellings
from spellings_mx import MX_NEAR_CHANGES, mx_near_spellings, mx_spellings
from spellings_static import STATIC_NEAR_CHANGES, static_near_spellings, static_spellings

CONFIG = quantfuse.FusionConfig()
#: examples drawn per property (graphs are traced, ~0.3 s each)
EXAMPLES = 80
MX_EXAMPLES = 30
STATIC_EXAMPLES = 25
#: examples per near change of the MX and static families (each change is its own test)
NEAR_EXAMPLES = 2
CASES = {family: {"equivalent": 0, "near_fused": 0, "near_reported": 0, "wrong": 0}
         for family in ("fp8", "mx", "static")}


def _settings(examples: int):
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=os.environ.get("CI") == "true")


def _recognise(spelling):
    xs = spelling.make_inputs()
    gm, inputs = post_grad_graph_and_inputs(spelling.fn, *xs)
    before = str(gm.graph)
    report = PassReport()
    recognise.run(gm.graph, CONFIG, recognise.Reporter(report))
    gm.graph.lint()
    gm.recompile()
    return xs, gm, inputs, before, report


def _bits(t):
    return t.view(torch.uint8) if t.is_floating_point() and t.dtype.itemsize == 1 else t


def _outputs(eager, xs) -> tuple:
    """The eager outputs the graph computes: an input returned as it is (vLLM's static quant
    returns its scale) is returned by Dynamo, not by the graph."""
    eager = eager if isinstance(eager, tuple) else (eager,)
    return tuple(e for e in eager if not any(e is x for x in xs))


def _same(eager, fused) -> bool:
    if len(eager) != len(fused):
        return False
    for e, f in zip(eager, fused):
        if e.shape != f.shape or e.dtype != f.dtype:
            return False
        e, f = _bits(e), _bits(f)
        if not torch.equal(e, f) and not (e.is_floating_point() and torch.equal(e.isnan(), f.isnan())
                                          and torch.equal(e[~e.isnan()], f[~f.isnan()])):
            return False
    return True


def _matches_eager(spelling, rewrite, eager, fused) -> bool:
    """Bit for bit, except an fp32 x / (1 + exp(-x)) written out: on the CPU it is not eager's
    F.silu kernel, which the fused op computes, to the last fp32 bit (the rewrite says so); there
    scales agree to 1e-6 and few FP8 codes differ."""
    note = rewrite.params.get("note", "")
    assert spelling._act_note_ok(note), (spelling, note)
    if spelling.act_bit_exact:
        return _same(eager, fused)
    qe, qf = eager[0], fused[0]
    close = all(torch.allclose(se, sf, rtol=1e-6, atol=0, equal_nan=True) for se, sf in zip(eager[1:], fused[1:]))
    return close and (_bits(qe) != _bits(qf)).float().mean().item() < 0.01


def _recipe_difference(rewrite, spelling) -> dict:
    """The fields where the rewrite's recipe differs from the one ``spelling`` computes (an eps
    that is the same float32 is the same)."""
    scheme = spelling.scheme
    names = {p.name for p in scheme.params}
    params = {k: v for k, v in rewrite.params.items() if k in names}
    got = scheme.recipe(**params).with_spec(rewrite.params.get("recipe", ""))
    return {k: v for k, v in spelling.recipe().differences(got).items()
            if not (k == "eps" and float(torch.tensor(v[0])) == float(torch.tensor(v[1])))}


def check_equivalent(family: str, spelling) -> None:
    """Fused once, to ``spelling.recipe()``, and equal to eager; nothing reported."""
    xs, gm, inputs, _, report = _recognise(spelling)
    assert len(report.rewrites) == 1 and report.near_misses == [], (spelling, str(report))
    r = report.rewrites[0]
    assert r.activation == spelling.activation and r.scheme == spelling.scheme.key, (spelling, str(report))
    diff = _recipe_difference(r, spelling)
    if diff or not _matches_eager(spelling, r, _outputs(spelling.fn(*xs), xs), gm(*inputs)):
        CASES[family]["wrong"] += 1
        raise AssertionError((spelling, diff))
    CASES[family]["equivalent"] += 1


def check_near(family: str, spelling, reason: str | None = None, must_fuse: bool = False) -> None:
    """Fused to its own recipe and equal to eager, or (unless ``must_fuse``) reported, with
    ``reason`` (a regular expression) where given, and the graph left as it was."""
    xs, gm, inputs, before, report = _recognise(spelling)
    assert len(report.rewrites) + len(report.near_misses) == 1, (spelling, str(report))
    assert report.rewrites or not must_fuse, (spelling, str(report))
    if report.rewrites:
        r = report.rewrites[0]
        if spelling.recipe() is None or _recipe_difference(r, spelling) or not _matches_eager(
                spelling, r, _outputs(spelling.fn(*xs), xs), gm(*inputs)):
            CASES[family]["wrong"] += 1
            raise AssertionError((spelling, str(report)))
        CASES[family]["near_fused"] += 1
    else:
        CASES[family]["near_reported"] += 1
        assert str(gm.graph) == before
        got = report.near_misses[0].reason
        assert got and (reason is None or re.search(reason, got)), (spelling, got, reason)


@_settings(EXAMPLES)
@given(spellings())
def test_equivalent_spellings_fuse_to_their_recipe(spelling):
    check_equivalent("fp8", spelling)


@_settings(EXAMPLES)
@given(near_spellings())
def test_near_spellings_fuse_to_their_own_recipe_or_are_reported(spelling):
    check_near("fp8", spelling)


@_settings(MX_EXAMPLES)
@given(mx_spellings())
def test_mx_equivalent_spellings_fuse_to_their_recipe(spelling):
    check_equivalent("mx", spelling)


@_settings(STATIC_EXAMPLES)
@given(static_spellings())
def test_static_equivalent_spellings_fuse_to_their_recipe(spelling):
    check_equivalent("static", spelling)


#: (family, strategy of a change, the change, its reason or None where it is a recipe of its own)
NEAR_CHANGES = [("mx", mx_near_spellings, c, r) for c, r in MX_NEAR_CHANGES] + \
    [("static", static_near_spellings, c, r) for c, r in STATIC_NEAR_CHANGES]


@pytest.mark.parametrize("family,near,change,reason", NEAR_CHANGES, ids=[f"{f}-{c}" for f, _, c, _ in NEAR_CHANGES])
def test_near_changes_are_reported_or_fused_to_their_own_recipe(family, near, change, reason):
    """Each change of the MX and static families, on random spellings: reported with its reason,
    or (no reason) fused to the recipe it is."""
    @_settings(NEAR_EXAMPLES)
    @given(near(change))
    def check(spelling):
        assert (spelling.recipe() is None) == (reason is not None)
        check_near(family, spelling, reason, must_fuse=reason is None)
    check()


def test_case_count():
    """The number of generated cases this run checked (printed with -s): never a wrong rewrite."""
    print(f"generated cases: {CASES}")
    assert all(c["wrong"] == 0 for c in CASES.values())
