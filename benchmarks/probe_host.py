"""Host time per call on the GPU machine: where a fused call's host cost goes, against native calls.

    python benchmarks/probe_host.py [--tokens 16] [--hidden 768] [--jsonl FILE]

Each row is the median over 7 rounds of 2000 back-to-back calls (µs of wall time per call) at a
host-bound size (a decode batch: the kernels take a few µs, the host more):

- the dispatcher's argument parsing alone: a no-op custom op (CPU tensors) called with its two
  outputs as keywords (the ``out`` overloads' form) and positionally (vLLM's outputs-first form);
- eager calls: ``torch.add``, ``aten.add.out``, two ``empty_strided``, the fused SiLU×Mul → FP8
  per-token op's default and ``out`` overloads;
- one compiled native site (the per-token spelling) without the pass, with it (planned outputs
  and the default call), and a compiled identity (what any compiled call costs).

Host time differs by up to 2x between machines of the same kind, so compare rows of one run only.
``--jsonl`` appends one record per row (``bench="host_probe"``, ``case``, ``us``, with
``bench_pairs.run_info``'s context).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantfuse  # noqa: E402
from bench_pairs import run_info, write_records  # noqa: E402


def per_call_us(fn, calls: int = 2000, rounds: int = 7) -> float:
    """Median over rounds of the wall time per call of ``calls`` back-to-back calls."""
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(times)


def native_site(x):
    """SiLU×Mul then FP8 per-token quantisation, as plain PyTorch."""
    a, b = x.chunk(2, -1)
    y = (F.silu(a) * b).float()
    s = y.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (y / s).clamp(-448, 448).to(torch.float8_e4m3fn), s


#: the no-op ops' library (a Library unregisters its ops when it is collected)
_LIB: list = []


def _noop_ops():
    """Two no-op custom ops that differ only in how their outputs are passed."""
    if not _LIB:
        lib = torch.library.Library("quantfuse_probe", "DEF")
        lib.define("keywords(Tensor x, int g, *, Tensor(a!) out, Tensor(b!) out_scales) -> ()")
        lib.define("positional(Tensor(a!) out, Tensor(b!) out_scales, Tensor x, int g) -> ()")
        for name in ("keywords", "positional"):
            lib.impl(name, lambda *args, **kwargs: None, "CPU")
        _LIB.append(lib)
    return torch.ops.quantfuse_probe


def cases(tokens: int, hidden: int) -> list[tuple[str, object, bool]]:
    """(name, zero-argument callable, whether it is a compiled one) of every row."""
    ops = _noop_ops()
    xc, oc, sc = torch.empty(4), torch.empty(4), torch.empty(4)
    x = torch.randn(tokens, 2 * hidden, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    o = torch.empty_like(y)
    q = torch.empty(tokens, hidden, device="cuda", dtype=torch.float8_e4m3fn)
    s = torch.empty(tokens, 1, device="cuda")
    fused = torch.ops.quantfuse.silu_and_mul_per_token_quant_fp8
    rows = [(name, fn, False) for name, fn in [
        ("no-op custom op (CPU): outputs as keywords", lambda: ops.keywords(xc, 128, out=oc, out_scales=sc)),
        ("no-op custom op (CPU): outputs first, positional", lambda: ops.positional(oc, sc, xc, 128)),
        ("torch.add(y, y)", lambda: torch.add(y, y)),
        ("torch.ops.aten.add.out(y, y, out=o)", lambda: torch.ops.aten.add.out(y, y, out=o)),
        ("torch.empty_strided x2", lambda: (torch.empty_strided(q.shape, q.stride(), dtype=q.dtype, device="cuda"),
                                            torch.empty_strided(s.shape, s.stride(), device="cuda"))),
        ("fused op, default overload", lambda: fused.default(x)),
        ("fused op, out overload", lambda: fused.out(x, out=q, out_scales=s)),
    ]]
    # compiled callables of one function share Dynamo's cache: each is compiled (on its first call)
    # and timed after a reset, before the next one (main)
    compiled = [("compiled native site (Inductor's kernel)", torch.compile(native_site, dynamic=False))]
    for planned in (True, False):
        config = quantfuse.FusionConfig(speed_table=False, planned_outputs=planned)
        compiled.append((f"compiled with the pass ({'planned out call' if planned else 'default call'})",
                         quantfuse.compile(native_site, dynamic=False, config=config)))
    compiled.append(("compiled identity", torch.compile(lambda v: v, dynamic=False)))
    return rows + [(name, lambda fn=fn: fn(x), True) for name, fn in compiled]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--jsonl")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("probe_host.py measures host cost against CUDA launches: it needs a GPU")
    info = run_info()
    records = []
    with torch.no_grad():
        for name, fn, compiled in cases(args.tokens, args.hidden):
            if compiled:
                torch._dynamo.reset()
            us = per_call_us(fn)
            print(f"{name:55s} {us:8.2f} µs", flush=True)
            records.append(dict(bench="host_probe", case=name, tokens=args.tokens, hidden=args.hidden,
                                us=round(us, 3)))
    if args.jsonl:
        write_records(args.jsonl, records, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
