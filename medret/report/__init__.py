"""The trade-off report over evaluate runs: one table (Markdown + CSV) and PNG plots.

``python -m medret.report SWEEP_DIR... [--out DIR]`` reads every ``results.json`` below the given
folders. Jobs that started but wrote no ``results.json`` are listed as partial, never dropped. Runs
are grouped by data set (a sweep over ``data.seed`` is several data sets): one table section and one
set of PNGs per data set, the PNG names suffixed with the data set's name when there is more than one.

Beside them the decision matrix (``decision_matrix.md``/``.csv``): runs x acceptance profiles, each cell
the outcome and the criterion that decided it.

Plots per data set: deployable size vs nDCG@10 (95% CI, Pareto front), encode docs/s vs nDCG@10 (one
PNG per device/threads group: timings are only comparable there), retention vs effective bits (one
line per scheme and runtime), the per-query-category change and the per-slice delta with its CI (runs
judged by acceptance profiles only). Colour = quant scheme, marker = runtime; no per-point text (it
overlaps into an unreadable cluster on a real sweep).

Runs are read through ``medret.results`` (older results.json files fall back there). The parts:
``collect`` (folders or W&B -> Report and rows), ``tables`` (Markdown, CSV, shared file names),
``pareto`` (fronts, baseline, retention), ``plots`` (the PNGs), ``decisions`` (the decision matrix),
``slices`` (the slice plot).
"""

from __future__ import annotations

from pathlib import Path

from medret.errors import InputError
from medret.report.collect import COLUMNS, Report, as_run, collect, collect_wandb, results_from_wandb, row_of
from medret.report.decisions import decision_csv, decision_markdown, matrix_rows
from medret.report.pareto import baseline_score, pareto_front, pareto_front_max, retention_points
from medret.report.plots import plot
from medret.report.tables import csv_text, dataset_suffixes, markdown, sanitize, speed_groups
from medret.results import RunResult
from medret.storage import write_atomic

__all__ = [
    "COLUMNS",
    "Report",
    "baseline_score",
    "collect",
    "collect_wandb",
    "csv_text",
    "decision_csv",
    "decision_markdown",
    "dataset_suffixes",
    "deploy_bytes",
    "encode_rate",
    "markdown",
    "matrix_rows",
    "pareto_front",
    "pareto_front_max",
    "plot",
    "results_from_wandb",
    "retention_points",
    "row_of",
    "sanitize",
    "score_of",
    "speed_groups",
    "write_report",
]


# one-line readers kept for callers of the old dict-taking API (a dict or a RunResult)
def deploy_bytes(res: RunResult | dict) -> int:
    return as_run(res).deploy_bytes


def encode_rate(res: RunResult | dict) -> float | None:
    return as_run(res).encode_rate


def score_of(res: RunResult | dict) -> float:
    return as_run(res).score()


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
    write_atomic(out / "decision_matrix.md", [decision_markdown(rep)])
    write_atomic(out / "decision_matrix.csv", [decision_csv(rep)])
    tables = ["report.md", "report.csv", "decision_matrix.md", "decision_matrix.csv"]
    return rep, [*(out / t for t in tables), *plot(rep, out)]
