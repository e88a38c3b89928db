"""What a scan reports beyond the per-layer curves: curves by layer type, the proxy's rank correlation with
each measured drop, and a readable table."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from scipy.stats import spearmanr

MEASURED = ("fidelity_drop", "ndcg_drop")


def layer_type(name: str) -> str:
    """``encoder.layer.3.attention.self.query`` -> ``attention.self.query``: the name past the block index."""
    return re.sub(r"^.*?\.\d+\.", "", name) or name


def _agg(fn, values: list[float | None]) -> float | None:
    """None where the measure was not taken (``scan.ndcg=false``)."""
    return None if any(v is None for v in values) else float(fn(values))


def by_type(layers: list[dict], bits: list[int]) -> dict[str, dict[str, Any]]:
    """Each layer type's curve: the mean and sum over its layers of each single-layer drop and the proxy."""
    out: dict[str, dict[str, Any]] = {}
    for t in dict.fromkeys(layer["type"] for layer in layers):
        group = [layer for layer in layers if layer["type"] == t]
        curve = {}
        for b in bits:
            points = [layer["curve"][str(b)] for layer in group]
            curve[str(b)] = {
                f"{key}_{how}": _agg(fn, [p[key] for p in points])
                for key in (*MEASURED, "proxy")
                for how, fn in (("mean", np.mean), ("sum", np.sum))
            }
        out[t] = {"layers": len(group), "params": sum(layer["params"] for layer in group), "curve": curve}
    return out


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation; None where it is undefined (fewer than 3 points, a constant or unmeasured series)."""
    if len(a) < 3 or any(x is None for x in b) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = float(spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


def correlations(layers: list[dict], bits: list[int]) -> dict[str, Any]:
    """Spearman rank correlation of the proxy with each measured drop: across layers at each width, and
    pooled over every (layer, width) point."""
    points = [(layer["curve"][str(b)], b) for layer in layers for b in bits]
    per_bits = {
        str(b): {key: _spearman(*zip(*[(p["proxy"], p[key]) for p, pb in points if pb == b])) for key in MEASURED}
        for b in bits
    }
    pooled = {key: _spearman([p["proxy"] for p, _ in points], [p[key] for p, _ in points]) for key in MEASURED}
    return {"method": "spearman", "per_bits": per_bits, "pooled": pooled}


def table(report: dict[str, Any]) -> str:
    """Per layer and per type: the fidelity drop, dev nDCG@10 drop and proxy at each width."""
    bits = report["bits"]
    cols = [f"{m}@{b}" for m in ("fid", "ndcg", "proxy") for b in bits]
    keys = {"fid": "fidelity_drop", "ndcg": "ndcg_drop", "proxy": "proxy"}
    width = max(len(layer["name"]) for layer in report["layers"]) + 2
    head = f"{'layer':<{width}}{'params':>9}{'fisher':>11}" + "".join(f"{c:>11}" for c in cols)

    def cells(curve: dict, suffix: str = "") -> str:
        return "".join(_cell(curve[str(b)][keys[m] + suffix]) for m in ("fid", "ndcg", "proxy") for b in bits)

    lines = [head, "-" * len(head)]
    for layer in report["layers"]:
        lines.append(
            f"{layer['name']:<{width}}{layer['params']:>9}{layer['fisher_trace']:>11.3g}" + cells(layer["curve"])
        )
    lines += ["", f"{'layer type (mean over layers)':<{width}}{'params':>9}{'layers':>11}", "-" * len(head)]
    for t, agg in report["types"].items():
        lines.append(f"{t:<{width}}{agg['params']:>9}{agg['layers']:>11}" + cells(agg["curve"], "_mean"))
    corr = report["correlation"]
    lines += ["", "proxy vs measured drop (Spearman): " + _corr_line(corr["pooled"], "pooled")]
    lines += [_corr_line(corr["per_bits"][str(b)], f"{b} bits") for b in bits]
    fp32, fid = report["fp32"]["dev_ndcg@10"], f"fidelity on {report['fidelity']['texts']} corpus texts"
    if fp32 is None:
        lines += ["", f"no dev nDCG@10 (scan.ndcg=false); {fid}"]
    else:
        dev = f"{report['dev']['queries']} dev queries, {report['dev']['corpus_docs']} records"
        lines += ["", f"fp32 dev nDCG@10 {fp32:.4f} on {dev}; {fid}"]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return f"{'n/a':>11}" if value is None else f"{value:>11.3g}"


def _corr_line(rhos: dict[str, float | None], label: str) -> str:
    fmt = lambda r: "n/a" if r is None else f"{r:+.3f}"  # noqa: E731
    return f"  {label}: fidelity {fmt(rhos['fidelity_drop'])}, nDCG@10 {fmt(rhos['ndcg_drop'])}"
