"""Every quantization scheme at several widths on one data set: the table in docs/RESULTS.md.

    .venv/bin/python bench/quant_table.py --data ../shared/data/scifact --out bench/results/scifact

Runs in-process, one evaluate per (scheme, bits), all sharing one cached fp32 baseline. Finished
runs are kept (``<out>/runs/<scheme>-<bits>/results.json``) and skipped when the script is started
again, so a killed benchmark resumes. Writes ``<out>/table.md`` and ``<out>/table.csv`` after each run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path

from hydra import compose, initialize_config_dir

from medret.config import register_configs
from medret.evaluation import run_evaluate
from medret.quant import names
from medret.report import verdict_of
from medret.storage import write_atomic

ROOT = Path(__file__).resolve().parents[1]
CUSTOM = list(names("custom"))  # every registered custom scheme
FIXED = [n for n in names() if n not in CUSTOM]
COLUMNS = [
    "scheme",
    "bits",
    "eff_bits",
    "model_MB",
    "ndcg@10",
    "recall@100",
    "precision@10",
    "f1@10",
    "delta_ndcg@10",
    "ci95_low",
    "ci95_high",
    "verdict",
    "emb_cos_mean",
    "top10_overlap",
    "docs_per_s",
]


def plan(bits: list[int], schemes: list[str]) -> list[tuple[str, int | None]]:
    """Most informative first (a benchmark cut short still answers the 4- and 3-bit question);
    fp16 last, because CPU fp16 matmuls are slow."""
    fixed_early, fixed_late = ["none", "bnb_nf4", "bnb_int8"], ["bnb_fp4", "bf16"]
    out = [(s, None) for s in fixed_early if s in schemes]
    custom = [s for s in schemes if s in CUSTOM]  # in the order asked for
    for i, b in enumerate(bits):
        out += [(s, b) for s in custom]
        if i == 1 or len(bits) == 1:
            out += [(s, None) for s in fixed_late if s in schemes]
    return out + [(s, None) for s in FIXED if s in schemes and (s, None) not in out]


def row(res: dict, scheme: str, bits: int | None) -> dict:
    m, q = res["metrics"], res["quant"]
    d = res.get("deltas", {}).get("ndcg@10")
    v = res.get("verdict")
    return {
        "scheme": scheme,
        "bits": bits if bits is not None else q.get("bits") or "",
        "eff_bits": round(q["effective_bits_per_param"], 3) if q.get("effective_bits_per_param") else "",
        "model_MB": round(q["model_bytes"] / 1e6, 1),
        **{k: round(m[k], 4) for k in ("ndcg@10", "recall@100", "precision@10", "f1@10")},
        "delta_ndcg@10": round(d["delta"], 4) if d else "",
        "ci95_low": round(d["ci95"][0], 4) if d else "",
        "ci95_high": round(d["ci95"][1], 4) if d else "",
        "verdict": verdict_of(v),
        "emb_cos_mean": round(res["fidelity"]["embedding_cosine"]["mean"], 4) if "fidelity" in res else "",
        "top10_overlap": round(res["fidelity"]["ranking"]["top10_overlap"], 3) if "fidelity" in res else "",
        "docs_per_s": round(res["throughput"]["encode_docs_per_s"], 1),
    }


def write_tables(rows: list[dict], out: Path, command: str) -> None:
    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    write_atomic(out / "table.md", [f"Command: `{command}`\n\n", "\n".join(md), "\n"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS)
    w.writeheader()
    w.writerows(rows)
    write_atomic(out / "table.csv", [buf.getvalue()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="BEIR folder (e.g. ../shared/data/scifact)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bits", default="4,3,2,8")
    ap.add_argument("--schemes", default=",".join(FIXED + CUSTOM))
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override, repeatable")
    ap.add_argument("--table-only", action="store_true", help="tabulate the finished runs, run nothing")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    command = (
        "python bench/quant_table.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k not in ("override", "table_only") and v)
        + "".join(f" --override {o}" for o in args.override)
    )
    register_configs()
    rows = []
    for scheme, bits in plan([int(b) for b in args.bits.split(",")], args.schemes.split(",")):
        run_dir = out / "runs" / f"{scheme}-{bits if bits is not None else 'na'}"
        done = run_dir / "results.json"
        if args.table_only and not done.is_file():
            continue
        if not done.is_file():
            overrides = [
                "data=beir",
                f"data.path={Path(args.data).resolve()}",
                f"data.split={args.split}",
                "logger=none",
                f"quant={scheme}",
                f"cache.dir={out.resolve() / 'cache'}",
                *args.override,
            ]
            if bits is not None:
                overrides.append(f"quant.bits={bits}")
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose(config_name="evaluate", overrides=overrides)
            run_evaluate(cfg, run_dir)
        rows.append(row(json.loads(done.read_text()), scheme, bits))
        write_tables(rows, out, command)
        logging.info("%s", rows[-1])


if __name__ == "__main__":
    main()
