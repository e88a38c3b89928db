"""Every quantization scheme at several widths on one data set: the table in docs/RESULTS.md.

    .venv/bin/python bench/quant_table.py --data ../shared/data/scifact --out bench/results/scifact

Runs in-process, one evaluate per (scheme, bits), all sharing one cached fp32 baseline. Finished
runs are kept (``<out>/runs/<scheme>-<bits>/results.json``) and skipped when the script is started
again, so a killed benchmark resumes. Writes ``<out>/table.md`` and ``<out>/table.csv`` after each run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hydra import compose, initialize_config_dir

from medret.config import register_configs
from medret.evaluation import run_evaluate
from medret.quant import names
from medret.results import RunResult, is_complete, read_run, verdict_label, write_csv, write_markdown

ROOT = Path(__file__).resolve().parents[1]
CUSTOM = list(names("custom"))  # every registered custom scheme
# the fixed-width schemes; not quant=auto: it needs a sensitivity scan, so a plain run of it is an error
FIXED = [n for k in ("none", "cast", "bnb") for n in names(k)]
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


def _round(x: float | None, nd: int) -> float | str:
    return "" if x is None else round(x, nd)


def row(run: RunResult, scheme: str, bits: int | None) -> dict:
    d, eff = run.deltas.get("ndcg@10"), run.eff_bits
    return {
        "scheme": scheme,
        "bits": bits if bits is not None else run.quant_bits or "",
        "eff_bits": round(eff, 3) if eff else "",
        "model_MB": round(run.torch_bytes / 1e6, 1),
        **{k: round(run.metrics[k], 4) for k in ("ndcg@10", "recall@100", "precision@10", "f1@10")},
        "delta_ndcg@10": round(d.delta, 4) if d else "",
        "ci95_low": round(d.ci95[0], 4) if d else "",
        "ci95_high": round(d.ci95[1], 4) if d else "",
        "verdict": verdict_label(run.verdict),
        "emb_cos_mean": _round(run.emb_cos_mean, 4),
        "top10_overlap": _round(run.top10_overlap, 3),
        "docs_per_s": _round(run.encode_rate, 1),  # none: embeddings from the cache
    }


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
    if unknown := [s for s in args.schemes.split(",") if s not in FIXED + CUSTOM]:
        ap.error(f"--schemes: {', '.join(unknown)} not tabulated here; expected some of {', '.join(FIXED + CUSTOM)}")
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
        if args.table_only and not is_complete(run_dir):
            continue
        if not is_complete(run_dir):
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
        rows.append(row(read_run(run_dir), scheme, bits))
        write_markdown(out / "table.md", COLUMNS, rows, command)
        write_csv(out / "table.csv", COLUMNS, rows)
        logging.info("%s", rows[-1])


if __name__ == "__main__":
    main()
