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
from pathlib import Path

from medret.results import markdown_table, read_run, verdict_label

COLUMNS = ["method and grid", "bits/param", "nDCG@10", "retention", "delta [95% CI]", "verdict"]
COLUMNS += ["emb. cosine", "quantize s"]
NUMBERS = ["bits/param", "nDCG@10", "retention", "emb. cosine", "quantize s"]  # right-aligned


def row(run_dir: Path, label: str, fp32_ndcg: float) -> dict[str, str]:
    run = read_run(run_dir)
    if run is None:
        return {"method and grid": label, "bits/param": "not run"}
    ndcg, d, secs = run.score(), run.deltas["ndcg@10"], run.quantize_s
    return {
        "method and grid": label,
        "bits/param": f"{run.eff_bits:.2f}",
        "nDCG@10": f"{ndcg:.4f}",
        "retention": f"{100 * ndcg / fp32_ndcg:.1f}%",
        "delta [95% CI]": f"{d.delta:+.4f} [{d.ci95[0]:+.4f}, {d.ci95[1]:+.4f}]",
        "verdict": verdict_label(run.verdict),
        "emb. cosine": f"{run.emb_cos_mean:.3f}",
        "quantize s": "" if secs is None else f"{secs:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="the fp32 run's dir (its nDCG@10 is the 100%)")
    parser.add_argument("rows", nargs="+", help="RUN_DIR:label")
    args = parser.parse_args()
    fp32 = read_run(args.fp32)
    if fp32 is None:
        parser.error(f"{args.fp32}: no finished evaluate run there (no results.json)")
    specs = [(Path(d), label or Path(d).name) for d, _, label in (s.partition(":") for s in args.rows)]
    print("\n".join(markdown_table(COLUMNS, [row(d, label, fp32.score()) for d, label in specs], right=NUMBERS)))


if __name__ == "__main__":
    main()
