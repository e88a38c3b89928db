"""The trade-off report over evaluate runs: one table (Markdown + CSV) and PNG plots.

``python -m medret.report SWEEP_DIR... [--out DIR]`` reads every ``results.json`` below the given
folders. Jobs that started but wrote no ``results.json`` are listed as partial, never dropped.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from medret.errors import InputError
from medret.storage import write_atomic
from medret.tracking.outputs import results_of

COLUMNS = [
    "run",
    "model",
    "scheme",
    "bits",
    "eff_bits",
    "model_MB",
    "index",
    "ndcg@10",
    "recall@100",
    "precision@10",
    "f1@10",
    "delta_ndcg@10",
    "ci95",
    "verdict",
    "encode_docs_per_s",
    "qps",
]


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    dataset: str | None = None


def _job_dirs(root: Path) -> list[Path]:
    """Folders that hold a job: a results.json, or Hydra's .hydra folder of a job that never finished."""
    jobs = {p.parent for p in root.rglob("results.json")}
    jobs |= {p.parent for p in root.rglob(".hydra") if p.is_dir() and (p / "overrides.yaml").is_file()}
    return sorted(jobs)


def _fmt(x, nd=4):
    return "" if x is None else (round(x, nd) if isinstance(x, float) else x)


def row_of(res: dict, name: str) -> dict:
    cfg, q, m = res["config"], res.get("quant", {}), res["metrics"]
    d, v = res.get("deltas", {}).get("ndcg@10"), res.get("verdict")
    return {
        "run": name,
        "model": cfg["model"]["name"],
        "scheme": q.get("scheme", cfg["quant"]["name"]),
        "bits": cfg["quant"].get("bits") or "",
        "eff_bits": _fmt(q.get("effective_bits_per_param"), 3),
        "model_MB": round(q.get("model_bytes", res["sizes"]["model_param_bytes"]) / 1e6, 1),
        "index": cfg["index"]["name"],
        **{k: _fmt(m.get(k)) for k in ("ndcg@10", "recall@100", "precision@10", "f1@10")},
        "delta_ndcg@10": _fmt(d["delta"]) if d else "",
        "ci95": f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]" if d else "",
        "verdict": ("accept" if v["accept"] else "reject") if v else "baseline",
        "encode_docs_per_s": _fmt(res["throughput"].get("encode_docs_per_s"), 1),
        "qps": _fmt(res["throughput"].get("search_qps"), 0),
    }


def collect(folders: list[Path]) -> Report:
    rep = Report()
    datasets: dict[str, list[str]] = {}
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"{folder}: not a directory (expected a sweep or run folder)")
        jobs = _job_dirs(folder)
        if not jobs:
            raise InputError(f"{folder}: no evaluate runs below it (no results.json or .hydra folders)")
        for job in jobs:
            name = str(job.relative_to(folder.parent))
            path = job / "results.json"
            if not path.is_file():
                rep.partial.append(name)
                continue
            try:
                res = json.loads(path.read_text())
                rep.rows.append(row_of(res, name))
            except (json.JSONDecodeError, KeyError) as e:
                rep.partial.append(f"{name} (unreadable results.json: {type(e).__name__} {e})")
                continue
            rep.results.append(res)
            datasets.setdefault(res["data"]["name"], []).append(name)
    if len(datasets) > 1:
        listing = "; ".join(f"{k} ({len(v)} runs)" for k, v in datasets.items())
        raise InputError(f"mixed datasets in one report: {listing}; report each dataset separately")
    rep.dataset = next(iter(datasets), None)
    return rep


results_from_wandb = results_of  # a W&B run's config + summary, shaped like results.json


def collect_wandb(path: str) -> Report:
    """ENTITY/PROJECT/GROUP from the W&B API (needs network and a login)."""
    import wandb

    parts = path.split("/")
    if len(parts) != 3:
        raise InputError(f"--wandb {path!r}: expected ENTITY/PROJECT/GROUP")
    rep = Report()
    datasets: set[str] = set()
    for run in wandb.Api().runs(f"{parts[0]}/{parts[1]}", filters={"group": parts[2]}):
        if run.state != "finished":
            rep.partial.append(f"{run.name} (W&B state {run.state})")
            continue
        res = results_from_wandb(dict(run.config), dict(run.summary))
        rep.results.append(res)
        rep.rows.append(row_of(res, run.name))
        datasets.add(res["data"]["name"])
    if len(datasets) > 1:
        raise InputError(f"mixed datasets in one report: {', '.join(sorted(datasets))}; report each separately")
    rep.dataset = next(iter(datasets), None)
    return rep


def markdown(rep: Report) -> str:
    lines = [
        f"# medret report: {rep.dataset or 'no complete runs'}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rep.rows]
    if rep.partial:
        lines += ["", f"Partial runs (started, no results.json): {len(rep.partial)}", ""]
        lines += [f"- {p}" for p in rep.partial]
    return "\n".join(lines) + "\n"


def csv_text(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, [*COLUMNS, "status"])
    w.writeheader()
    for r in rep.rows:
        w.writerow({**r, "status": "complete"})
    for p in rep.partial:
        w.writerow({"run": p, "status": "partial"})
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indexes of points not dominated (smaller size and higher score), sorted by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot(rep: Report, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if not rep.results:
        return written
    sizes = [r["quant"].get("model_bytes", r["sizes"]["model_param_bytes"]) / 1e6 for r in rep.results]
    scores = [r["metrics"]["ndcg@10"] for r in rep.results]
    lo = [s - r.get("metrics_ci95", {}).get("ndcg@10", [s, s])[0] for s, r in zip(scores, rep.results)]
    hi = [r.get("metrics_ci95", {}).get("ndcg@10", [s, s])[1] - s for s, r in zip(scores, rep.results)]
    labels = [
        row["scheme"] if row["bits"] == "" or row["scheme"].startswith("bnb") else f"{row['scheme']} {row['bits']}b"
        for row in rep.rows
    ]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.errorbar(sizes, scores, yerr=[lo, hi], fmt="o", capsize=3, alpha=0.7, label="runs (95% CI)")
    front = pareto_front(list(zip(sizes, scores)))
    ax.plot([sizes[i] for i in front], [scores[i] for i in front], "r--", label="Pareto front")
    for x, y, t in zip(sizes, scores, labels):
        ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("model size (MB)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"size vs quality: {rep.dataset}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = out / "pareto_size_ndcg10.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    cats = sorted({c for r in rep.results for c, v in r.get("by_category", {}).items() if "delta_ndcg@10" in v})
    runs = [(lab, r) for lab, r in zip(labels, rep.results) if "deltas" in r]
    if cats and runs:
        fig, ax = plt.subplots(figsize=(max(7.0, 1.8 * len(cats) + 0.3 * len(runs)), 4.8))
        width = 0.8 / len(runs)
        for j, (lab, r) in enumerate(runs):
            vals = [r["by_category"].get(c, {}).get("delta_ndcg@10", 0.0) for c in cats]
            ax.bar([i + j * width for i in range(len(cats))], vals, width, label=lab)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, rotation=15, ha="right")
        ax.set_ylabel("Δ nDCG@10 vs fp32")
        ax.set_title("per-query-category change after quantization")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / "category_delta_ndcg10.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_report(
    folders: list[Path], out: Path | None = None, wandb_path: str | None = None
) -> tuple[Report, list[Path]]:
    if wandb_path:
        rep = collect_wandb(wandb_path)
        if out is None:
            raise InputError("--wandb needs --out (there is no sweep folder to write into)")
    else:
        rep = collect(folders)
    out = out or folders[0]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.md", [markdown(rep)])
    write_atomic(out / "report.csv", [csv_text(rep)])
    return rep, [out / "report.md", out / "report.csv", *plot(rep, out)]
