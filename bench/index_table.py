"""Index presets on one data set and model: bytes, build s, QPS, recall vs exact search, nDCG@10.

    .venv/bin/python bench/index_table.py --out bench/results/index-scifact data=beir data.path=../shared/data/scifact

Every preset shares one embedding cache, so the corpus is encoded once (or not at all when an earlier
evaluate with the same model filled ``cache.dir``). Trailing arguments are Hydra overrides.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from medret.config import register_configs
from medret.evaluation import run_evaluate
from medret.results import RunResult, is_complete, read_run, write_markdown

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["flat", "fp16", "sq8", "sq4", "pq", "ivf_pq", "hnsw", "binary"]


def row(preset: str, run: RunResult) -> dict:
    idx, t = run.index, run.throughput
    rec = [v for k, v in idx.items() if k.startswith("recall_vs_exact@")]
    return {
        "index": preset,
        "factory": idx["factory"],
        "MB": round(idx["bytes"] / 1e6, 2),
        "build_s": round(idx["build_s"], 2),
        "qps": round(t["search_qps"]),
        "p50_ms": round(t["latency_ms_p50"], 3),
        "recall_vs_exact@10": round(rec[0], 4) if rec else 1.0,
        "ndcg@10": round(run.score(), 4),
        "recall@100": round(run.metrics["recall@100"], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    register_configs()
    rows = []
    for preset in args.presets.split(","):
        run_dir = out / preset
        if not is_complete(run_dir):
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose(config_name="evaluate", overrides=["logger=none", f"index={preset}", *args.overrides])
            run_evaluate(cfg, run_dir)
        rows.append(row(preset, read_run(run_dir)))
        print(json.dumps(rows[-1]), flush=True)
    command = f"python bench/index_table.py --out {args.out} {' '.join(args.overrides)}"
    table = write_markdown(out / "table.md", list(rows[0]), rows, command)
    print(f"Command: `{command}`\n\n{table}")


if __name__ == "__main__":
    main()
