"""Cut-offs that follow ``eval.k_values``: the metric options a user left at their default, and the headline
a run's last log line prints. Narrowing the k list alone (``eval.k_values=[1,3,5]``) then just works."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("medret")

HEADLINE_K = 10  # the cut-off a clinician reads first; the list's largest k at or below it stands in
CUTOFF_OPTIONS = ("gate_metric", "optimize_metric")  # eval options that name <metric>@<k>


def headline_k(ks: Iterable[int]) -> int:
    """The largest k <= 10 in the list (the smallest k when every k is above 10)."""
    ks = sorted({int(k) for k in ks})
    small = [k for k in ks if k <= HEADLINE_K]
    return small[-1] if small else ks[0]


def headline(metrics: Mapping[str, float], ks: Iterable[int]) -> str:
    """'nDCG@10 0.6450  R@100 0.9000  P@10 0.0800' at the cut-offs the run computed (the defaults' line is
    unchanged); a metric the run lacks prints as '-', never as nan."""
    ks = sorted({int(k) for k in ks})
    k, top = headline_k(ks), ks[-1]
    parts = (("nDCG", f"ndcg@{k}"), ("R", f"recall@{top}"), ("P", f"precision@{k}"))
    return "  ".join(f"{label}@{m.split('@')[1]} " + _value(metrics.get(m)) for label, m in parts)


def _value(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def follow_k_values(ev: Any) -> dict[str, str]:
    """Metric options left at their default whose cut-off is not in ``ev.k_values`` follow the list: the same
    metric at ``headline_k`` (a warning says so). Returns {option: new value}. A value the user set to
    something else is left for check_metric to reject (one error line naming the option)."""
    from medret.config import EvalConfig  # lazily: metrics is imported by much that config is not

    defaults = EvalConfig()
    ks = sorted({int(k) for k in ev.k_values})
    changed = {}
    for opt in CUTOFF_OPTIONS:
        value, default = getattr(ev, opt), getattr(defaults, opt)
        name, _, k = str(value).partition("@")
        if value != default or not k.isdigit() or int(k) in ks:
            continue
        changed[f"eval.{opt}"] = new = f"{name}@{headline_k(ks)}"
        log.warning(
            "eval.%s: the default %r is not in eval.k_values=%s; %r instead (set it to choose)", opt, value, ks, new
        )
        setattr(ev, opt, new)
    return changed
