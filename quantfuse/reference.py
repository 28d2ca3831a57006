"""The plain-torch reference maths of every quantfuse op: ``import quantfuse.reference``.

Everything of :mod:`quantfuse.custom_ops.reference` (the torch backend, and the
numerics contract of ``docs/numerics.md``), under the public name users check kernels
against.
"""

from quantfuse.custom_ops.reference import *  # noqa: F401,F403
