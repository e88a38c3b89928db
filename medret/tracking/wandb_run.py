"""W&B logging that keeps patient text out unless the user opts in (``logger.log_text=true``)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from medret.config import LoggerConfig
from medret.errors import InputError

log = logging.getLogger(__name__)


class RunTracker:
    """Receives the resolved config, summary metrics and a per-query table of ids and scores."""

    def __init__(self, run: Any | None, log_text: bool, mode: str | None = None):
        self.run = run
        self.log_text = log_text
        self.mode = mode  # the mode the run really uses: offline when online was asked but unreachable

    def describe(self) -> dict[str, Any]:
        """The results.json block naming this run."""
        return {"run_id": self.run.id if self.run else None, "dir": self.run_dir, "mode": self.mode}

    @property
    def run_dir(self) -> str | None:
        return None if self.run is None else str(Path(self.run.dir).parent)

    def log_summary(self, summary: dict[str, float | int | str]) -> None:
        if self.run is not None:
            self.run.summary.update(summary)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_per_query(self, rows: list[dict[str, Any]], texts: dict[str, str] | None) -> None:
        if self.run is None or not rows:
            return
        import wandb

        # the slice tags (a list of rule names, never text) travel as one comma-joined cell
        cols = [c for c in rows[0] if not isinstance(rows[0][c], dict)]
        if self.log_text and texts is not None:
            cols.append("query_text")

        def cell(r: dict[str, Any], c: str) -> Any:
            v = r.get(c, texts.get(r["query_id"]) if c == "query_text" else None)
            return ",".join(map(str, v)) if isinstance(v, list) else v

        data = [[cell(r, c) for c in cols] for r in rows]
        self.run.log({"per_query": wandb.Table(columns=cols, data=data)})

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        """A table of ids and numbers (e.g. per-layer quantization error); never free text."""
        if self.run is None or not rows:
            return
        import wandb

        cols = [c for c in rows[0] if not isinstance(rows[0][c], (list, dict))]
        self.run.log({key: wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def hydra_context() -> tuple[str | None, list[str]]:
    """(sweep id, task overrides) of the running Hydra job; (None, []) outside Hydra or for a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, []
    overrides = list(hc.overrides.task)
    sweep = Path(hc.sweep.dir).name if str(hc.mode) == "RunMode.MULTIRUN" else None
    if sweep is not None:
        sweep = f"{Path(hc.sweep.dir).parent.name}-{sweep}"
    return sweep, overrides


def run_identity(run_dir: Path) -> str:
    """The same run dir always maps to the same W&B run: a requeued or resumed job continues it."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def check_logger(cfg: LoggerConfig) -> None:
    """Logger options, checked before any work (not after a whole run)."""
    if cfg.name not in ("wandb", "none"):
        raise InputError(f"logger.name={cfg.name!r}: expected wandb or none")
    if cfg.name == "wandb" and cfg.mode not in ("online", "offline", "disabled"):
        raise InputError(f"logger.mode={cfg.mode!r}: expected online, offline or disabled")
    if cfg.name == "wandb" and not cfg.init_timeout > 0:
        raise InputError(f"logger.init_timeout={cfg.init_timeout!r}: expected seconds > 0")


def start_tracker(
    cfg: LoggerConfig,
    run_dir: Path,
    config: dict,
    name: str | None = None,
    job_type: str = "evaluate",
    tags: list[str] | None = None,
) -> RunTracker:
    check_logger(cfg)
    if cfg.name == "none":
        return RunTracker(None, False)
    # W&B's side directories default to the user's home; keep them with the run unless set.
    for var, sub in (
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        os.environ.setdefault(var, str(run_dir / "wandb" / sub))
    sweep, overrides = hydra_context()
    # overrides name the run; values of data paths are kept to their last component
    label = " ".join(
        o if "path" not in o.split("=")[0] else f"{o.split('=')[0]}=…/{Path(o.split('=', 1)[1]).name}"
        for o in overrides
        if not o.startswith("hydra.")
    )
    init = {
        "project": cfg.project,
        "entity": cfg.entity,
        "group": cfg.group or sweep,
        "tags": [*cfg.tags, *(tags or [])] or None,
        "name": name or label or None,
        "dir": str(run_dir),
        "config": config,
        "job_type": job_type,
        "id": run_identity(run_dir),
        "resume": "allow",
    }
    run, mode = _init_online(cfg, init) if cfg.mode == "online" else (_init(init, cfg.mode), cfg.mode)
    for metric in ("ndcg@*", "recall@*", "precision@*", "f1@*", "mrr@*", "map@*", "delta/*"):
        run.define_metric(metric, summary="last")
    where = run.url if mode == "online" else run_dir / "wandb"
    log.info("W&B run %s (%s) %s", run.id, mode, where)
    return RunTracker(run, cfg.log_text, mode)


def _init(init: dict[str, Any], mode: str, **settings: Any) -> Any:
    import wandb

    return wandb.init(mode=mode, **init, settings=wandb.Settings(console="off", x_disable_stats=True, **settings))


def _init_online(cfg: LoggerConfig, init: dict[str, Any]) -> tuple[Any, str]:
    """An online run, or, when the server cannot be reached or no login is configured, an offline one
    in the same place (one warning line; synced later): tracking never costs a run its results."""
    import wandb

    reason = "no W&B login configured (wandb login, or WANDB_API_KEY)"
    if has_wandb_login():
        try:  # silent: a failure is reported by the one warning below, not by wandb's own lines
            return _init(init, "online", init_timeout=cfg.init_timeout, silent=True), "online"
        except wandb.errors.Error as e:
            first = (str(e).splitlines() or [""])[0][:200]
            reason = f"the W&B server did not take the run within {cfg.init_timeout:g} s ({type(e).__name__}: {first})"
            wandb.teardown()  # the failed run still holds its id; the offline run reuses it
    run = _init_offline_fallback(init)
    log.warning(
        "logger.mode=online: %s; logging offline instead, sync later with: wandb sync %s",
        reason,
        Path(run.dir).parent,
    )
    return run, "offline"


def _init_offline_fallback(init: dict[str, Any]) -> Any:
    """The offline run after a failed online one. Under load W&B's service may still hold the failed run's
    id for a moment ("run ID ... is in use"): wait a little, and as a last resort take a suffixed id."""
    import wandb

    for wait in (0.0, 1.0, 2.0, 4.0):
        time.sleep(wait)
        try:
            return _init(init, "offline", silent=True)
        except Exception as e:  # wandb's ServerResponseError is a bare Exception
            if "in use" not in str(e):
                raise
            wandb.teardown()
    return _init({**init, "id": f"{init['id']}-offline"}, "offline", silent=True)


def has_wandb_login() -> bool:
    """Whether W&B finds credentials, asked without a prompt (a terminal would otherwise ask mid-run)."""
    import wandb

    try:
        from wandb.sdk.wandb_login import _login  # private, but the one call that never prompts or prints

        return bool(_login(prompt=False, verify=False, _silent=True)[0])
    except (ImportError, TypeError):  # another wandb: let wandb.init decide
        return True
    except wandb.errors.Error:
        return False
