"""Pareto fronts, the fp32 baseline score and retention (score / fp32 score) over a report's runs."""

from __future__ import annotations

from medret.results import METRIC, RunResult


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


def baseline_score(results: list[RunResult]) -> float | None:
    """fp32 nDCG@10: from a quantized run's deltas, else fp32 = score - delta, else an fp32 torch run's own."""
    for r in results:
        d = r.deltas.get(METRIC)
        if d and d.fp32 is not None:
            return d.fp32
    for r in results:
        d = r.deltas.get(METRIC)
        if d and d.delta is not None:  # W&B rows carry the delta only: the mean delta is exactly new - fp32
            return r.score() - d.delta
    base = [r.score() for r in results if r.scheme == "none" and r.runtime_label == "torch"]
    return base[0] if base else None


def retention_points(results: list[RunResult]) -> list[tuple[RunResult, float, float, tuple[float, float]]]:
    """(run, effective bits, nDCG@10 / fp32 nDCG@10, CI error) for the runs where both are known."""
    base, out = baseline_score(results), []
    for r in results:
        d = r.deltas.get(METRIC)
        fp32 = (d and d.fp32) or (r.score() - d.delta if d and d.delta is not None else base)
        bits = r.deployed_bits
        if bits is None or not fp32:
            continue
        ret, ci = r.score() / fp32, d.ci95 if d else None
        err = (max(0.0, ret - (fp32 + ci[0]) / fp32), max(0.0, (fp32 + ci[1]) / fp32 - ret)) if ci else (0.0, 0.0)
        out.append((r, bits, ret, err))
    return out
