"""The quality-frontier table of docs/RESULTS.md (issue 14) from finished evaluate runs: effective bits/param,
nDCG@10, retention against an fp32 run, the paired delta with its 95% CI, the verdict (with the queries a
CI would need to decide), embedding cosine to fp32 and quantization seconds.

    .venv/bin/python bench/frontier_table.py bench/results/deploy-scifact/runs/fp32 \
        bench/results/frontier-scifact/gptq-nf3-g64-act:"GPTQ nf g64, act-order" ...

Each row is RUN_DIR:label (RUN_DIR holds the evaluate's results.json); a missing one prints "not run".
It reads results only, so it runs anywhere in a second.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = (
    "| method and grid | bits/param | nDCG@10 | retention | delta [95% CI] | verdict | emb. cosine | quantize s |\n"
    "|---|---:|---:|---:|---|---|---:|---:|"
)


def rederived(ci95: list[float], max_drop: float) -> str:
    """Runs from before the three-outcome verdict: judged again from their own CI of the delta."""
    if -ci95[0] <= max_drop:
        return "accept"
    return "reject" if -ci95[1] > max_drop else "inconclusive"


def row(run_dir: Path, label: str, fp32_ndcg: float) -> str:
    path = run_dir / "results.json"
    if not path.is_file():
        return f"| {label} | not run | | | | | | |"
    r = json.loads(path.read_text())
    ndcg, delta, v = r["metrics"]["ndcg@10"], r["deltas"]["ndcg@10"], r["verdict"]
    outcome = v.get("outcome") or rederived(delta["ci95"], v["max_drop"])
    if outcome == "inconclusive" and v.get("queries_to_decide"):
        outcome += f" (~{v['queries_to_decide']:,})"
    lo, hi = delta["ci95"]
    secs = r["quant"].get("quantize_s")
    return (
        f"| {label} | {r['quant']['effective_bits_per_param']:.2f} | {ndcg:.4f} | {100 * ndcg / fp32_ndcg:.1f}% | "
        f"{delta['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {outcome} | "
        f"{r['fidelity']['embedding_cosine']['mean']:.3f} | {'' if secs is None else f'{secs:.1f}'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="the fp32 run's dir (its nDCG@10 is the 100%)")
    parser.add_argument("rows", nargs="+", help="RUN_DIR:label")
    args = parser.parse_args()
    fp32 = json.loads((args.fp32 / "results.json").read_text())["metrics"]["ndcg@10"]
    print(HEADER)
    for spec in args.rows:
        run_dir, _, label = spec.partition(":")
        print(row(Path(run_dir), label or Path(run_dir).name, fp32))


if __name__ == "__main__":
    main()
