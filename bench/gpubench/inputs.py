"""The inputs every worker shares, written once to the work folder: seeded random weights of the
MiniLM architecture and pre-tokenized synthetic texts."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from gpubench.variants import ARCH, MiB


def prepare(wd: Path, cfg: dict) -> dict:
    """Seeded random MiniLM-architecture weights + pre-tokenized synthetic texts, written once to wd."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig.from_pretrained(ARCH), add_pooling_layer=False).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(wd / "model.safetensors"))

    tok = AutoTokenizer.from_pretrained(ARCH)
    vocab = [w for w in tok.get_vocab() if w.isalpha() and w.isascii() and len(w) > 1]
    rng = np.random.default_rng(0)
    n = cfg["n_texts"]
    lens = rng.integers(*cfg["words"], size=n)  # one token per word, + [CLS] [SEP]: ~200 of max_length 256
    words = np.array(vocab)
    texts = [" ".join(words[rng.integers(0, len(words), size=int(L))]) for L in lens]
    t0 = time.perf_counter()
    enc = tok(texts, padding="max_length", truncation=True, max_length=cfg["max_length"], return_tensors="np")
    tok_s = time.perf_counter() - t0
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    np.save(wd / "ids.npy", ids)
    np.save(wd / "mask.npy", mask)
    (wd / "calibration.json").write_text(json.dumps(texts[:256]))  # medret_gptq_nf3's calibration texts
    return {
        "tokenizer_docs_per_s": round(n / tok_s, 1),
        "mean_tokens": round(float(mask.sum(1).mean()), 1),
        "max_tokens": int(mask.sum(1).max()),
        "fp32_param_MB": round(sum(p.numel() * 4 for p in model.parameters()) / MiB, 2),
    }


def load_fp32_model(wd: Path, attn: str = "sdpa"):
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    cfg = BertConfig.from_pretrained(ARCH)
    with contextlib.suppress(Exception):
        cfg._attn_implementation = attn
    model = BertModel(cfg, add_pooling_layer=False).eval()
    model.load_state_dict(load_file(str(wd / "model.safetensors")), strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
