"""The quality-frontier table of docs/RESULTS.md (issue 14) from finished evaluate runs: effective bits/param,
nDCG@10, retention against an fp32 run, the paired delta with its 95% CI, the verdict (with the queries a
CI would need to decide), embedding cosine to fp32 and quantization seconds.

    .venv/bin/python bench/frontier_table.py bench/results/deploy-scifact/runs/fp32 \
        bench/results/frontier-scifact/gptq-nf3-g64-act:"GPTQ nf g64, act-order" ...

Each row is RUN_DIR:label (RUN_DIR holds the evaluate's results.json); a missing one prints "not run".
``--model-mb`` adds the whole model's bytes (embeddings and the rest included) and the run's profile outcomes.
It reads results only, so it runs anywhere in a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medret.results import markdown_table, read_run, verdict_label

COLUMNS = ["method and grid", "bits/param", "nDCG@10", "retention", "delta [95% CI]", "verdict"]
COLUMNS += ["emb. cosine", "quantize s"]
NUMBERS = ["bits/param", "nDCG@10", "retention", "emb. cosine", "quantize s"]  # right-aligned


def row(run_dir: Path, label: str, fp32_ndcg: float, model_mb: bool = False) -> dict[str, str]:
    run = read_run(run_dir)
    if run is None:
        return {"method and grid": label, "bits/param": "not run"}
    ndcg, d = run.score(), run.deltas["ndcg@10"]
    secs = None if run.saved_quant else run.quantize_s  # a saved model loads: its quantization ran elsewhere
    extra = {}
    if model_mb:
        extra = {"model MB": f"{run.torch_bytes / 1e6:.2f}", "profiles": " ".join(_profile_letters(run))}
    return {
        "method and grid": label,
        "bits/param": f"{run.eff_bits:.2f}",
        "nDCG@10": f"{ndcg:.4f}",
        "retention": f"{100 * ndcg / fp32_ndcg:.1f}%",
        "delta [95% CI]": f"{d.delta:+.4f} [{d.ci95[0]:+.4f}, {d.ci95[1]:+.4f}]",
        "verdict": verdict_label(run.verdict),
        "emb. cosine": f"{run.emb_cos_mean:.3f}",
        "quantize s": "" if secs is None else f"{secs:.1f}",
        **extra,
    }


def _profile_letters(run) -> list[str]:
    """'scr:A dec:R pre:R exp:A', as the multirun summary writes them."""
    return [f"{p.name[:3]}:{p.letter}" for p in run.profiles.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="the fp32 run's dir (its nDCG@10 is the 100%)")
    parser.add_argument("rows", nargs="+", help="RUN_DIR:label")
    parser.add_argument("--model-mb", action="store_true", help="add whole-model MB and profile outcomes")
    args = parser.parse_args()
    fp32 = read_run(args.fp32)
    if fp32 is None:
        parser.error(f"{args.fp32}: no finished evaluate run there (no results.json)")
    specs = [(Path(d), label or Path(d).name) for d, _, label in (s.partition(":") for s in args.rows)]
    columns = COLUMNS + (["model MB", "profiles"] if args.model_mb else [])
    rows = [row(d, label, fp32.score(), args.model_mb) for d, label in specs]
    print("\n".join(markdown_table(columns, rows, right=[*NUMBERS, "model MB"])))


if __name__ == "__main__":
    main()
