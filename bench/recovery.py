"""Fine-tuning and recovery after quantization on SciFact: the table in docs/RESULTS.md.

    .venv/bin/python bench/recovery.py --data ../shared/data/scifact --out bench-out/recovery

Runs, through the real entry points (``train.py``, ``evaluate.py``), each in its own Hydra run dir:
fp32 MiniLM on SciFact test; the same fine-tuned on SciFact train (``train=contrastive``); post-training
quantization (PTQ) at each width; QAT from the fp32 model (``train=qat``, exported packed); QLoRA
(``train=qlora``) evaluated with its adapters attached and merged-then-requantized. Every training run
gets the same pairs, steps and batch. Finished runs are skipped, so a killed benchmark resumes.
The table gives nDCG@10 on test, the paired-bootstrap 95% CI of its change against fp32, and the share
of the gap from PTQ to the fp32 model fine-tuned with the same pairs and steps that each recovery method
closes: (method - PTQ) / (fp32 fine-tuned - PTQ). Training on SciFact train also adapts the model to the
domain, so the fine-tuned fp32 model, not the original, is the fair ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from medret.results import read_run

ROOT = Path(__file__).resolve().parents[1]


def run(entry: str, out: Path, overrides: list[str]) -> Path:
    done = out / ("train_results.json" if entry == "train" else "results.json")
    if not done.is_file():
        cmd = [sys.executable, str(ROOT / f"{entry}.py"), *overrides, "logger=none", f"hydra.run.dir={out}"]
        print("+", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out


def per_query_ndcg(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "per_query.jsonl").read_text().splitlines() if line]
    return {r["query_id"]: r["ndcg@10"] for r in rows}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scheme", default="nf")
    ap.add_argument("--bits", default="3,2")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr-ft", default="2e-5")
    ap.add_argument("--lr-qat", default="2e-5")
    ap.add_argument("--lr-qlora", default="2e-4")
    return ap.parse_args()


def run_all(args: argparse.Namespace, out: Path) -> list[tuple[str, str, Path]]:
    """Every evaluate and train run of the table (each skipped when its folder already holds its results)."""
    data = Path(args.data).resolve()
    cache = f"cache.dir={out / 'cache'}"
    test = ["data=beir", f"data.path={data}", "data.split=test", cache]
    train = [
        "data=beir",
        f"data.path={data}",
        "data.split=train",
        "train.dev_fraction=0",
        cache,
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch}",
        f"train.checkpoint_every={args.steps}",
    ]
    rows: list[tuple[str, str, Path]] = [("fp32", "-", run("evaluate", out / "eval-fp32", test))]
    ft = run("train", out / "train-ft", [*train, f"train.lr={args.lr_ft}"])
    rows.append(("fp32 fine-tuned", "-", run("evaluate", out / "eval-ft", [*test, f"model.path={ft / 'best_model'}"])))
    for b in [int(x) for x in args.bits.split(",")]:
        q = [f"quant={args.scheme}", f"quant.bits={b}"]
        rows.append(("PTQ", str(b), run("evaluate", out / f"eval-ptq{b}", [*test, *q])))
        qat = run("train", out / f"train-qat{b}", [*train, "train=qat", *q, f"train.lr={args.lr_qat}"])
        rows.append(("QAT", str(b), run("evaluate", out / f"eval-qat{b}", [*test, f"model.path={qat / 'best_model'}"])))
        ql = run("train", out / f"train-qlora{b}", [*train, "train=qlora", *q, f"train.lr={args.lr_qlora}"])
        rows.append(
            (
                "QLoRA (adapters attached)",
                str(b),
                run("evaluate", out / f"eval-qlora{b}", [*test, *q, f"model.adapter={ql / 'best_adapter'}"]),
            )
        )
        rows.append(
            (
                "QLoRA merged, re-quantized",
                str(b),
                run("evaluate", out / f"eval-qlora-merged{b}", [*test, *q, f"model.path={ql / 'best_model'}"]),
            )
        )
    return rows


def write_table(args: argparse.Namespace, out: Path, rows: list[tuple[str, str, Path]]) -> None:
    from medret.metrics.ranking import bootstrap_ci

    base = per_query_ndcg(rows[0][2])
    qids = sorted(base)
    fp32 = np.mean([base[q] for q in qids])
    ptq = {bits: np.mean(list(per_query_ndcg(d).values())) for name, bits, d in rows if name == "PTQ"}
    ft_score = np.mean(list(per_query_ndcg(rows[1][2]).values()))
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    lines = [
        f"Command: `python bench/recovery.py {flags}`",
        "",
        "| method | bits | eff. bits/param | nDCG@10 | Δ vs fp32 | 95% CI | gap closed | Δ vs fp32 fine-tuned "
        "| train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, bits, d in rows:
        res = read_run(d).raw
        pq = per_query_ndcg(d)
        diff = np.array([pq[q] - base[q] for q in qids])
        lo, hi = bootstrap_ci(diff, n_resamples=2000, seed=0)
        score = float(np.mean([pq[q] for q in qids]))
        rec = ""
        if bits in ptq and name != "PTQ" and ft_score - ptq[bits] > 0:
            rec = f"{(score - ptq[bits]) / (ft_score - ptq[bits]):.0%}"
        q = res.get("quant", {})
        eff = q.get("effective_bits_per_param_with_adapter") or q.get("effective_bits_per_param")
        tr = {
            "fp32 fine-tuned": out / "train-ft",
            "QAT": out / f"train-qat{bits}",
            "QLoRA (adapters attached)": out / f"train-qlora{bits}",
        }.get(name)
        secs = round(json.loads((tr / "train_results.json").read_text())["seconds"]) if tr else ""
        eff_s = f"{eff:.2f}" if eff else "32"
        lines.append(
            f"| {name} | {bits} | {eff_s} | {score:.4f} | {score - fp32:+.4f} | [{lo:+.4f}, {hi:+.4f}] | "
            f"{rec} | {score - ft_score:+.4f} | {secs} |"
        )
        print(lines[-1], flush=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    write_table(args, out, run_all(args, out))


if __name__ == "__main__":
    main()
