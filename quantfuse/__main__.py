"""``python -m quantfuse``: explain a model's sites, or list the pattern families.

    python -m quantfuse explain examples/fp8_mlp.py:build --shape 64,512
    python -m quantfuse explain mypkg.models:make_mlp --shape 8,128,4096 --dtype float16 --grad
    python -m quantfuse patterns
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import torch


def load_target(spec: str):
    """``module:attr`` or ``path/to/file.py:attr`` -> the model (or function) to explain.

    A module instance is used as is, an ``nn.Module`` class or a function without
    required parameters is called to build the model, any other function is explained
    itself (called with the example inputs).
    """
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise SystemExit(f"quantfuse: target {spec!r} is not module:callable or file.py:callable")
    if where.endswith(".py") or "/" in where:
        path = Path(where).resolve()
        sys.path.insert(0, str(path.parent))  # so the file's own sibling imports work
        loaded = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loaded)
        sys.modules[path.stem] = module
        loaded.loader.exec_module(module)
    else:
        sys.path.insert(0, ".")
        module = importlib.import_module(where)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, torch.nn.Module):
        return obj
    if inspect.isclass(obj) or not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                                       for p in inspect.signature(obj).parameters.values()):
        return obj()
    return obj


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(",") if d)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not comma-separated integers") from None


def main(argv=None) -> int:
    """The command line; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m quantfuse", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="what the pass would fuse in a model, and why not (no code generated)")
    e.add_argument("target", help="module:callable or path/to/file.py:callable")
    e.add_argument("--shape", type=_shape, action="append", required=True,
                   help="shape of one input, e.g. 64,512 (repeat for several inputs)")
    e.add_argument("--dtype", default="bfloat16", help="input dtype (default bfloat16)")
    e.add_argument("--device", default="cpu", help="device of the inputs and the model (default cpu)")
    e.add_argument("--grad", action="store_true", help="explain with grad enabled (default: torch.no_grad())")
    e.add_argument("--native", choices=["default", "triton", "all"], default="default",
                   help="native pairs to fuse: the default table, PROFITABLE_NATIVE_TRITON, or all pairs")
    e.add_argument("--as-on-gpu", action="store_true",
                   help="on a CPU, explain what a GPU graph gets (FusionConfig(native_on_cpu=True)), but for the "
                        "sites a GPU keeps by the measured speed table at its own sizes (docs/decisions/031); "
                        "without it native CPU sites are kept for speed, as the pass keeps them")
    sub.add_parser("patterns", help="list the registered pattern families")
    args = p.parse_args(argv)

    import quantfuse
    from quantfuse import passes

    if args.command == "patterns":
        for family in quantfuse.list_patterns():
            print(family)
        return 0
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        p.error(f"unknown dtype {args.dtype!r}")
    model = load_target(args.target)
    if isinstance(model, torch.nn.Module):
        model = model.to(args.device)
    torch.manual_seed(0)
    inputs = [torch.randn(s, dtype=dtype, device=args.device) for s in args.shape]
    native = {"default": passes.PROFITABLE_NATIVE, "triton": passes.PROFITABLE_NATIVE_TRITON,
              "all": passes.ALL_PAIRS}[args.native]
    config = quantfuse.FusionConfig(native_fusions=native, native_on_cpu=args.as_on_gpu or None)
    with torch.set_grad_enabled(args.grad):
        print(quantfuse.explain(model, *inputs, config=config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
