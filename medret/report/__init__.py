"""The trade-off report over evaluate runs: one table (Markdown + CSV) and PNG plots.

``python -m medret.report SWEEP_DIR... [--out DIR]`` reads every ``results.json`` below the given
folders. Jobs that started but wrote no ``results.json`` are listed as partial, never dropped. Runs
are grouped by data set (a sweep over ``data.seed`` is several data sets): one table section and one
set of PNGs per data set, the PNG names suffixed with the data set's name when there is more than one.

Plots per data set: deployable size vs nDCG@10 (95% CI, Pareto front), encode docs/s vs nDCG@10 (one
PNG per device/threads group: timings are only comparable there), retention vs effective bits (one
line per scheme and runtime) and the per-query-category change. Colour = quant scheme, marker =
runtime; no per-point text (it overlaps into an unreadable cluster on a real sweep).

Older results.json files lack ``runtime``, ``device``, ``effective_bits_per_param_all`` or
``deltas[...]["fp32"]``: every read falls back, so they still report.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medret.errors import InputError
from medret.storage import write_atomic
from medret.tracking.outputs import results_of

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
    results: list[dict] = field(default_factory=list)
    dataset: str | None = None  # the data set's name; several joined by ", " when the runs span more than one

    def by_dataset(self) -> dict[str, Report]:
        """One Report per data set, in first-seen order (rows and results stay paired)."""
        groups: dict[str, Report] = {}
        for row, res in zip(self.rows, self.results):
            name = dataset_of(res)
            groups.setdefault(name, Report(dataset=name))
            groups[name].rows.append(row)
            groups[name].results.append(res)
        return groups


# --- reading one results.json (every key an older run may lack is read with a fallback) ---


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    """d[k1][k2]... or default when any level is missing, None or not a mapping."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


def dataset_of(res: dict) -> str:
    return str(_get(res, "data", "name", default="unknown"))


def scheme_of(res: dict) -> str:
    return str(_get(res, "quant", "scheme") or _get(res, "config", "quant", "name", default="none"))


def runtime_name(res: dict) -> str:
    return str(_get(res, "runtime", "name", default="torch"))


def runtime_label(res: dict) -> str:
    """'torch', or 'NAME/MODE' for an exported runtime (its mode is a quantization of its own)."""
    name = runtime_name(res)
    return name if name == "torch" else f"{name}/{_get(res, 'runtime', 'quantize', default='none')}"


def torch_bytes(res: dict) -> int:
    """The PyTorch model's parameter bytes after medret's quantization."""
    q = res.get("quant") or {}
    return q["model_bytes"] if q.get("model_bytes") is not None else _get(res, "sizes", "model_param_bytes", default=0)


def disk_bytes(res: dict) -> int | None:
    """What an exported runtime's model files take on disk; None for torch (nothing exported)."""
    return None if runtime_name(res) == "torch" else _get(res, "runtime", "bytes_on_disk")


def deploy_bytes(res: dict) -> int:
    """The bytes of the model that would be deployed: the runtime's files, else the torch parameters."""
    return disk_bytes(res) or torch_bytes(res)


def eff_bits_of(res: dict) -> float | None:
    """Bits per parameter over all parameters when known (embeddings included), else over quantized ones.

    A runtime that quantized on its own (onnx dynamic_int8, openvino int4_weights...) stores fewer bits than
    torch's quant info says (32 for quant=none): its bits are its files' bits per fp32 parameter."""
    q, disk = res.get("quant") or {}, disk_bytes(res)
    fp32_bytes = _get(res, "sizes", "fp32_model_param_bytes") or q.get("fp32_model_bytes")
    if disk and fp32_bytes and _get(res, "runtime", "quantize", default="none") != "none":
        return 8 * disk / (fp32_bytes / 4)
    bits = q.get("effective_bits_per_param_all")
    return bits if bits is not None else q.get("effective_bits_per_param")


def score_of(res: dict) -> float:
    return res["metrics"][METRIC]


def ci_err(res: dict) -> tuple[float, float]:
    """(below, above) the score: its 95% CI as error-bar lengths; (0, 0) when the run has none."""
    s, ci = score_of(res), _get(res, "metrics_ci95", METRIC)
    return (0.0, 0.0) if not ci else (max(0.0, s - ci[0]), max(0.0, ci[1] - s))


def encode_rate(res: dict) -> float | None:
    """Docs/s of the doc encode; None when the embeddings came from the cache (nothing was timed)."""
    return _get(res, "throughput", "encode_docs_per_s")


def speed_key(res: dict) -> tuple[str, int | None]:
    """(device, threads) the docs were encoded with: timings are comparable only within one key.

    An exported runtime reports what it ran on itself (its threads may differ from torch's)."""
    exported = runtime_name(res) != "torch"
    device = (exported and _get(res, "runtime", "device")) or _get(res, "device", "encoder", default="unknown")
    threads = (exported and _get(res, "runtime", "threads")) or _get(res, "device", "cpu_threads")
    return str(device).split(":")[0], threads  # cuda:0 and cuda name the same device kind


def _fmt(x, nd=4):
    return "" if x is None else (round(x, nd) if isinstance(x, float) else x)


def verdict_of(v: dict | None) -> str:
    """accept | reject | inconclusive (n to decide); results from before the third outcome say accept/reject."""
    if not v:
        return "baseline"
    outcome = v.get("outcome") or ("accept" if v["accept"] else "reject")
    n = v.get("queries_to_decide")
    return f"inconclusive (~{n} queries to decide)" if outcome == "inconclusive" and n else outcome


def row_of(res: dict, name: str) -> dict:
    cfg, q, m = res.get("config") or {}, res.get("quant") or {}, res["metrics"]
    d, v, disk = _get(res, "deltas", METRIC), res.get("verdict"), disk_bytes(res)
    ci = (d or {}).get("ci95")
    return {
        "run": name,
        "model": _get(cfg, "model", "name", default=""),
        "scheme": scheme_of(res),
        "bits": _get(cfg, "quant", "bits") or "",
        "runtime": runtime_label(res),
        "eff_bits": _fmt(q.get("effective_bits_per_param"), 3),
        "eff_bits_all": _fmt(q.get("effective_bits_per_param_all"), 3),
        "model_MB": round(torch_bytes(res) / 1e6, 1),
        "disk_MB": round(disk / 1e6, 1) if disk else "",
        "index": _get(cfg, "index", "name", default=""),
        **{k: _fmt(m.get(k)) for k in ("ndcg@10", "recall@100", "precision@10", "f1@10")},
        "delta_ndcg@10": _fmt(d["delta"]) if d else "",
        "ci95": f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "",
        "verdict": verdict_of(v),
        "encode_docs_per_s": _fmt(encode_rate(res), 1),
        "qps": _fmt(_get(res, "throughput", "search_qps"), 0),
        "dataset": dataset_of(res),
    }


# --- collecting runs ---


def _job_dirs(root: Path) -> list[Path]:
    """Folders that hold a job: a results.json, or Hydra's .hydra folder of a job that never finished."""
    jobs = {p.parent for p in root.rglob("results.json")}
    jobs |= {p.parent for p in root.rglob(".hydra") if p.is_dir() and (p / "overrides.yaml").is_file()}
    return sorted(jobs)


def _name_datasets(rep: Report) -> Report:
    names = list(dict.fromkeys(dataset_of(r) for r in rep.results))
    rep.dataset = ", ".join(names) if names else None
    return rep


def collect(folders: list[Path]) -> Report:
    rep = Report()
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
                row = row_of(res, name)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                rep.partial.append(f"{name} (unreadable results.json: {type(e).__name__} {e})")
                continue
            rep.rows.append(row)
            rep.results.append(res)
    return _name_datasets(rep)


results_from_wandb = results_of  # a W&B run's config + summary, shaped like results.json


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


# --- file names and groups shared by the tables and the plots ---


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


def speed_groups(results: list[dict]) -> dict[tuple[str, int | None], list[dict]]:
    """Runs by (device, threads), the largest group first."""
    groups: dict[tuple[str, int | None], list[dict]] = {}
    for r in results:
        groups.setdefault(speed_key(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def speed_png(key: tuple[str, int | None], n_groups: int, suffix: str) -> str:
    tag = "" if n_groups == 1 else f"_{sanitize(key[0])}-{key[1] or 'default'}t"
    return f"pareto_speed_ndcg10{tag}{suffix}.png"


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _speed_lines(results: list[dict], suffix: str) -> list[str]:
    groups = speed_groups(results)
    lines = ["", "Encode speed is compared only within one device/threads group:", ""]
    for key, runs in groups.items():
        timed = sum(encode_rate(r) is not None for r in runs)
        untimed = len(runs) - timed
        skipped = f", {untimed} without an encode timing (embeddings from the cache)" if untimed else ""
        png = speed_png(key, len(groups), suffix) if timed else "no plot: nothing timed"
        lines.append(f"- {key[0]}, {key[1] or 'default'} threads: {_runs(len(runs))}{skipped} -> {png}")
    return lines


# --- tables ---


def _table(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return lines + ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]


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
        lines += ["", *_table(g.rows), *_speed_lines(g.results, suffixes[name])]
    if not groups:
        lines += ["", *_table([])]
    if rep.partial:
        lines += ["", f"Partial runs (started, no results.json): {len(rep.partial)}", ""]
        lines += [f"- {p}" for p in rep.partial]
    return "\n".join(lines) + "\n"


def csv_text(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, [*COLUMNS, "dataset", "status"], extrasaction="ignore")
    w.writeheader()
    for r in rep.rows:
        w.writerow({**r, "status": "complete"})
    for p in rep.partial:
        w.writerow({"run": p, "status": "partial"})
    return buf.getvalue()


# --- Pareto fronts ---


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indexes of points not dominated (smaller size and higher score), sorted by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_front_max(points: list[tuple[float, float]]) -> list[int]:
    """Indexes of points not dominated when both coordinates are better larger (faster and better), by x."""
    return pareto_front([(-x, y) for x, y in points])[::-1]


# --- plots: colour = scheme, marker = runtime, the same in every PNG of one report ---

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
    def of(cls, results: list[dict]) -> Style:
        import matplotlib

        schemes = sorted({scheme_of(r) for r in results} - {"none"})
        palette = [*matplotlib.colormaps["tab10"].colors, *EXTRA_COLOURS]
        colours = {"none": "black"}  # the fp32 baseline: black and first, it anchors every plot
        colours |= {s: palette[i % len(palette)] for i, s in enumerate(schemes)}
        runtimes = sorted({runtime_label(r) for r in results}, key=lambda s: (s != "torch", s))
        return cls(colours, {rt: MARKERS[i % len(MARKERS)] for i, rt in enumerate(runtimes)})

    def colour(self, res: dict) -> Any:
        return self.colours[scheme_of(res)]

    def marker(self, res: dict) -> str:
        return self.markers[runtime_label(res)]

    def point(self, ax, res: dict, x: float, y: float, err: tuple[float, float] = (0.0, 0.0)) -> None:
        """One run: a filled marker, and its CI as a thin bar of the same colour."""
        c = self.colour(res)
        if err != (0.0, 0.0):
            ax.errorbar(x, y, yerr=[[err[0]], [err[1]]], fmt="none", ecolor=c, elinewidth=1, alpha=0.35, zorder=2)
        ax.plot(x, y, self.marker(res), color=c, ms=8, mec="white", mew=0.7, alpha=0.9, zorder=3)

    def legend(self, ax, results: list[dict], extra: list[tuple[Any, str]], line: bool = False) -> None:
        """One legend outside the axes (never over a point): reference lines, schemes, runtimes."""
        from matplotlib.lines import Line2D

        blank = lambda: Line2D([], [], linestyle="none")
        shown = {scheme_of(r) for r in results}
        runtimes = [rt for rt in self.markers if any(runtime_label(r) == rt for r in results)]
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


def baseline_score(results: list[dict]) -> float | None:
    """fp32 nDCG@10: from a quantized run's deltas, else fp32 = score - delta, else an fp32 torch run's own."""
    for r in results:
        d = _get(r, "deltas", METRIC) or {}
        if d.get("fp32") is not None:
            return d["fp32"]
    for r in results:
        d = _get(r, "deltas", METRIC) or {}
        if d.get("delta") is not None:  # W&B rows carry the delta only: the mean delta is exactly new - fp32
            return score_of(r) - d["delta"]
    base = [score_of(r) for r in results if scheme_of(r) == "none" and runtime_label(r) == "torch"]
    return base[0] if base else None


@dataclass
class Chart:
    """One scatter PNG: the points (run, x, y, CI error) and how to label them."""

    runs: list[dict]
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


def plot_size(results: list[dict], style: Style, title: str, path: Path) -> Path:
    """(a) deployable MB vs nDCG@10 with 95% CI; the Pareto front (smaller and better)."""
    xs, ys, base = [deploy_bytes(r) / 1e6 for r in results], [score_of(r) for r in results], baseline_score(results)
    c = Chart(
        results,
        xs,
        ys,
        [ci_err(r) for r in results],
        f"Size vs quality: {title}   (better = up and left)",
        "deployable model size (MB: runtime files on disk, else torch parameters",
        "nDCG@10 (bars: 95% CI)",
        NICE_TICKS,
        base or max(ys),
    )
    return _scatter(c, style, pareto_front(list(zip(xs, ys))), "Pareto front (smaller & better)", base, path)


def plot_speed(runs: list[dict], style: Style, title: str, path: Path) -> Path | None:
    """(b) encode docs/s vs nDCG@10 for one device/threads group; the Pareto front (faster and better)."""
    timed = [r for r in runs if encode_rate(r) is not None]
    if not timed:
        return None
    xs, ys, base = [encode_rate(r) for r in timed], [score_of(r) for r in timed], baseline_score(runs)
    skipped = len(runs) - len(timed)
    note = f"\n{skipped} run(s) not shown: embeddings came from the cache, nothing timed" if skipped else ""
    c = Chart(
        timed,
        xs,
        ys,
        [ci_err(r) for r in timed],
        f"Encode speed vs quality: {title}   (better = up and right){note}",
        "document encode speed (docs/s",
        "nDCG@10 (bars: 95% CI)",
        NICE_TICKS,
        base or max(ys),
    )
    return _scatter(c, style, pareto_front_max(list(zip(xs, ys))), "Pareto front (faster & better)", base, path)


def retention_points(results: list[dict]) -> list[tuple[dict, float, float, tuple[float, float]]]:
    """(run, effective bits, nDCG@10 / fp32 nDCG@10, CI error) for the runs where both are known."""
    base, out = baseline_score(results), []
    for r in results:
        d = _get(r, "deltas", METRIC) or {}
        fp32 = d.get("fp32") or (score_of(r) - d["delta"] if d.get("delta") is not None else base)
        bits = eff_bits_of(r)
        if bits is None or not fp32:
            continue
        ret, ci = score_of(r) / fp32, d.get("ci95")
        err = (max(0.0, ret - (fp32 + ci[0]) / fp32), max(0.0, (fp32 + ci[1]) / fp32 - ret)) if ci else (0.0, 0.0)
        out.append((r, bits, ret, err))
    return out


def plot_retention(results: list[dict], style: Style, title: str, path: Path) -> Path | None:
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
        series.setdefault((scheme_of(r), runtime_label(r)), []).append(i)

    def draw(ax) -> list[tuple[Any, str]]:
        for idx in series.values():
            colour = style.colour(runs[idx[0]])
            ax.plot([xs[i] for i in idx], [ys[i] for i in idx], "-", color=colour, lw=1.4, alpha=0.8, zorder=2)
        for r, x, y, e in pts:
            style.point(ax, r, x, y, e)
        return [(ax.axhline(1.0, color="0.45", ls=":", lw=1.3, zorder=1), "fp32 = 1.0")]

    return render(c, style, draw, path)


def run_label(res: dict) -> str:
    """A short name for a bar legend: scheme, bits unless bnb, runtime unless torch."""
    bits, scheme, rt = _get(res, "config", "quant", "bits"), scheme_of(res), runtime_label(res)
    label = scheme if bits is None or scheme.startswith("bnb") else f"{scheme} {bits}b"
    return label if rt == "torch" else (rt if scheme == "none" else f"{label} {rt}")


HATCHES = ("", "//", "xx", "..", "\\\\", "++", "oo")


def _bar_styles(runs: list[dict], style: Style) -> list[dict[str, Any]]:
    """Bar colour = the scheme's, lighter for more bits within it; hatch = the runtime (torch: none)."""
    from matplotlib.colors import to_rgb

    out = []
    for r in runs:
        same = sorted({eff_bits_of(o) or 0.0 for o in runs if scheme_of(o) == scheme_of(r)})
        t = 0.6 * same.index(eff_bits_of(r) or 0.0) / max(1, len(same) - 1)  # 0 (fewest bits) .. 0.6 (most)
        rgb = tuple(c + (1 - c) * t for c in to_rgb(style.colour(r)))
        hatch = HATCHES[list(style.markers).index(runtime_label(r)) % len(HATCHES)]
        out.append({"color": rgb, "hatch": hatch, "edgecolor": "white" if not hatch else "0.3", "linewidth": 0.4})
    return out


def plot_categories(results: list[dict], names: list[str], style: Style, title: str, path: Path) -> Path | None:
    """Per-query-category Δ nDCG@10 against fp32, one bar per quantized run (a scheme's bars side by side)."""
    cats = sorted({c for r in results for c, v in (r.get("by_category") or {}).items() if "delta_ndcg@10" in v})
    picked = sorted(
        ((r, n) for r, n in zip(results, names) if "deltas" in r),
        key=lambda p: (scheme_of(p[0]), runtime_label(p[0]), eff_bits_of(p[0]) or 0.0),
    )
    if not cats or not picked:
        return None
    runs = [r for r, _ in picked]
    labels = [run_label(r) for r in runs]
    labels = [f"{lab} ({n})" if labels.count(lab) > 1 else lab for lab, (_, n) in zip(labels, picked)]
    fig, ax = _pyplot().subplots(figsize=(max(7.0, 1.8 * len(cats) + 0.3 * len(runs)), 4.8))
    width = 0.8 / len(runs)
    for j, (r, lab, kw) in enumerate(zip(runs, labels, _bar_styles(runs, style))):
        vals = [r["by_category"].get(c, {}).get("delta_ndcg@10", 0.0) for c in cats]
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
    return [p for p in written if p is not None]


def plot(rep: Report, out: Path) -> list[Path]:
    # runs evaluated without nDCG@10 (eval.k_values without 10) are in the table but cannot be drawn
    keep = [i for i, r in enumerate(rep.results) if r["metrics"].get(METRIC) is not None]
    rep = Report([rep.rows[i] for i in keep], [], [rep.results[i] for i in keep], rep.dataset)
    if not rep.results:
        return []
    style = Style.of(rep.results)
    groups = rep.by_dataset()
    suffixes = dataset_suffixes(list(groups))
    return [p for name, g in groups.items() for p in plot_dataset(g, out, suffixes[name], style)]


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
