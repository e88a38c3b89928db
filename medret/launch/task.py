"""The one wrapper both entry scripts run a task through: bad input is one ``error:`` line and exit 2;
the value returned to Hydra (what a sweeper optimises) is the metric named by ``eval.optimize_metric``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from medret.errors import InputError

log = logging.getLogger("medret")


def run_task(task: Callable[[DictConfig, Path], dict[str, Any]], cfg: DictConfig) -> float:
    try:
        results = task(cfg, Path(HydraConfig.get().runtime.output_dir))
    except InputError as e:
        log.error("error: %s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return objective(results, cfg.eval.optimize_metric)


def objective(results: dict[str, Any], metric: str) -> float:
    """An evaluate's metric, or a training run's best dev value of it; 0.0 when a run has none
    (an encode-only shard task, training without a dev split)."""
    value = results.get("metrics", {}).get(metric, results.get(f"best_dev_{metric}"))
    return float(value) if value is not None else 0.0
