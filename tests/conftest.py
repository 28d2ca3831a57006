"""Test session set-up: compile caches off, so every compile runs the pass.

Inductor's FX graph cache serves a compiled graph without running custom passes;
tests that need that behaviour (uuid keys) turn it on explicitly in a fresh folder.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # corpus, helpers, float64_reference

torch._inductor.config.fx_graph_cache = False
torch._functorch.config.enable_autograd_cache = False
