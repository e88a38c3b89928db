"""The slice plot: per query slice, each quantized run's paired delta against fp32 with its CI, so that a loss
confined to a critical slice (numbers, negation, abbreviations...) shows beside a harmless overall delta.

The points are results.json["profiles"] criterion rows (not recomputed from per_query.jsonl): per run and slice,
the row at the plotted metric from the profile that judges that metric on the most slices (precision_critical
by default), so the CIs are that profile's family-wise ones and the dashed marks are its margins. A slice
whose column is tinted red holds a rejection; a too-small slice is labelled so and has no point."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from medret.results import METRIC, Criterion, RunResult

REJECT = "#d62728"


def slice_metric(results: list[RunResult]) -> str | None:
    """nDCG@10 when any profile row judges it, else the metric most rows judge; None: no profile rows."""
    seen = Counter(c.metric for r in results for p in r.profiles.values() for c in p.criteria)
    return None if not seen else (METRIC if METRIC in seen else seen.most_common(1)[0][0])


def slice_rows(res: RunResult, metric: str) -> tuple[dict[str, Criterion], str | None]:
    """{slice: row at ``metric``} and the profile the rows come from (the one judging the most slices)."""
    per_profile = {n: [c for c in p.criteria if c.metric == metric] for n, p in res.profiles.items()}
    per_profile = {n: rows for n, rows in per_profile.items() if rows}
    if not per_profile:
        return {}, None
    main = max(per_profile, key=lambda n: len({c.slice for c in per_profile[n]}))
    out: dict[str, Criterion] = {}
    for name in [main, *per_profile]:  # slices the main profile leaves out: from the others
        for c in per_profile[name]:
            out.setdefault(c.slice, c)
    return out, main


def _slice_order(results: list[RunResult], slices: set[str]) -> list[str]:
    """'all' first, then critical slices, then the rest (data categories), each alphabetically."""
    critical = {s for r in results for s, info in r.slices.items() if info.critical}
    return sorted(slices, key=lambda s: (s != "all", s not in critical, s))


def _tick(name: str, rows: list[Criterion], critical: bool) -> str:
    n = max((c.n or 0 for c in rows), default=0)
    small = all(c.outcome == "too_small" for c in rows)
    return f"{name}{' *' if critical else ''}\nn={n}" + ("\ntoo small" if small else "")


def plot_slices(results: list[RunResult], names: list[str], style: Any, title: str, path: Path) -> Path | None:
    """One PNG: x = slices, one offset point per quantized run (colour = scheme), bars = the CI of the delta."""
    from medret.report.plots import _bar_styles, _pyplot, _save, run_label

    metric = slice_metric(results)
    if metric is None:
        return None
    picked = [(r, n, *slice_rows(r, metric)) for r, n in zip(results, names)]
    picked = sorted(
        (p for p in picked if p[2]), key=lambda p: (p[0].scheme, p[0].runtime_label, p[0].deployed_bits or 0)
    )
    runs = [p[0] for p in picked]
    order = _slice_order(runs, {s for p in picked for s in p[2]})
    critical = {s for r in runs for s, info in r.slices.items() if info.critical}
    labels = [run_label(r) for r in runs]
    labels = [f"{lab} ({p[1]})" if labels.count(lab) > 1 else lab for lab, p in zip(labels, picked)]
    fig, ax = _pyplot().subplots(figsize=(max(7.0, 1.1 * len(order) + 0.15 * len(runs) + 2.5), 5.2))
    width = 0.8 / len(runs)
    for i, s in enumerate(order):
        rows = [p[2][s] for p in picked if s in p[2]]
        if any(c.outcome == "reject" for c in rows):
            ax.axvspan(i - 0.45, i + 0.45, color=REJECT, alpha=0.12, lw=0, zorder=0)
        for drop in {c.max_drop for c in rows if c.max_drop is not None}:
            ax.hlines(-drop, i - 0.45, i + 0.45, colors=REJECT, linestyles="--", lw=1.0, zorder=1)
    for j, ((r, _, rows, _), lab, kw) in enumerate(zip(picked, labels, _bar_styles(runs, style))):
        x0 = j * width - 0.4 + width / 2
        pts = [(i + x0, rows[s]) for i, s in enumerate(order) if s in rows and rows[s].delta is not None]
        pts = [(x, c) for x, c in pts if c.outcome != "too_small"]
        for x, c in pts:
            lo, hi = c.ci95 or (c.delta, c.delta)
            ax.errorbar(x, c.delta, yerr=[[c.delta - lo], [hi - c.delta]], fmt="none", ecolor=kw["color"], lw=1.2)
        ax.plot([], [], style.marker(r), color=kw["color"], label=lab)
        for x, c in pts:
            edge = REJECT if c.outcome == "reject" else "white"
            ax.plot(x, c.delta, style.marker(r), color=kw["color"], ms=7, mec=edge, mew=1.8 if edge == REJECT else 0.6)
    ax.axhline(0, color="k", lw=0.8)
    ticks = [_tick(s, [p[2][s] for p in picked if s in p[2]], s in critical) for s in order]
    ax.set_xticks(range(len(order)), ticks, fontsize=8)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel(f"Δ {metric} vs fp32 (bars: family-wise 95% CI)")
    sources = sorted({p[3] for p in picked if p[3]})
    ax.set_title(
        f"per-slice change after quantization: {title}\n* critical slice; red column: a rejection there; "
        f"dashed: the margin (rows from profile {', '.join(sources)})",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    return _save(fig, path)


def slice_png(results: list[RunResult], suffix: str) -> str:
    metric = slice_metric(results) or METRIC
    return f"slice_delta_{metric.replace('@', '')}{suffix}.png"
