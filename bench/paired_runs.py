"""Paired delta between two finished evaluate runs on the same queries (B - A), with its 95% bootstrap CI.

    .venv/bin/python bench/paired_runs.py RUN_A RUN_B [--metric ndcg@10]

Each run's results.json says how it did against fp32; this says how two quantized runs differ from each other
(e.g. 600 against 1,000 distillation steps), query by query, so one draw's noise shared by both cancels. It needs
both runs' per_query.jsonl (bench/results keeps only results.json, so run it where the runs were written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medret.metrics.ranking import paired_delta_ci
from medret.results import read_run


def per_query(run_dir: Path, metric: str) -> dict[str, float]:
    run = read_run(run_dir)
    rows = run.per_query() if run else []
    if not rows:
        sys.exit(f"error: {run_dir}: expected a finished evaluate run with results.json and per_query.jsonl")
    if metric not in rows[0]:
        sys.exit(f"error: --metric {metric}: not in {run_dir}/per_query.jsonl (it has e.g. ndcg@10, recall@100)")
    return {r["query_id"]: float(r[metric]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--metric", default="ndcg@10")
    args = ap.parse_args()
    a, b = per_query(args.run_a, args.metric), per_query(args.run_b, args.metric)
    if a.keys() != b.keys():
        sys.exit(f"error: {args.run_a} and {args.run_b}: expected the same queries ({len(a)} and {len(b)} ids differ)")
    ids = sorted(a)
    mean, lo, hi = paired_delta_ci([a[i] for i in ids], [b[i] for i in ids])
    print(f"{args.metric}: A {sum(a.values()) / len(a):.4f}  B {sum(b.values()) / len(b):.4f}  ", end="")
    print(f"B - A {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] over {len(ids)} queries")


if __name__ == "__main__":
    main()
