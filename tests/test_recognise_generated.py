"""Generated spellings: every equivalent spelling fused to its recipe and equal to eager bit for
bit; every near-spelling fused to its own recipe (equal to eager) or reported, never fused wrong.

Graphs are post-grad traces (``helpers.post_grad_graph``, no code generation) and the
recogniser runs on them directly: the pattern matcher's own spellings are
``tests/test_patterns.py``'s business.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings

import quantfuse
from quantfuse.passes.report import PassReport
from quantfuse.patterns import recognise
from helpers import post_grad_graph
from spellings import near_spellings, spellings

FP8 = torch.float8_e4m3fn
CONFIG = quantfuse.FusionConfig()
#: examples drawn per property (graphs are traced, ~0.3 s each)
EXAMPLES = 80
CASES = {"equivalent": 0, "near": 0, "near_fused": 0, "near_reported": 0}


def _recognise(spelling):
    xs = spelling.make_inputs()
    gm = post_grad_graph(spelling.fn, *xs)
    before = str(gm.graph)
    report = PassReport()
    recognise.run(gm.graph, CONFIG, recognise.Reporter(report))
    gm.graph.lint()
    gm.recompile()
    return xs, gm, before, report


def _same(eager, fused) -> bool:
    for e, f in zip(eager, fused):
        if e.shape != f.shape or e.dtype != f.dtype:
            return False
        e, f = (t.view(torch.uint8) if t.dtype == FP8 else t for t in (e, f))
        if not torch.equal(e, f) and not (e.is_floating_point() and torch.equal(e.isnan(), f.isnan())
                                          and torch.equal(e[~e.isnan()], f[~f.isnan()])):
            return False
    return True


def _matches_eager(spelling, rewrite, eager, fused) -> bool:
    """Bit for bit, except fp32 SiLU: eager's F.silu kernel is not x / (1 + exp(-x)) to the last
    fp32 bit (the rewrite says so); there scales agree to 1e-6 and few FP8 codes differ."""
    if spelling.dtype != torch.float32 or spelling.act != "silu":
        return _same(eager, fused)
    assert "float32 silu" in rewrite.params.get("note", "")
    (qe, se), (qf, sf) = eager, fused
    close = torch.allclose(se, sf, rtol=1e-6, atol=0, equal_nan=True)
    return close and (qe.view(torch.uint8) != qf.view(torch.uint8)).float().mean().item() < 0.01


def _recipe_of(rewrite, spelling):
    from quantfuse import catalog

    scheme = spelling.scheme
    params = {k: v for k, v in rewrite.params.items() if k in ("group_size", "column_major_scales", "use_ue8m0")}
    return scheme.recipe(**params).with_spec(rewrite.params.get("recipe", ""))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(spellings())
def test_equivalent_spellings_fuse_to_their_recipe(spelling):
    CASES["equivalent"] += 1
    xs, gm, _, report = _recognise(spelling)
    assert len(report.rewrites) == 1 and report.near_misses == [], (spelling, str(report))
    r = report.rewrites[0]
    assert r.activation == spelling.activation and r.scheme == spelling.scheme.key
    got, want = _recipe_of(r, spelling), spelling.recipe()
    diff = {k: v for k, v in want.differences(got).items()
            if not (k == "eps" and float(torch.tensor(v[0])) == float(torch.tensor(v[1])))}
    assert diff == {}, (spelling, diff)
    assert _matches_eager(spelling, r, spelling.fn(*xs), gm(*xs)), spelling


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(near_spellings())
def test_near_spellings_fuse_to_their_own_recipe_or_are_reported(spelling):
    CASES["near"] += 1
    xs, gm, before, report = _recognise(spelling)
    assert len(report.rewrites) + len(report.near_misses) == 1, (spelling, str(report))
    if report.rewrites:
        CASES["near_fused"] += 1
        assert spelling.recipe() is not None, (spelling, str(report))
        assert _matches_eager(spelling, report.rewrites[0], spelling.fn(*xs), gm(*xs)), spelling
    else:
        CASES["near_reported"] += 1
        assert str(gm.graph) == before
        assert report.near_misses[0].reason


def test_case_count():
    """The number of generated cases this run checked (printed with -s)."""
    print(f"generated cases: {CASES}")
