"""The fused op's call as a graph node holds it: positional wherever the schema allows.

Inductor's Python wrapper calls a custom op with the node's own args and kwargs, and
torch's argument parser matches keyword arguments by name on every call: about 2 µs more
per call than the same values passed positionally, and a default passed explicitly costs
more than one the parser fills in. So the rewrite passes the schema's positional arguments
positionally, leaves out the trailing ones that equal their defaults, and passes a
keyword-only argument only where it differs from its default.
"""

from __future__ import annotations

import torch

__all__ = ["positional_call"]


def positional_call(op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a call of ``op`` with the same meaning as ``op(*args, **kwargs)``:
    the schema's positional arguments in order up to the last one that differs from its
    default (defaults filled in before it), keyword-only arguments that differ from their
    default as keywords."""
    remaining = dict(kwargs)
    positional = list(args)
    schema_args = op._schema.arguments
    given = [a for a in schema_args[len(args):] if not a.kwarg_only]
    last = max((i for i, a in enumerate(given) if a.name in remaining), default=-1)
    for a in given[:last + 1]:
        if a.name in remaining:
            positional.append(remaining.pop(a.name))
        elif a.has_default_value():
            positional.append(a.default_value)
        else:
            raise TypeError(f"{op}: argument {a.name!r} missing")
    while len(positional) > len(args):
        a = schema_args[len(positional) - 1]
        if not (a.has_default_value() and _same(positional[-1], a.default_value)):
            break
        positional.pop()
    for a in schema_args:
        if a.kwarg_only and a.name in remaining and a.has_default_value():
            if _same(remaining[a.name], a.default_value):
                del remaining[a.name]
    return tuple(positional), remaining


def _same(value, default) -> bool:
    # a graph Node is never a schema default
    return type(value) in (bool, int, float, str, type(None)) and value == default and type(value) is type(default)
