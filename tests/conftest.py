"""Test session set-up: compile caches off, so every compile runs the pass; native sites of
CPU graphs rewritten (QUANTFUSE_NATIVE_ON_CPU=1), so the CPU tests see what a GPU graph gets
(tests/test_profitability.py checks the default, which keeps them); the measured rule off
(QUANTFUSE_SPEED_TABLE=0), so GPU tests fuse sites of any size (tests/test_speed_table.py turns
it on where it tests it).

Inductor's FX graph cache serves a compiled graph without running custom passes;
tests that need that behaviour (uuid keys) turn it on explicitly in a fresh folder.
"""

import os
import sys

os.environ.setdefault("QUANTFUSE_NATIVE_ON_CPU", "1")
os.environ.setdefault("QUANTFUSE_SPEED_TABLE", "0")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # corpus, helpers, float64_reference

torch._inductor.config.fx_graph_cache = False
torch._functorch.config.enable_autograd_cache = False
