"""Contrastive fine-tuning of a retriever with accelerate: checkpoints that resume identically,
dev evaluation through the shared retrieval layer, and export of the best model.

The kinds (``train=contrastive|qat|qlora|distill``) differ in how they load their data, prepare, step, score,
keep and finish the model: ``medret.training.kinds``. Options: ``checks``; session and checkpoints:
``session``; steps: ``loop``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm.auto import tqdm

from medret.cache import cache_root
from medret.config import TrainRootConfig, typed
from medret.errors import InputError
from medret.models.encoder import check_model_folders
from medret.quant import scheme
from medret.storage import write_json
from medret.tracking import start_tracker
from medret.training.checks import check_options
from medret.training.kinds import train_kind
from medret.training.loop import mine_hard_negatives
from medret.training.session import checkpoint, make_session, resume

log = logging.getLogger(__name__)


def run_train(cfg: TrainRootConfig | DictConfig, run_dir: Path) -> dict[str, Any]:
    cfg, run_dir = typed(cfg, TrainRootConfig), Path(run_dir)
    scheme(cfg.quant.name)  # an unknown scheme is blamed on quant=, whatever the kind
    kind = train_kind(cfg.train.name)
    cfg = kind.resolve(cfg)
    t, metric = cfg.train, kind.dev_metric(cfg)
    check_options(cfg)
    check_model_folders(cfg.model)
    data, split, ks = kind.load(cfg)
    s = make_session(cfg, data)
    hard = mine_hard_negatives(s, data, split, cache_root(cfg.cache.dir)) if t.hard_negatives else {}
    state = resume(s, run_dir / "checkpoints", metric)
    tracker = start_tracker(cfg.logger, run_dir, dataclasses.asdict(cfg), job_type="train")
    t0 = time.perf_counter()
    bar = tqdm(total=t.max_steps, initial=state["step"], desc="train", unit="step", mininterval=2.0)
    while state["step"] < t.max_steps:
        loss = kind.step(s, data, split, hard, state["step"])
        state["step"] = step = state["step"] + 1
        record = {"step": step, "loss": loss, "lr": float(s.sched.get_last_lr()[0])}
        if kind.has_dev(split) and (step % t.dev_every == 0 or step == t.max_steps):
            record.update({f"dev_{k}": v for k, v in kind.dev(s, data, split, ks, metric).items()})
            if state[f"best_dev_{metric}"] is None or record[f"dev_{metric}"] > state[f"best_dev_{metric}"]:
                state[f"best_dev_{metric}"], state["best_step"] = record[f"dev_{metric}"], step
                s.kind.keep_best(s, run_dir, step)
            # in the log too: the bar's line is overwritten, and the run's log file keeps no tqdm output
            log.info(
                "step %d: loss %.4f, dev %s %.4f (best %.4f at step %d)",
                step,
                loss,
                metric,
                record[f"dev_{metric}"],
                state[f"best_dev_{metric}"],
                state["best_step"],
            )
        state["history"].append(record)
        tracker.log_metrics(record, step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            checkpoint(s, run_dir / "checkpoints", state)
    bar.close()
    results = {
        "steps": state["step"],
        "best_step": state["best_step"],
        f"best_dev_{metric}": state[f"best_dev_{metric}"],
        "final_loss": state["history"][-1]["loss"] if state["history"] else None,
        **kind.counts(split),
        "hard_negatives": t.hard_negatives,
        "mixed_precision": s.mixed_precision,
        "seconds": time.perf_counter() - t0,
        "best_model": str(run_dir / "best_model"),
        "quant": s.kind.finish(s, run_dir, state),
        "history": state["history"],
        "config": dataclasses.asdict(cfg),
        "wandb": tracker.describe(),
    }
    write_json(run_dir / "train_results.json", results)  # before the tracker's last calls: they cannot lose it
    tracker.log_summary({k: v for k, v in results.items() if isinstance(v, (int, float)) and v is not None})
    tracker.finish()
    if math.isnan(results["final_loss"] or 0.0):
        raise InputError("training diverged: the loss is NaN (lower train.lr)")
    log.info(
        "trained %d steps, best dev %s %s at step %s",
        state["step"],
        metric,
        state[f"best_dev_{metric}"],
        state["best_step"],
    )
    return results
