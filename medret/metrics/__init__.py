"""IR metrics (trec_eval definitions) per query and mean, with bootstrap confidence intervals."""

from medret.metrics.options import follow_k_values, headline, headline_k
from medret.metrics.ranking import (
    METRIC_NAMES,
    bootstrap_ci,
    check_metric,
    evaluate_ranked,
    evaluate_run,
    mean_metrics,
    paired_delta_ci,
)

__all__ = [
    "METRIC_NAMES",
    "bootstrap_ci",
    "check_metric",
    "evaluate_ranked",
    "evaluate_run",
    "follow_k_values",
    "headline",
    "headline_k",
    "mean_metrics",
    "paired_delta_ci",
]
