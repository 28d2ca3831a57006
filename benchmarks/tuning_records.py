"""The launch choices tuned on a GPU (``tuning-<device>.json`` in the cache folder,
written by quantfuse/custom_ops/tuning.py) as benchmark records, one per (plan, token class):

    python benchmarks/tuning_records.py TABLE --jsonl OUT [--set key=value ...]

Each record: ``bench="tuning", plan`` (the tuning key: op|recipe|layout|dtype|hidden),
``min_tokens, tokens`` (the class and the token count it was timed at), ``vectors``,
``row_stages`` and ``choice`` (the choice, and its label as ``us`` names it), ``us`` (µs per
launch for every choice timed, CUDA events, back-to-back launches)
and the run's context (bench_pairs.run_info). Run on the device that tuned, or give the
context with ``--set device="NVIDIA H200" --set sm=90 ...`` when converting elsewhere.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pairs import run_info  # noqa: E402


def records(table: dict) -> list[dict]:
    """One record per (plan, class) of a tuning table."""
    from quantfuse.custom_ops.tuning import entry_choice

    return [dict(bench="tuning", plan=key, min_tokens=c["min_tokens"], tokens=c["tokens"], vectors=c["vectors"],
                 row_stages=choice.row_stages, runtime_recipe=choice.runtime_recipe, choice=choice.label,
                 us=c["us"], tuned_torch=entry.get("torch", ""))
            for key, entry in sorted(table.items()) for c in entry["classes"] for choice in [entry_choice(c)]]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("table")
    p.add_argument("--jsonl", required=True)
    p.add_argument("--only", default="", help="keep the plans whose key matches this regular expression")
    p.add_argument("--set", action="append", default=[], help="context field override, key=value (JSON value)")
    args = p.parse_args()
    info = run_info()
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            info[k] = json.loads(v)
        except ValueError:
            info[k] = v
    with open(args.jsonl, "a") as f:
        for r in records(json.loads(Path(args.table).read_text())):
            if args.only and not re.search(args.only, r["plan"]):
                continue
            f.write(json.dumps({**info, **r}) + "\n")


if __name__ == "__main__":
    main()
