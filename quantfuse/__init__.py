"""quantfuse: fuse activation → quantisation subgraphs in torch.compile graphs.

    import quantfuse
    compiled = quantfuse.compile(model)            # or torch.compile(model, options=quantfuse.inductor_options())
    with torch.no_grad():
        compiled(x)
    print(quantfuse.last_report())
    quantfuse.explain(model, x)                    # what would be fused, and why not, without compiling
"""

from quantfuse import reference  # noqa: F401  (also registers torch.ops.quantfuse.*)
from quantfuse import quant_keys  # noqa: F401  (vLLM's names: QuantKey constants, pattern families)
from quantfuse.explain import Site, explain, list_patterns  # noqa: F401
from quantfuse.passes import (  # noqa: F401
    CACHE_HIT,
    CompileReport,
    ComposedPass,
    FusionConfig,
    FusionPass,
    NearMiss,
    PassReport,
    Rewrite,
    compile,
    enable,
    inductor_options,
    last_report,
)
from quantfuse.passes.debug import debug  # noqa: F401

__version__ = "0.1.0"
__all__ = ["FusionPass", "FusionConfig", "compile", "enable", "inductor_options", "last_report", "debug",
           "explain", "list_patterns", "reference", "PassReport", "CompileReport", "Rewrite", "NearMiss",
           "ComposedPass", "Site", "CACHE_HIT", "quant_keys"]
