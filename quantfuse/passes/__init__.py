"""The fusion pass, its config, report and debugging helpers."""

from quantfuse.passes.config import ALL_PAIRS, PROFITABLE_NATIVE, PROFITABLE_NATIVE_TRITON, FusionConfig  # noqa: F401
from quantfuse.passes.fusion_pass import ComposedPass, FusionPass, inductor_options, last_report  # noqa: F401
from quantfuse.passes.report import NearMiss, PassReport, Rewrite  # noqa: F401
