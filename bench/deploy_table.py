"""What a deployable form of the model costs and buys on one data set: whole-model size, bytes on disk,
encode speed, nDCG@10 with its paired CI against fp32, verdict. The table in docs/RESULTS.md.

    .venv/bin/python bench/deploy_table.py --data ../shared/data/scifact --out bench/results/deploy-scifact

Runs evaluate in-process, one variant at a time (heavy: run nothing else beside it on 2 cores), all
sharing one cache and one fp32 baseline. A finished variant (``<out>/runs/<name>/results.json``) is
skipped when the script is started again, so a killed benchmark resumes. ``--variants a,b`` picks some.
Speed ratios against sentence-transformers come from bench/runtime_speed.py (same documents, one process).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from medret.config import register_configs
from medret.evaluation import run_evaluate
from medret.evaluation.fidelity import verdict
from medret.storage import write_atomic

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "fp32": ["quant=none"],
    "bf16": ["quant=bf16"],
    "bnb_int8": ["quant=bnb_int8"],
    "bnb_nf4": ["quant=bnb_nf4"],
    "nf4": ["quant=nf", "quant.bits=4"],
    "nf4+emb": ["quant=nf", "quant.bits=4", "quant.embeddings=true"],
    "bnb_nf4+emb": ["quant=bnb_nf4", "quant.embeddings=true"],
    "onnx": ["runtime=onnx"],
    "onnx-dynamic_int8": ["runtime=onnx", "runtime.quantize=dynamic_int8"],
    "onnx-static_int8": ["runtime=onnx", "runtime.quantize=static_int8"],
    "openvino": ["runtime=openvino"],
    "openvino-int8": ["runtime=openvino", "runtime.quantize=int8"],
    "openvino-int8-bf16": ["runtime=openvino", "runtime.quantize=int8", "runtime.precision=bf16"],
    "openvino-int4_weights": ["runtime=openvino", "runtime.quantize=int4_weights"],
}
COLUMNS = ["variant", "runtime", "whole_MB", "disk_MB", "eff_bits_all", "ndcg@10", "delta", "ci95", "verdict"]
COLUMNS += ["emb_cos", "docs_per_s", "threads"]


def verdict_label(res: dict, run_dir: Path) -> str:
    """The three-outcome verdict; runs from before it had one are judged again from their own per-query
    deltas (per_query.jsonl) and CI, exactly as evaluate judges now."""
    v = res["verdict"]
    if "outcome" not in v:
        d = res["deltas"][v["metric"]]
        rows = [json.loads(x) for x in (run_dir / "per_query.jsonl").read_text().splitlines()]
        per_query = np.array([r[f"delta_{v['metric']}"] for r in rows])
        v = verdict(d, per_query, v["metric"], v["max_drop"])
    n = v.get("queries_to_decide")
    return f"inconclusive (~{n} q)" if v["outcome"] == "inconclusive" and n else v["outcome"]


def row(name: str, res: dict, run_dir: Path) -> dict:
    q, rt, d = res["quant"], res.get("runtime", {"name": "torch"}), res.get("deltas", {}).get("ndcg@10")
    disk = rt.get("bytes_on_disk")
    rate = res["throughput"].get("encode_docs_per_s")
    return {
        "variant": name,
        "runtime": rt["name"] + (f" {rt['quantize']}" if rt.get("quantize", "none") != "none" else ""),
        "whole_MB": round(q["model_bytes"] / 1e6, 1),
        "disk_MB": round(disk / 1e6, 1) if disk else "",
        "eff_bits_all": round(q["effective_bits_per_param_all"], 2) if q.get("effective_bits_per_param_all") else "",
        "ndcg@10": round(res["metrics"]["ndcg@10"], 4),
        "delta": f"{d['delta']:+.4f}" if d else "",
        "ci95": f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]" if d else "",
        "verdict": verdict_label(res, run_dir) if d else "baseline",
        "emb_cos": round(res["fidelity"]["embedding_cosine"]["mean"], 4) if "fidelity" in res else "",
        "docs_per_s": round(rate, 1) if rate else "",
        "threads": res["device"]["cpu_threads"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="BEIR folder (e.g. ../shared/data/scifact)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override, repeatable")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    register_configs()
    rows = []
    for name in args.variants.split(","):
        run_dir = out / "runs" / name.replace("+", "_")
        done = run_dir / "results.json"
        if not done.is_file():
            data = [f"data.path={Path(args.data).resolve()}", f"data.split={args.split}"]
            cache = f"cache.dir={out.resolve() / 'cache'}"
            overrides = ["data=beir", *data, "logger=none", cache, *VARIANTS[name], *args.override]
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                run_evaluate(compose(config_name="evaluate", overrides=overrides), run_dir)
        rows.append(row(name, json.loads(done.read_text()), run_dir))
        md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        md += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
        command = f"Command: `python bench/deploy_table.py --data {args.data}`\n\n"
        write_atomic(out / "table.md", [command, "\n".join(md), "\n"])
        logging.info("%s", rows[-1])


if __name__ == "__main__":
    main()
