"""benchmarks/probe_timing.py's CPU side: its case syntax, and that it refuses to run without a GPU
(it times CUDA kernels only)."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import probe_timing  # noqa: E402


def test_cases_name_an_op_and_its_parameters():
    assert probe_timing.parse_cases(probe_timing.DEFAULT_CASES) == [
        ("silu_and_mul_per_block_quant", (128,)), ("silu_and_mul_per_token_quant_fp8", ())]
    assert probe_timing.parse_cases(" relu2_per_block_quant:64 ,") == [("relu2_per_block_quant", (64,))]
    with pytest.raises(SystemExit, match="unknown op 'silu_per_block'"):
        probe_timing.parse_cases("silu_per_block:128")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is the CPU path")
def test_needs_a_gpu():
    with pytest.raises(SystemExit, match="needs a GPU"):
        probe_timing.main(["--tokens", "16"])
