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
import logging
from pathlib import Path

from hydra import compose, initialize_config_dir

from medret.config import register_configs
from medret.evaluation import run_evaluate
from medret.results import RunResult, is_complete, read_run, verdict_label, write_markdown

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


def row(name: str, run: RunResult) -> dict:
    d, disk, rate, bits = run.deltas.get("ndcg@10"), run.disk_bytes, run.encode_rate, run.eff_bits_all
    mode = run.runtime_quantize
    return {
        "variant": name,
        "runtime": run.runtime_name + (f" {mode}" if mode != "none" else ""),
        "whole_MB": round(run.torch_bytes / 1e6, 1),
        "disk_MB": round(disk / 1e6, 1) if disk else "",
        "eff_bits_all": round(bits, 2) if bits else "",
        "ndcg@10": round(run.score(), 4),
        "delta": f"{d.delta:+.4f}" if d else "",
        "ci95": f"[{d.ci95[0]:+.4f}, {d.ci95[1]:+.4f}]" if d else "",
        "verdict": verdict_label(run.verdict) if d else "baseline",
        "emb_cos": "" if run.emb_cos_mean is None else round(run.emb_cos_mean, 4),
        "docs_per_s": round(rate, 1) if rate else "",
        "threads": run.cpu_threads,
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
        if not is_complete(run_dir):
            data = [f"data.path={Path(args.data).resolve()}", f"data.split={args.split}"]
            cache = f"cache.dir={out.resolve() / 'cache'}"
            overrides = ["data=beir", *data, "logger=none", cache, *VARIANTS[name], *args.override]
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                run_evaluate(compose(config_name="evaluate", overrides=overrides), run_dir)
        rows.append(row(name, read_run(run_dir)))
        write_markdown(out / "table.md", COLUMNS, rows, f"python bench/deploy_table.py --data {args.data}")
        logging.info("%s", rows[-1])


if __name__ == "__main__":
    main()
