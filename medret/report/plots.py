"""The report's PNGs: colour = quant scheme, marker = runtime, the same in every PNG of one report; no
per-point text (it overlaps into an unreadable cluster on a real sweep)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medret.report.collect import Report
from medret.report.pareto import baseline_score, pareto_front, pareto_front_max, retention_points
from medret.report.slices import plot_slices, slice_png
from medret.report.tables import dataset_suffixes, speed_groups, speed_png
from medret.results import METRIC, RunResult

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
# past tab10's ten hues: dark, saturated ones that stay apart from them (a sweep may hold 14 schemes)
EXTRA_COLOURS = ("#800000", "#000075", "#f032e6", "#469990", "#e6b400", "#00c060")
NICE_TICKS = [m * 10**e for e in range(-1, 6) for m in (1, 2, 5)]
BIT_TICKS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scheme_name(scheme: str) -> str:
    return "fp32 (none)" if scheme == "none" else scheme


@dataclass
class Style:
    """Colour per quant scheme and marker per runtime, fixed over all of a report's PNGs."""

    colours: dict[str, Any]
    markers: dict[str, str]

    @classmethod
    def of(cls, results: list[RunResult]) -> Style:
        import matplotlib

        schemes = sorted({r.scheme for r in results} - {"none"})
        palette = [*matplotlib.colormaps["tab10"].colors, *EXTRA_COLOURS]
        colours = {"none": "black"}  # the fp32 baseline: black and first, it anchors every plot
        colours |= {s: palette[i % len(palette)] for i, s in enumerate(schemes)}
        runtimes = sorted({r.runtime_label for r in results}, key=lambda s: (s != "torch", s))
        return cls(colours, {rt: MARKERS[i % len(MARKERS)] for i, rt in enumerate(runtimes)})

    def colour(self, res: RunResult) -> Any:
        return self.colours[res.scheme]

    def marker(self, res: RunResult) -> str:
        return self.markers[res.runtime_label]

    def point(self, ax, res: RunResult, x: float, y: float, err: tuple[float, float] = (0.0, 0.0)) -> None:
        """One run: a filled marker, and its CI as a thin bar of the same colour."""
        c = self.colour(res)
        if err != (0.0, 0.0):
            ax.errorbar(x, y, yerr=[[err[0]], [err[1]]], fmt="none", ecolor=c, elinewidth=1, alpha=0.35, zorder=2)
        ax.plot(x, y, self.marker(res), color=c, ms=8, mec="white", mew=0.7, alpha=0.9, zorder=3)

    def legend(self, ax, results: list[RunResult], extra: list[tuple[Any, str]], line: bool = False) -> None:
        """One legend outside the axes (never over a point): reference lines, schemes, runtimes."""
        from matplotlib.lines import Line2D

        blank = lambda: Line2D([], [], linestyle="none")
        shown = {r.scheme for r in results}
        runtimes = [rt for rt in self.markers if any(r.runtime_label == rt for r in results)]
        entries = [*extra, (blank(), "scheme (colour)")]
        # one runtime: its marker; several: a neutral dot (the runtime section shows the markers)
        kw = {"linestyle": "-" if line else "none", "marker": self.markers[runtimes[0]] if len(runtimes) == 1 else "o"}
        entries += [(Line2D([], [], color=c, **kw), scheme_name(s)) for s, c in self.colours.items() if s in shown]
        heads = {"scheme (colour)"}
        if len(runtimes) > 1:
            heads.add("runtime (marker)")
            entries.append((blank(), "runtime (marker)"))
            grey = lambda rt: Line2D([], [], color="dimgray", marker=self.markers[rt], linestyle="none")
            entries += [(grey(rt), rt) for rt in runtimes]
        leg = ax.legend(
            *zip(*entries), loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8, frameon=False
        )
        for text in leg.get_texts():
            if text.get_text() in heads:
                text.set_fontweight("bold")


@dataclass
class Chart:
    """One scatter PNG: the points (run, x, y, CI error) and how to label them."""

    runs: list[RunResult]
    xs: list[float]
    ys: list[float]
    errs: list[tuple[float, float]]
    title: str
    xlabel: str  # without the closing ')': ', log scale)' or ')' is appended
    ylabel: str
    xticks: list[float]
    top: float  # the fp32 level; the zoom panel keeps the runs within ZOOM of it
    log_base: int = 10
    lines: bool = False  # retention: one line per scheme, so the legend shows lines


ZOOM = 0.15  # zoom on runs within 15% of fp32: collapsed 2-bit runs would squash them into one band


def _zoom_box(c: Chart) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(x range, y range) of the runs near fp32, when they are squashed by far-off runs; else None."""
    near = [i for i, y in enumerate(c.ys) if y >= (1 - ZOOM) * c.top]
    if len(near) < 2 or len(near) == len(c.ys):
        return None
    lo = min(c.ys[i] - c.errs[i][0] for i in near)
    hi = max(max(c.ys[i] + c.errs[i][1] for i in near), c.top)
    if hi - lo > 0.5 * (max(c.ys) - min(c.ys)):
        return None  # the near runs already fill half the axis: no zoom needed
    pad = 0.06 * (hi - lo)
    return (min(c.xs[i] for i in near), max(c.xs[i] for i in near)), (lo - pad, hi + pad)


def _x_axis(ax, lo: float, hi: float, c: Chart, log: bool) -> None:
    """x limits with a margin; on a log scale plain-number ticks (not 10^2), denser when the range is short."""
    if not log:
        pad = 0.06 * (hi - lo) or 0.1 * abs(lo) or 0.5  # one point: a margin relative to its value
        ax.set_xlim(lo - pad, hi + pad)
        return
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=c.log_base)
    ax.set_xlim(lo / 1.12, hi * 1.12)
    shown = [t for t in c.xticks if lo / 1.12 <= t <= hi * 1.12]
    if len(shown) < 3:
        shown = [m * 10**e for e in range(-1, 6) for m in range(1, 10) if lo / 1.12 <= m * 10**e <= hi * 1.12]
    ax.set_xticks(shown, [f"{t:g}" for t in shown])
    ax.xaxis.set_minor_locator(NullLocator())


def render(c: Chart, style: Style, draw, path: Path) -> Path:
    """The chart's points on one panel, or two (all runs | zoom near fp32); the legend right of the last one.

    ``draw(ax)`` draws the points and returns the legend's reference entries."""
    from matplotlib.patches import Rectangle

    zoom = _zoom_box(c)
    size = (14, 5.6) if zoom else (8.5, 5.4)  # constrained: the titles, the panels and the legend never overlap
    fig, grid = _pyplot().subplots(1, 2 if zoom else 1, figsize=size, squeeze=False, layout="constrained")
    axes, log = list(grid[0]), min(c.xs) > 0 and max(c.xs) / min(c.xs) > 10  # log when sizes span > 10x
    for ax in axes:
        extra = draw(ax)
        ax.grid(alpha=0.3)
    fig.supxlabel(c.xlabel + (", log scale)" if log else ")"), fontsize=10)  # one label under both panels
    axes[0].set_ylabel(c.ylabel)
    _x_axis(axes[0], min(c.xs), max(c.xs), c, log)
    fig.suptitle(c.title, fontsize=11)
    if zoom:
        (x0, x1), (y0, y1) = zoom
        _x_axis(axes[1], x0, x1, c, log)
        axes[1].set_ylim(y0, y1)
        (x0, x1) = axes[1].get_xlim()  # with its margin: the box edge never cuts through a marker
        axes[0].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="0.55", lw=0.8, zorder=0))
        axes[0].set_title("all runs (grey box: the zoom)", fontsize=9)
        axes[1].set_title(f"zoom: the runs within {ZOOM:.0%} of fp32", fontsize=9)
    style.legend(axes[-1], c.runs, extra, line=c.lines)
    return _save(fig, path)


def _front_line(ax, c: Chart, front: list[int], label: str) -> tuple[Any, str]:
    xs, ys = [c.xs[i] for i in front], [c.ys[i] for i in front]
    (h,) = ax.plot(xs, ys, "--", color="crimson", lw=1.6, alpha=0.85, zorder=4)
    ax.plot(xs, ys, "o", ms=13, mfc="none", mec="crimson", mew=1.2, alpha=0.85, zorder=4)  # ring the front's runs
    return h, label


def _fp32_line(ax, base: float | None) -> list[tuple[Any, str]]:
    if base is None:
        return []
    return [(ax.axhline(base, color="0.45", ls=":", lw=1.3, zorder=1), f"fp32 nDCG@10 = {base:.3f}")]


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")  # tight: keeps the outside legend in the PNG
    _pyplot().close(fig)
    return path


def _scatter(c: Chart, style: Style, front: list[int], front_label: str, base: float | None, path: Path) -> Path:
    def draw(ax) -> list[tuple[Any, str]]:
        for r, x, y, e in zip(c.runs, c.xs, c.ys, c.errs):
            style.point(ax, r, x, y, e)
        return [_front_line(ax, c, front, front_label), *_fp32_line(ax, base)]

    return render(c, style, draw, path)


def plot_size(results: list[RunResult], style: Style, title: str, path: Path) -> Path:
    """(a) deployable MB vs nDCG@10 with 95% CI; the Pareto front (smaller and better)."""
    xs, ys, base = [r.deploy_bytes / 1e6 for r in results], [r.score() for r in results], baseline_score(results)
    c = Chart(
        results,
        xs,
        ys,
        [r.ci_err() for r in results],
        f"Size vs quality: {title}   (better = up and left)",
        "deployable model size (MB: runtime files on disk, else torch parameters",
        "nDCG@10 (bars: 95% CI)",
        NICE_TICKS,
        base or max(ys),
    )
    return _scatter(c, style, pareto_front(list(zip(xs, ys))), "Pareto front (smaller & better)", base, path)


def plot_speed(runs: list[RunResult], style: Style, title: str, path: Path) -> Path | None:
    """(b) encode docs/s vs nDCG@10 for one device/threads group; the Pareto front (faster and better)."""
    timed = [r for r in runs if r.encode_rate is not None]
    if not timed:
        return None
    xs, ys, base = [r.encode_rate for r in timed], [r.score() for r in timed], baseline_score(runs)
    skipped = len(runs) - len(timed)
    note = f"\n{skipped} run(s) not shown: embeddings came from the cache, nothing timed" if skipped else ""
    c = Chart(
        timed,
        xs,
        ys,
        [r.ci_err() for r in timed],
        f"Encode speed vs quality: {title}   (better = up and right){note}",
        "document encode speed (docs/s",
        "nDCG@10 (bars: 95% CI)",
        NICE_TICKS,
        base or max(ys),
    )
    return _scatter(c, style, pareto_front_max(list(zip(xs, ys))), "Pareto front (faster & better)", base, path)


def plot_retention(results: list[RunResult], style: Style, title: str, path: Path) -> Path | None:
    """(c) retention vs effective bits: one line per scheme (and runtime) across its bit widths."""
    pts = sorted(retention_points(results), key=lambda p: p[1])
    if not pts:
        return None
    skipped = len(results) - len(pts)
    note = f"\n{skipped} run(s) not shown: no effective bits or no fp32 score" if skipped else ""
    runs, xs, ys, errs = (list(v) for v in zip(*pts))
    c = Chart(
        runs,
        xs,
        ys,
        errs,
        f"Quality kept per bit: {title}   (better = up and left){note}",
        "effective bits per parameter (scales included; runtime int8/int4: its files on disk",
        "retention = nDCG@10 / fp32 nDCG@10",
        BIT_TICKS,
        1.0,
        log_base=2,
        lines=True,
    )
    series: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(runs):
        series.setdefault((r.scheme, r.runtime_label), []).append(i)

    def draw(ax) -> list[tuple[Any, str]]:
        for idx in series.values():
            colour = style.colour(runs[idx[0]])
            ax.plot([xs[i] for i in idx], [ys[i] for i in idx], "-", color=colour, lw=1.4, alpha=0.8, zorder=2)
        for r, x, y, e in pts:
            style.point(ax, r, x, y, e)
        return [(ax.axhline(1.0, color="0.45", ls=":", lw=1.3, zorder=1), "fp32 = 1.0")]

    return render(c, style, draw, path)


def run_label(res: RunResult) -> str:
    """A short name for a bar legend: scheme, bits unless bnb, the side when only one, runtime unless torch."""
    bits, scheme, rt = res.bits, res.scheme, res.runtime_label
    label = scheme if bits is None or scheme.startswith("bnb") else f"{scheme} {bits}b"
    label += "" if res.side == "both" else f" {res.side}-only"
    return label if rt == "torch" else (rt if scheme == "none" else f"{label} {rt}")


HATCHES = ("", "//", "xx", "..", "\\\\", "++", "oo")


def _bar_styles(runs: list[RunResult], style: Style) -> list[dict[str, Any]]:
    """Bar colour = the scheme's, lighter for more bits within it; hatch = the runtime (torch: none)."""
    from matplotlib.colors import to_rgb

    out = []
    for r in runs:
        same = sorted({o.deployed_bits or 0.0 for o in runs if o.scheme == r.scheme})
        t = 0.6 * same.index(r.deployed_bits or 0.0) / max(1, len(same) - 1)  # 0 (fewest bits) .. 0.6 (most)
        rgb = tuple(c + (1 - c) * t for c in to_rgb(style.colour(r)))
        hatch = HATCHES[list(style.markers).index(r.runtime_label) % len(HATCHES)]
        out.append({"color": rgb, "hatch": hatch, "edgecolor": "white" if not hatch else "0.3", "linewidth": 0.4})
    return out


def plot_categories(results: list[RunResult], names: list[str], style: Style, title: str, path: Path) -> Path | None:
    """Per-query-category Δ nDCG@10 against fp32, one bar per quantized run (a scheme's bars side by side)."""
    cats = sorted({c for r in results for c, v in r.by_category.items() if "delta_ndcg@10" in v})
    picked = sorted(
        ((r, n) for r, n in zip(results, names) if r.deltas),
        key=lambda p: (p[0].scheme, p[0].runtime_label, p[0].deployed_bits or 0.0),
    )
    if not cats or not picked:
        return None
    runs = [r for r, _ in picked]
    labels = [run_label(r) for r in runs]
    labels = [f"{lab} ({n})" if labels.count(lab) > 1 else lab for lab, (_, n) in zip(labels, picked)]
    fig, ax = _pyplot().subplots(figsize=(max(7.0, 1.8 * len(cats) + 0.3 * len(runs)), 4.8))
    width = 0.8 / len(runs)
    for j, (r, lab, kw) in enumerate(zip(runs, labels, _bar_styles(runs, style))):
        vals = [r.by_category.get(c, {}).get("delta_ndcg@10", 0.0) for c in cats]
        ax.bar([i + j * width for i in range(len(cats))], vals, width, label=lab, **kw)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, rotation=15, ha="right")
    ax.set_ylabel("Δ nDCG@10 vs fp32")
    ax.set_title(f"per-query-category change after quantization: {title}")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    return _save(fig, path)


def plot_dataset(rep: Report, out: Path, suffix: str, style: Style) -> list[Path]:
    """The PNGs of one data set; names end in ``suffix`` ('' for a lone data set)."""
    title = rep.dataset or "?"
    written = [plot_size(rep.results, style, title, out / f"pareto_size_ndcg10{suffix}.png")]
    groups = speed_groups(rep.results)
    for key, runs in groups.items():
        sub = f"{title} ({key[0]}, {key[1] or 'default'} threads)"
        written.append(plot_speed(runs, style, sub, out / speed_png(key, len(groups), suffix)))
    written.append(plot_retention(rep.results, style, title, out / f"retention_bits{suffix}.png"))
    names = [row["run"] for row in rep.rows]
    written.append(plot_categories(rep.results, names, style, title, out / f"category_delta_ndcg10{suffix}.png"))
    written.append(plot_slices(rep.results, names, style, title, out / slice_png(rep.results, suffix)))
    return [p for p in written if p is not None]


def plot(rep: Report, out: Path) -> list[Path]:
    # runs evaluated without nDCG@10 (eval.k_values without 10) are in the table but cannot be drawn
    keep = [i for i, r in enumerate(rep.results) if r.metrics.get(METRIC) is not None]
    rep = Report([rep.rows[i] for i in keep], [], [rep.results[i] for i in keep], rep.dataset)
    if not rep.results:
        return []
    style = Style.of(rep.results)
    groups = rep.by_dataset()
    suffixes = dataset_suffixes(list(groups))
    return [p for name, g in groups.items() for p in plot_dataset(g, out, suffixes[name], style)]
