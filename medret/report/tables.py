"""The report's table (Markdown + CSV), and the file names and groups the tables and the plots share."""

from __future__ import annotations

import re

from medret.report.collect import COLUMNS, Report
from medret.results import RESULTS_FILE, RunResult, csv_table, markdown_table


def sanitize(name: str) -> str:
    """A file-name-safe form of a data set or device name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unnamed"


def dataset_suffixes(names: list[str]) -> dict[str, str]:
    """'' for a lone data set, else '_<sanitized name>' (made unique should two sanitize alike)."""
    if len(names) <= 1:
        return dict.fromkeys(names, "")
    out: dict[str, str] = {}
    for n in names:
        s = f"_{sanitize(n)}"
        while s in out.values():
            s += "_"
        out[n] = s
    return out


def speed_groups(results: list[RunResult]) -> dict[tuple[str, int | None], list[RunResult]]:
    """Runs by (device, threads), the largest group first."""
    groups: dict[tuple[str, int | None], list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.speed_key, []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def speed_png(key: tuple[str, int | None], n_groups: int, suffix: str) -> str:
    tag = "" if n_groups == 1 else f"_{sanitize(key[0])}-{key[1] or 'default'}t"
    return f"pareto_speed_ndcg10{tag}{suffix}.png"


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _speed_lines(results: list[RunResult], suffix: str) -> list[str]:
    groups = speed_groups(results)
    lines = ["", "Encode speed is compared only within one device/threads group:", ""]
    for key, runs in groups.items():
        timed = sum(r.encode_rate is not None for r in runs)
        untimed = len(runs) - timed
        skipped = f", {untimed} without an encode timing (embeddings from the cache)" if untimed else ""
        png = speed_png(key, len(groups), suffix) if timed else "no plot: nothing timed"
        lines.append(f"- {key[0]}, {key[1] or 'default'} threads: {_runs(len(runs))}{skipped} -> {png}")
    return lines


def markdown(rep: Report) -> str:
    groups = rep.by_dataset()
    suffixes = dataset_suffixes(list(groups))
    if len(groups) > 1:
        lines = [f"# medret report: {len(groups)} data sets", ""]
        lines += [f"- {name}: {_runs(len(g.rows))}" for name, g in groups.items()]
    else:
        lines = [f"# medret report: {rep.dataset or 'no complete runs'}"]
    for name, g in groups.items():
        if len(groups) > 1:
            lines += ["", f"## {name}"]
        lines += ["", *markdown_table(COLUMNS, g.rows), *_speed_lines(g.results, suffixes[name])]
    if not groups:
        lines += ["", *markdown_table(COLUMNS, [])]
    if rep.partial:
        lines += ["", f"Partial runs (started, no {RESULTS_FILE}): {len(rep.partial)}", ""]
        lines += [f"- {p}" for p in rep.partial]
    return "\n".join(lines) + "\n"


def csv_text(rep: Report) -> str:
    rows = [{**r, "status": "complete"} for r in rep.rows] + [{"run": p, "status": "partial"} for p in rep.partial]
    return csv_table([*COLUMNS, "dataset", "status"], rows)
