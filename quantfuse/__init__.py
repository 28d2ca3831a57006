"""quantfuse: fuse activation → quantisation subgraphs in torch.compile graphs.

    import quantfuse
    compiled = torch.compile(model, options=quantfuse.inductor_options())
    compiled(x)
    print(quantfuse.last_report())
"""

from quantfuse.custom_ops import reference  # noqa: F401  (also registers torch.ops.quantfuse.*)
from quantfuse.passes import (  # noqa: F401
    ComposedPass,
    FusionConfig,
    FusionPass,
    NearMiss,
    PassReport,
    Rewrite,
    inductor_options,
    last_report,
)
from quantfuse.passes.debug import debug  # noqa: F401

__version__ = "0.1.0"
__all__ = ["FusionPass", "FusionConfig", "inductor_options", "last_report", "debug", "reference",
           "PassReport", "Rewrite", "NearMiss", "ComposedPass"]
