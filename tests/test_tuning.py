"""Launch choices tuned per device (quantfuse/custom_ops/tuning.py: vectors per thread of the
group kernels, the per-token kernel's row staging): which plans are tuned, the token classes
derived from the L2 size, the choice, the table on disk and the cases that must not time
(graph capture, QUANTFUSE_TUNE=0, too little memory). The timer is a stand-in
here; tests/gpu/test_dispatch.py runs the real one."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from quantfuse import catalog
from quantfuse.custom_ops import plan, tuning

L2 = 50 * 2**20
# sms=0: no per-token decode class (test_per_token_decode_class gives the device its SMs)
H200 = tuning.Device("NVIDIA H200", L2, 100 * 2**30, capturing=False, sms=0)


def _plan(name, hidden=7168, dtype=torch.bfloat16, params=(), **kw):
    entry = catalog.OPS[name]
    width = 2 * hidden if entry.activation.gated and "up" not in kw and not kw.get("interleaved") else hidden
    x = torch.zeros(4, width, dtype=dtype)
    if "up" in kw:
        kw["up"] = torch.zeros_like(x)
    p = plan.make_plan(entry, x, params, **kw)
    return dataclasses.replace(p, device_type="cuda", aligned=True)


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTFUSE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("QUANTFUSE_TUNE", raising=False)
    tuning.clear()
    yield
    tuning.clear()


class Timer:
    """A stand-in timer: µs by (tokens, vectors) (group kernels) or (tokens, row_stages)
    (per-token), recording every call."""

    def __init__(self, times):
        self.times, self.calls = times, []

    def __call__(self, p, choice):
        if not tuning._per_token(p) and choice.row_stages:
            self.calls.append((p.tokens, choice))
            return None  # the staged group kernels: refused here (test_staged_group_choice_wins_where_faster)
        key = choice.row_stages if tuning._per_token(p) else choice.vectors
        self.calls.append((p.tokens, key))
        return self.times(p.tokens, key)


def test_which_plans_are_tuned():
    """Per-group and MX kernels on halves or two tensors (the experts ops' too), the per-token
    kernel in every layout; not static, the activation ops or interleaved group kernels (the
    kernel takes its default)."""
    assert tuning.tunable(_plan("silu_and_mul_per_block_quant", params=(128,)))
    assert tuning.tunable(_plan("silu_and_mul_per_block_quant", params=(128,), up=True))
    assert tuning.tunable(_plan("relu2_mxfp8_quant"))
    assert tuning.tunable(_plan("silu_and_mul_mxfp4_quant"))
    assert not tuning.tunable(_plan("silu_and_mul_per_block_quant", params=(128,), interleaved=True))
    assert tuning.tunable(_plan("silu_and_mul_per_token_quant_fp8"))
    assert tuning.tunable(_plan("silu_and_mul_per_token_quant_fp8", interleaved=True))
    assert not tuning.tunable(_plan("silu_and_mul_quant", scale=torch.ones(1)))
    assert not tuning.tunable(_plan("silu_and_mul"))
    group = tuning.candidates(_plan("relu2_mxfp8_quant"))
    assert group == (tuple(tuning.Choice(v) for v in tuning.CANDIDATES)
                     + tuple(tuning.Choice(v, r) for v in tuning.STAGED_VECTORS for r in tuning.GROUP_ROW_STAGES))
    assert len({c.label for c in group}) == len(group)
    # per-token: the op's own recipe on both kernels (the default one and the runtime-recipe one),
    # any other recipe on the runtime-recipe kernel, which is the only one it has
    per_token = tuning.candidates(_plan("relu2_per_token_quant_fp8"))
    assert set(per_token) == {tuning.Choice(v, r, k) for v in (0, 1, 2, 4) for r in tuning.ROW_STAGES
                              for k in (False, True)}
    assert len({c.label for c in per_token}) == len(per_token) == 2 * 4 * len(tuning.ROW_STAGES)
    recipe = tuning.candidates(_plan("relu2_per_token_quant_fp8", recipe="floor_at=scale,eps=1e-06"))
    assert set(recipe) == {tuning.Choice(v, r) for v in (0, 1, 2, 4) for r in tuning.ROW_STAGES}
    experts = _experts_plan("silu_and_mul_mxfp8_experts_quant", 8)
    assert tuning.tunable(experts) and tuning.tunable(_experts_plan("mxfp4_experts_quant", 8))
    assert not tuning.tunable(_experts_plan("swigluoai_and_mul_mxfp8_experts_quant", 8, interleaved=True))
    assert set(tuning.candidates(experts)) == {tuning.Choice(v, r) for v in tuning.EXPERTS_VECTORS
                                               for r in (0, *tuning.GROUP_ROW_STAGES)}
    # the expert count is part of the key (the search's rounds), nothing else about the offsets
    assert tuning.tuning_key(experts) != tuning.tuning_key(_experts_plan("silu_and_mul_mxfp8_experts_quant", 256))
    assert tuning.tuning_key(experts) == tuning.tuning_key(_experts_plan("silu_and_mul_mxfp8_experts_quant", 8, 3))


def _experts_plan(name, experts, tokens=4, interleaved=False):
    entry = catalog.OPS[name]
    width = 2 * 2048 if entry.activation.gated else 2048
    x = torch.zeros(tokens, width, dtype=torch.bfloat16)
    offsets = plan.expert_offsets([tokens] + [0] * (experts - 1))  # every token the first expert's
    p = plan.make_plan(entry, x, (experts, 8), scale=offsets, interleaved=interleaved)
    return dataclasses.replace(p, device_type="cuda", aligned=True)


def test_classes_start_where_the_input_passes_l2():
    """Class k starts at the first token count whose input bytes reach CLASSES[k][0] L2 sizes and
    is timed at CLASSES[k][1]; gated rows count gate and up."""
    p = _plan("silu_and_mul_per_block_quant", params=(128,))
    rb = 7168 * 2 * 2
    assert tuning.row_bytes(p) == rb
    assert tuning.class_tokens(p, L2) == tuple((math.ceil(a * L2 / rb), math.ceil(b * L2 / rb))
                                               for a, b in tuning.CLASSES)
    assert tuning.row_bytes(_plan("relu2_mxfp8_quant", dtype=torch.float16)) == 7168 * 2
    # per-token: a first class from the first token, timed at half the L2
    t = _plan("silu_and_mul_per_token_quant_fp8")
    assert tuning.class_tokens(t, L2) == ((0, math.ceil(L2 / 2 / rb)),) + tuning.class_tokens(p, L2)


def test_per_token_decode_class(tmp_path):
    """On a GPU of known SM count the per-token kernel gets a decode class first: from the first
    token, timed at one row per SM; the half-L2 class then starts at the geometric mean of the two
    timed counts. The group kernels get none, nor rows so wide that half the L2 holds fewer rows than
    the GPU has SMs. A decode call takes the decode class's choice, a larger one the next class's."""
    sms = 132
    p = _plan("silu_and_mul_per_token_quant_fp8")
    rb = tuning.row_bytes(p)
    half = math.ceil(L2 / 2 / rb)
    decode = sms * tuning.DECODE_ROWS_PER_SM
    assert tuning.class_tokens(p, L2, sms) == ((0, decode), (math.isqrt(decode * half) + 1, half)) + \
        tuning.class_tokens(p, L2)[1:]
    assert decode < math.isqrt(decode * half) + 1 <= half
    g = _plan("silu_and_mul_per_block_quant", params=(128,))
    assert tuning.class_tokens(g, L2, sms) == tuning.class_tokens(g, L2)
    wide = _plan("silu_and_mul_per_token_quant_fp8", hidden=L2 // (2 * 2 * 2 * 100))  # 100 rows in half the L2
    assert tuning.class_tokens(wide, L2, sms) == tuning.class_tokens(wide, L2)
    device = dataclasses.replace(H200, sms=sms)
    C = tuning.Choice
    def us(q, c):  # two vectors the fastest at the decode size, the default above it
        return 1.0 if (q.tokens == decode) == (c == C(2)) else 2.0
    classes, final = tuning.token_classes(p, device, us)
    (_, _), (s1, _), (s2, _), (s3, _) = tuning.class_tokens(p, L2, sms)
    assert final and classes == ((0, C(2)), (s1, C()), (s2, C()), (s3, C()))
    assert [tuning.choice_for(classes, t) for t in (1, decode, s1 - 1, s1)] == [C(2), C(2), C(2), C()]
    entry = json.loads((tmp_path / "tuning-NVIDIA_H200.json").read_text())[tuning.tuning_key(p)]
    assert [c["tokens"] for c in entry["classes"]][:2] == [decode, half]


def test_fastest_count_per_class_and_the_table_on_disk(tmp_path):
    """Each class takes its fastest count (ties: fewer vectors); the answer is written to the
    device's table, and a later process (memory cleared) reads it without timing."""
    p = _plan("silu_and_mul_per_block_quant", params=(128,))
    (s1, t1), (s2, t2) = tuning.class_tokens(p, L2)
    table = {(t1, 1): 10.0, (t1, 2): 8.0, (t1, 4): 8.0, (t2, 1): 30.0, (t2, 2): 29.0, (t2, 4): 25.0}
    timer = Timer(lambda t, v: table[(t, v)])
    classes, final = tuning.token_classes(p, H200, timer)
    C = tuning.Choice
    assert final and classes == ((s1, C(2)), (s2, C(4)))
    assert sorted(c for c in timer.calls if not isinstance(c[1], tuning.Choice)) == sorted(table)
    staged = [c for c in tuning.candidates(p) if c.row_stages]
    assert {(t, c) for t, c in timer.calls if isinstance(c, tuning.Choice)} == {
        (t, c) for t in (t1, t2) for c in staged}  # every staged choice was asked, refused here
    saved = json.loads((tmp_path / "tuning-NVIDIA_H200.json").read_text())
    entry = saved[tuning.tuning_key(p)]
    assert [(c["min_tokens"], c["tokens"], c["vectors"]) for c in entry["classes"]] == [(s1, t1, 2), (s2, t2, 4)]
    assert entry["classes"][1]["us"] == {"1": 30.0, "2": 29.0, "4": 25.0}

    tuning.clear()
    def no_timing(*_):
        raise AssertionError("timed again although the table has the answer")
    assert tuning.token_classes(p, H200, no_timing) == (((s1, C(2)), (s2, C(4))), True)
    other = dataclasses.replace(H200, name="NVIDIA H100 80GB HBM3")
    assert tuning.token_classes(p, other, Timer(lambda t, v: 1.0 / v))[0] == ((s1, C(4)), (s2, C(4)))


def test_staged_group_choice_wins_where_faster(tmp_path):
    """A group kernel's class takes a staged choice (groups staged in shared memory) where it is the
    fastest, and the table names it with its vector count."""
    p = _plan("silu_and_mul_mxfp8_quant")
    (s1, t1), (s2, t2) = tuning.class_tokens(p, L2)
    C = tuning.Choice
    us = {C(1): 10.0, C(2): 9.0, C(4): 11.0, C(1, 2): 8.0, C(2, 2): 8.5}
    assert set(us) == set(tuning.candidates(p))
    classes, final = tuning.token_classes(p, H200, lambda q, c: us[c] * (1 if q.tokens == t1 else 4))
    assert final and classes == ((s1, C(1, 2)), (s2, C(1, 2)))
    entry = json.loads((tmp_path / "tuning-NVIDIA_H200.json").read_text())[tuning.tuning_key(p)]
    assert [(c["vectors"], c["row_stages"]) for c in entry["classes"]] == [(1, 2), (1, 2)]
    assert entry["classes"][0]["us"]["1 shared x2"] == 8.0
    # a tie goes to fewer vectors, then fewer stages: (2, 2) ties with (2, 0)
    assert tuning.choose({C(2): 9.0, C(2, 2): 9.0, C(1, 2): 9.0}) == C(1, 2)
    assert tuning.choose({C(2): 9.0, C(2, 2): 9.0}) == C(2)


def test_per_token_rows_staged_where_faster(tmp_path):
    """The per-token kernel's classes each take the fastest of its choices: here how many rows it
    stages ahead decides, and a forced count ties with the launcher's default, which wins the tie
    (as fewer stages do); the table names every choice's time."""
    p = _plan("swigluoai_and_mul_per_token_quant_fp8")
    (s0, t0), (s1, t1), (s2, t2) = tuning.class_tokens(p, L2)
    us = {t0: (5.0, 5.0, 5.0), t1: (20.0, 17.0, 16.0), t2: (80.0, 81.0, 82.0)}
    classes, final = tuning.token_classes(p, H200, Timer(lambda t, stages: us[t][stages]))
    C = tuning.Choice
    best = max(tuning.ROW_STAGES)  # the fastest at t1 among those timed
    assert final and s0 == 0 and classes == ((0, C()), (s1, C(row_stages=best)), (s2, C()))
    entry = json.loads((tmp_path / "tuning-NVIDIA_H200.json").read_text())[tuning.tuning_key(p)]
    assert [c["row_stages"] for c in entry["classes"]] == [0, best, 0]
    names = {0: "", 1: "shared", 2: "shared x2"}
    assert entry["classes"][1]["us"] == {
        (f"{v} {names[r]}".strip() if v else (names[r] or "registers")) + kernel: us[t1][r]
        for v in ("", "1", "2", "4") for r in tuning.ROW_STAGES for kernel in ("", " runtime recipe")}
    # the runtime-recipe kernel timed the same: the tie goes to the default kernel
    assert not any(c["runtime_recipe"] for c in entry["classes"])
    assert [tuning.choice_for(classes, t).row_stages for t in (1, s1 - 1, s1, s2)] == [0, 0, best, 0]
    assert tuning.Choice(2, 2).label == "2 shared x2" and set(tuning.ROW_STAGES) <= set(tuning.KERNEL_ROW_STAGES)


def test_runtime_recipe_kernel_wins_where_faster(tmp_path):
    """A per-token class of the op's own recipe takes the runtime-recipe kernel where it is the
    faster (the table says so, and a later process reads it back); a table entry timed over another
    generation of candidates is timed again."""
    p = _plan("silu_and_mul_per_token_quant_fp8")
    C = tuning.Choice
    (_, t0), (s1, t1), (s2, t2) = tuning.class_tokens(p, L2)
    def us(q, c):  # the runtime-recipe kernel 10% faster from the second class on
        return (9.0 if c.runtime_recipe and q.tokens >= t1 else 10.0) + c.vectors + c.row_stages
    classes, final = tuning.token_classes(p, H200, us)
    assert final and classes == ((0, C()), (s1, C(runtime_recipe=True)), (s2, C(runtime_recipe=True)))
    path = tmp_path / "tuning-NVIDIA_H200.json"
    table = json.loads(path.read_text())
    entry = table[tuning.tuning_key(p)]
    assert entry["version"] == tuning.TABLE_VERSION
    assert [c["runtime_recipe"] for c in entry["classes"]] == [False, True, True]
    assert entry["classes"][1]["us"]["registers runtime recipe"] == 9.0
    tuning.clear()
    def no_timing(*_):
        raise AssertionError("timed again although the table has the answer")
    assert tuning.token_classes(p, H200, no_timing) == (classes, True)
    # an entry of the generation before (no version, no runtime-recipe field) is timed again
    entry.pop("version")
    for c in entry["classes"]:
        c.pop("runtime_recipe")
    path.write_text(json.dumps(table))
    tuning.clear()
    timer = Timer(lambda t, stages: 1.0)
    tuning.token_classes(p, H200, timer)
    assert timer.calls and json.loads(path.read_text())[tuning.tuning_key(p)]["version"] == tuning.TABLE_VERSION
    assert tuning.entry_choice({"vectors": 2, "row_stages": 1}) == C(2, 1)


def test_calls_take_their_class():
    C = tuning.Choice
    classes = ((100, C(2)), (400, C(4)))
    assert [tuning.choice_for(classes, t).vectors for t in (1, 99, 100, 399, 400, 10**6)] == [0, 0, 2, 2, 4, 4]
    assert tuning.choice_for((), 10**6) == C()


def test_refused_counts_are_skipped():
    """A count the kernel refuses (an error string: the timer's None) is not a candidate."""
    p = _plan("relu2_mxfp8_quant")
    classes, _ = tuning.token_classes(p, H200, Timer(lambda t, v: None if v == 4 else float(v)))
    assert [c.vectors for _, c in classes] == [1, 1]


def test_no_timing_under_capture_disabled_or_short_of_memory(monkeypatch):
    p = _plan("silu_and_mul_per_block_quant", params=(128,))
    def no_timing(*_):
        raise AssertionError("timed")
    capturing = dataclasses.replace(H200, capturing=True)
    assert tuning.token_classes(p, capturing, no_timing) == ((), False)
    small = dataclasses.replace(H200, free_bytes=L2)
    assert tuning.token_classes(p, small, no_timing) == ((), True)
    monkeypatch.setenv("QUANTFUSE_TUNE", "0")
    assert tuning.token_classes(p, H200, no_timing) == ((), True)
    # a plan that is not tuned never asks for the device (CPU-only machines run cuda_backend.run in tests)
    def no_device():
        raise AssertionError("asked for the device")
    assert tuning.token_classes(_plan("silu_and_mul"), no_device, no_timing) == ((), True)


def test_the_key_names_what_the_count_depends_on():
    """Plans that differ in recipe, layout, dtype or hidden size are tuned apart; token counts
    are not in the key."""
    base = _plan("silu_and_mul_per_block_quant", params=(128,))
    keys = {tuning.tuning_key(q) for q in (
        base, _plan("silu_and_mul_per_block_quant", params=(64,)), _plan("silu_and_mul_per_block_quant", params=(128,), up=True),
        _plan("silu_and_mul_per_block_quant", params=(128,), dtype=torch.float16),
        _plan("silu_and_mul_per_block_quant", hidden=2048, params=(128,)))}
    assert len(keys) == 5
    assert tuning.tuning_key(dataclasses.replace(base, lead=(9999,))) == tuning.tuning_key(base)
