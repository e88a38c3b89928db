"""The one wrapper both entry scripts run a task through: bad input is one ``error:`` line and exit 2;
the value returned to Hydra (what a sweeper optimises) is the metric named by ``eval.optimize_metric``."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from medret.errors import InputError

log = logging.getLogger("medret")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def run_task(task: Callable[[DictConfig, Path], dict[str, Any]], cfg: DictConfig) -> float:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = task(cfg, output_dir)
    except InputError as e:
        report_error(str(e))
        sys.exit(2)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        # a write outside medret's atomic writers (a library saving its own state): still one line
        report_error(f"{e.filename or output_dir}: {e.strerror} (free space or choose another folder)")
        sys.exit(2)
    return objective(results, cfg.eval.optimize_metric)


def report_error(message: str) -> None:
    """The one ``error:`` line on stderr; the run's log file gets it too, the console not a second time."""
    print(f"error: {message}", file=sys.stderr)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def objective(results: dict[str, Any], metric: str) -> float:
    """An evaluate's metric, or a training run's best dev value of it; 0.0 when a run has none
    (an encode-only shard task, training without a dev split)."""
    value = results.get("metrics", {}).get(metric, results.get(f"best_dev_{metric}"))
    return float(value) if value is not None else 0.0
