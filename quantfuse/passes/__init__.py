"""The fusion pass, its config, report and debugging helpers."""

from quantfuse.passes.config import ALL_PAIRS, PROFITABLE_NATIVE, PROFITABLE_NATIVE_TRITON, FusionConfig  # noqa: F401
from quantfuse.passes.fusion_pass import (  # noqa: F401
    ComposedPass,
    FusionPass,
    compile,
    enable,
    inductor_options,
    last_report,
)
from quantfuse.passes.report import CACHE_HIT, CompileReport, NearMiss, PassReport, Rewrite  # noqa: F401
