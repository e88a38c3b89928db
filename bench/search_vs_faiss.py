"""Search QPS: medret's SearchIndex vs calling FAISS directly on the same index and queries.

.venv/bin/python bench/search_vs_faiss.py --vectors 200000 --dim 384 --queries 2000 --preset flat
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import faiss
import numpy as np
from hydra import compose, initialize_config_dir

from medret.config import register_configs
from medret.index import build_index


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--preset", default="flat")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.vectors, args.dim), dtype=np.float32)
    faiss.normalize_L2(x)
    q = np.ascontiguousarray(x[rng.choice(args.vectors, args.queries, replace=False)] + 0.05, dtype=np.float32)
    register_configs()
    from pathlib import Path

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"index={args.preset}"]).index
    idx = build_index(x, cfg)
    raw = idx.index  # the very same FAISS object, called directly
    ours, theirs = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        a = idx.search(q, args.k, batch_size=cfg.search_batch_size)
        ours.append(len(q) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        b = raw.search(q, args.k)
        theirs.append(len(q) / (time.perf_counter() - t0))
    assert (a[1] == b[1]).all()
    print(
        json.dumps(
            {
                "preset": args.preset,
                "placement": idx.placement,
                "vectors": args.vectors,
                "dim": args.dim,
                "queries": args.queries,
                "k": args.k,
                "medret_qps_median": statistics.median(ours),
                "faiss_qps_median": statistics.median(theirs),
                "ratio_medret_over_faiss": statistics.median(ours) / statistics.median(theirs),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
