"""Acceptance profiles: is a quantized retriever acceptable for a given application?

A profile (``conf/eval/profile/<name>.yaml``, chosen with ``eval.profiles``) is a list of criteria; each names a
metric at a cut-off (``ndcg@10``; the k must be in ``eval.k_values``), an ABSOLUTE non-inferiority margin
``max_drop`` (the fp32 mean minus the quantized mean may be at most this, on the metric's 0..1 scale) and the
query slices it applies to: ``all``, a named slice (``numeric``, ``category:treatment``), ``critical`` (every
automatic slice of ``medret.evaluation.slices``) or ``category:*`` (every category slice of the data).

Every criterion x slice row gets a paired percentile-bootstrap CI of the per-query delta (quantized - fp32) and the
three outcomes of the single gate (``fidelity.verdict``): accept when the CI's worst drop is within the margin,
reject when even its best drop is beyond it, else inconclusive, with the queries a decision would need. A slice
with fewer than ``eval.min_slice_queries`` queries is ``too_small``: reported, never judged.

Family-wise error: a profile with m judged rows uses Bonferroni-adjusted intervals at level 1 - 0.05/m, and the
reported ``ci95`` is that adjusted interval. Why Bonferroni and not Holm: the profile rejects when ANY row rejects,
and Holm's first step compares the smallest one-sided p-value with alpha/m -- exactly Bonferroni -- so the profile
outcome is the same under both; Holm would only relabel further rows after the first rejection. Bonferroni in
addition gives simultaneous intervals, so every row's accept statement holds jointly too (a false accept of a harmful
change matters as much in clinical use as a false alarm), and a one-row profile reproduces the existing gate's 95%
CI and verdict exactly. A harmless change (true drop within every margin) is then rejected with probability at most
0.025 (one-sided tails of a two-sided 95% family); tests/test_profiles.py checks this by simulation. The percentile
tail at level alpha/(2m) rests on about ``n_resamples * 0.025 / m`` resamples: raise eval.bootstrap_resamples for
steadier bounds on profiles with many rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from medret.config import EvalConfig
from medret.errors import InputError
from medret.evaluation.fidelity import verdict
from medret.evaluation.slices import AUTO_SLICES
from medret.metrics import bootstrap_ci, check_metric

PROFILE_DIR = Path(__file__).resolve().parents[2] / "conf" / "eval" / "profile"
FAMILY_ALPHA = 0.05  # two-sided, over a profile's judged rows: the family's intervals are simultaneous 95% CIs
CORRECTION = "bonferroni"


@dataclass(frozen=True)
class Criterion:
    metric: str  # <metric>@<k>
    max_drop: float  # absolute: fp32 mean - quantized mean may be at most this
    slices: tuple[str, ...]  # as written: all | critical | category:* | a named slice


@dataclass(frozen=True)
class Profile:
    name: str
    criteria: tuple[Criterion, ...]
    description: str = ""
    path: str = ""
    skipped: tuple[str, ...] = ()  # shipped criteria whose k a narrowed eval.k_values does not compute


def profile_file(name: str) -> Path:
    """A name in conf/eval/profile/, or the path of a YAML file (a user's own profile kept elsewhere)."""
    if name.endswith((".yaml", ".yml")):
        return Path(name).expanduser()
    return PROFILE_DIR / f"{name}.yaml"


def load_profiles(names: list[str], ks: list[int], skip_missing_k: bool = False) -> list[Profile]:
    """Read and check every named profile: any problem is one InputError line naming the file and field.
    ``skip_missing_k``: a criterion whose k is not in ``ks`` is left out (noted in ``skipped``), not an error."""
    ks = sorted(set(int(k) for k in ks))
    return [_load_profile(name, ks, skip_missing_k) for name in dict.fromkeys(str(n) for n in names)]


def _load_profile(name: str, ks: list[int], skip_missing_k: bool) -> Profile:
    path = profile_file(name)
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise InputError(
            f"eval.profiles: unknown profile {name!r}: no file {path} (known: {', '.join(known)}; "
            "or give the path of a .yaml file)"
        )
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise InputError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("criteria"), list) or not doc["criteria"]:
        raise InputError(f"{path}: expected a mapping with a non-empty list 'criteria' of {{metric, max_drop, slices}}")
    unknown = sorted(set(doc) - {"criteria", "description"})
    if unknown:
        raise InputError(f"{path}: unknown key {unknown[0]!r} (expected criteria, description)")
    criteria = [_criterion(c, f"{path}: criteria[{i}]", ks, skip_missing_k) for i, c in enumerate(doc["criteria"])]
    skipped = [c.metric for c in criteria if _k(c.metric) not in ks]
    kept = tuple(c for c in criteria if c.metric not in skipped)
    return Profile(path.stem, kept, str(doc.get("description") or ""), str(path), tuple(dict.fromkeys(skipped)))


def _k(metric: str) -> int:
    return int(metric.partition("@")[2])


def _criterion(entry: Any, where: str, ks: list[int], skip_missing_k: bool) -> Criterion:
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a mapping with metric, max_drop and slices")
    unknown = sorted(set(entry) - {"metric", "max_drop", "slices"})
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (expected metric, max_drop, slices)")
    metric = entry.get("metric")
    k = str(metric).partition("@")[2]
    # skip_missing_k: any computable cut-off passes here; load_profiles leaves it out
    check_metric(f"{where}.metric", str(metric), [*ks, int(k)] if skip_missing_k and k.isdigit() else ks)
    drop = entry.get("max_drop")
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not (math.isfinite(drop) and drop >= 0):
        raise InputError(
            f"{where}.max_drop={drop!r}: expected a finite absolute drop >= 0 (e.g. 0.01: one point of {metric})"
        )
    slices = entry.get("slices", ["all"])
    slices = [slices] if isinstance(slices, str) else slices
    if not isinstance(slices, list) or not slices:
        raise InputError(f"{where}.slices={slices!r}: expected a non-empty list of slice names")
    for s in slices:
        check_slice_name(f"{where}.slices", s)
    return Criterion(str(metric), float(drop), tuple(dict.fromkeys(str(s) for s in slices)))


def check_slice_name(where: str, name: Any) -> None:
    ok = isinstance(name, str) and (
        name in ("all", "critical", "category:*")
        or name in AUTO_SLICES
        or (name.startswith("category:") and len(name) > len("category:"))
    )
    if not ok:
        raise InputError(
            f"{where}: unknown slice {name!r} (expected all, critical, {', '.join(AUTO_SLICES)}, "
            "category:<value> or category:*)"
        )


def check_profile_categories(profiles: list[Profile], categories: set[str]) -> None:
    """A named category slice must exist in the data (checked once the data is read, before the model loads)."""
    for p in profiles:
        for c in p.criteria:
            for s in c.slices:
                if s.startswith("category:") and s != "category:*" and s.removeprefix("category:") not in categories:
                    have = ", ".join(sorted(categories)[:20]) or "none: set data.query_category_field"
                    raise InputError(f"{p.path}: unknown slice {s!r}: the data's query categories are {have}")


def expand_slices(spec: tuple[str, ...], slices: dict[str, np.ndarray]) -> list[str]:
    """Slice names a criterion covers: ``critical`` is every auto slice, ``category:*`` every category slice."""
    out: list[str] = []
    for s in spec:
        if s == "critical":
            out += list(AUTO_SLICES)
        elif s == "category:*":
            out += sorted(n for n in slices if n.startswith("category:")) or [s]
        else:
            out.append(s)
    return list(dict.fromkeys(out))


def judge_profiles(
    profiles: list[Profile],
    base_per_query: dict[str, np.ndarray],
    new_per_query: dict[str, np.ndarray],
    slices: dict[str, np.ndarray],
    min_queries: int,
    n_resamples: int,
    seed: int,
) -> dict[str, dict]:
    """{profile name: outcome, decided_by, correction, criteria rows}; arrays aligned by query."""
    return {
        p.name: judge_profile(p, base_per_query, new_per_query, slices, min_queries, n_resamples, seed)
        for p in profiles
    }


def judge_profile(p: Profile, base, new, slices, min_queries: int, n_resamples: int, seed: int) -> dict:
    rows, skipped = [], list(p.skipped)
    for c in p.criteria:
        if c.metric not in base or c.metric not in new:  # k clipped to a corpus smaller than it
            skipped.append(c.metric)
            continue
        for s in expand_slices(c.slices, slices):
            mask = slices.get(s)
            n = int(mask.sum()) if mask is not None else 0
            d = np.asarray(new[c.metric], np.float64) - np.asarray(base[c.metric], np.float64)
            fp32 = np.asarray(base[c.metric], np.float64)
            rows.append((c, s, d[mask] if n else d[:0], fp32[mask] if n else fp32[:0]))
    judged = sum(len(d) >= max(min_queries, 2) for _, _, d, _ in rows)
    level = 1 - FAMILY_ALPHA / max(judged, 1)
    out = [_row(c, s, d, fp32, level, min_queries, n_resamples, seed) for c, s, d, fp32 in rows]
    outcome, decided_by = profile_outcome(out)
    result = {
        "outcome": outcome,
        "decided_by": decided_by,
        "correction": CORRECTION,
        "ci_level": level,
        "judged_rows": judged,
        "criteria": out,
    }
    if skipped:
        result["skipped"] = skipped  # metrics whose k the corpus cannot reach: not judged
    return result


def _row(c: Criterion, s: str, d: np.ndarray, fp32: np.ndarray, level, min_queries, n_resamples, seed) -> dict:
    n = len(d)
    row: dict[str, Any] = {"metric": c.metric, "max_drop": c.max_drop, "slice": s, "n": n}
    row["fp32"] = float(fp32.mean()) if n else None
    row["delta"] = float(d.mean()) if n else None
    z = float(stats.norm.ppf(1 - (1 - level) / 2))
    if n < max(min_queries, 2):
        need = queries_to_decide(d, c.max_drop, z) if n >= 2 else None
        row.update(ci95=None, outcome="too_small", queries_to_decide=max(min_queries, need or 0))
        return row
    lo, hi = bootstrap_ci(d, confidence=level, n_resamples=n_resamples, seed=seed)
    row["ci95"] = [lo, hi]
    row["outcome"] = verdict({"delta": row["delta"], "ci95": [lo, hi]}, d, c.metric, c.max_drop)["outcome"]
    row["queries_to_decide"] = n if row["outcome"] != "inconclusive" else queries_to_decide(d, c.max_drop, z)
    return row


def queries_to_decide(d: np.ndarray, max_drop: float, z: float) -> int | None:
    """Queries like these the adjusted CI needs to clear the margin on one side: z sd / sqrt(n) must fit within
    |max_drop - drop| (fidelity.queries_to_decide at the family's level). None when the drop sits on the margin."""
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    gap = abs(max_drop + float(d.mean()))
    if gap == 0.0:
        return None
    return max(len(d), int(np.ceil((z * sd / gap) ** 2)))


def profile_outcome(rows: list[dict]) -> tuple[str, str | None]:
    """reject if any row rejects (the one furthest beyond its margin decides), accept if every judged row
    accepts (the one closest to its margin decides), else inconclusive (the one needing most queries)."""
    judged = [r for r in rows if r["outcome"] != "too_small"]
    name = lambda r: f"{r['metric']} on {r['slice']}"  # noqa: E731
    rejects = [r for r in judged if r["outcome"] == "reject"]
    if rejects:
        return "reject", name(max(rejects, key=lambda r: -r["ci95"][1] - r["max_drop"]))
    if judged and all(r["outcome"] == "accept" for r in judged):
        return "accept", name(min(judged, key=lambda r: r["max_drop"] + r["ci95"][0]))
    open_rows = [r for r in judged if r["outcome"] == "inconclusive"]
    if not open_rows:
        return "inconclusive", None  # nothing judged: every slice too small
    return "inconclusive", name(max(open_rows, key=lambda r: r["queries_to_decide"] or math.inf))


def slice_summary(slices: dict[str, np.ndarray]) -> dict[str, dict]:
    """results.json["slices"]: each slice's size and whether it is a critical (automatic) slice."""
    return {s: {"num_queries": int(np.sum(m)), "critical": s in AUTO_SLICES} for s, m in slices.items()}


def check_profiles(ev: EvalConfig) -> list[Profile]:
    """eval.profiles and eval.min_slice_queries: checked with the other options, before any data or model.
    The shipped default profiles follow a narrowed eval.k_values (criteria it cannot compute are skipped, and
    say so); a profile the user chose must fit the list."""
    if isinstance(ev.min_slice_queries, bool) or int(ev.min_slice_queries) < 1:
        raise InputError(f"eval.min_slice_queries={ev.min_slice_queries}: expected a positive count (e.g. 30)")
    defaults = EvalConfig()
    follow = list(ev.profiles) == defaults.profiles and sorted(ev.k_values) != sorted(defaults.k_values)
    return load_profiles(list(ev.profiles), list(ev.k_values), skip_missing_k=follow)
