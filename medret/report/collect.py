"""Evaluate runs into a Report: every results.json below some folders (or a W&B group), one table row each.

Jobs that started but wrote no results.json are listed as partial, never dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medret.errors import InputError
from medret.results import RESULTS_FILE, RunResult, from_wandb, read_run, verdict_label

COLUMNS = [
    "run",
    "model",
    "scheme",
    "bits",
    "runtime",
    "eff_bits",
    "eff_bits_all",
    "model_MB",
    "disk_MB",
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
METRIC = "ndcg@10"


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)
    dataset: str | None = None  # the data set's name; several joined by ", " when the runs span more than one

    def by_dataset(self) -> dict[str, Report]:
        """One Report per data set, in first-seen order (rows and results stay paired)."""
        groups: dict[str, Report] = {}
        for row, res in zip(self.rows, self.results):
            groups.setdefault(res.dataset, Report(dataset=res.dataset))
            groups[res.dataset].rows.append(row)
            groups[res.dataset].results.append(res)
        return groups


def as_run(res: RunResult | dict) -> RunResult:
    """A results.json dict (or W&B run shaped like one) read through the one reader; a RunResult as is."""
    return res if isinstance(res, RunResult) else RunResult.of(res)


def _fmt(x, nd=4):
    return "" if x is None else (round(x, nd) if isinstance(x, float) else x)


def row_of(res: RunResult | dict, name: str) -> dict:
    r = as_run(res)
    m, d, disk = r.metrics, r.deltas.get(METRIC), r.disk_bytes
    ci = d.ci95 if d else None
    return {
        "run": name,
        "model": r.model,
        "scheme": r.scheme_label,
        "bits": r.bits or "",
        "runtime": r.runtime_label,
        "eff_bits": _fmt(r.eff_bits, 3),
        "eff_bits_all": _fmt(r.eff_bits_all, 3),
        "model_MB": round(r.torch_bytes / 1e6, 1),
        "disk_MB": round(disk / 1e6, 1) if disk else "",
        "index": r.index_name,
        **{k: _fmt(m.get(k)) for k in ("ndcg@10", "recall@100", "precision@10", "f1@10")},
        "delta_ndcg@10": _fmt(d.delta) if d else "",
        "ci95": f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "",
        "verdict": verdict_label(r.verdict),
        "encode_docs_per_s": _fmt(r.encode_rate, 1),
        "qps": _fmt(r.throughput.get("search_qps"), 0),
        "dataset": r.dataset,
    }


def _job_dirs(root: Path) -> list[Path]:
    """Folders that hold a job: a results.json, or Hydra's .hydra folder of a job that never finished."""
    jobs = {p.parent for p in root.rglob(RESULTS_FILE)}
    jobs |= {p.parent for p in root.rglob(".hydra") if p.is_dir() and (p / "overrides.yaml").is_file()}
    return sorted(jobs)


def _name_datasets(rep: Report) -> Report:
    names = list(dict.fromkeys(r.dataset for r in rep.results))
    rep.dataset = ", ".join(names) if names else None
    return rep


def collect(folders: list[Path]) -> Report:
    rep = Report()
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"{folder}: not a directory (expected a sweep or run folder)")
        jobs = _job_dirs(folder)
        if not jobs:
            raise InputError(f"{folder}: no evaluate runs below it (no {RESULTS_FILE} or .hydra folders)")
        for job in jobs:
            name = str(job.relative_to(folder.parent))
            try:
                res = read_run(job)
                if res is None:
                    rep.partial.append(name)
                    continue
                row = row_of(res, name)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                rep.partial.append(f"{name} (unreadable {RESULTS_FILE}: {type(e).__name__} {e})")
                continue
            rep.rows.append(row)
            rep.results.append(res)
    return _name_datasets(rep)


def results_from_wandb(config: dict, summary: dict) -> RunResult:
    """A W&B run's config + summary, read as the results.json it was logged from."""
    return from_wandb(config, summary)


def collect_wandb(path: str) -> Report:
    """ENTITY/PROJECT/GROUP from the W&B API (needs network and a login)."""
    import wandb

    parts = path.split("/")
    if len(parts) != 3:
        raise InputError(f"--wandb {path!r}: expected ENTITY/PROJECT/GROUP")
    rep = Report()
    for run in wandb.Api().runs(f"{parts[0]}/{parts[1]}", filters={"group": parts[2]}):
        if run.state != "finished":
            rep.partial.append(f"{run.name} (W&B state {run.state})")
            continue
        res = results_from_wandb(dict(run.config), dict(run.summary))
        rep.results.append(res)
        rep.rows.append(row_of(res, run.name))
    return _name_datasets(rep)
