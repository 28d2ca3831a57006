"""Op definitions (``torch.ops.quantfuse.*``), the call plan, the oracle, the reference maths and the backends."""

from quantfuse.custom_ops import ops, oracle, plan, reference  # noqa: F401  (registers the ops)
from quantfuse.custom_ops.ops import ACTIVATIONS, OPS, SCHEMES, fused_op_name  # noqa: F401
