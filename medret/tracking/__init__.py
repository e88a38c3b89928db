"""Experiment tracking and run outputs: W&B (online, offline or disabled) or nothing, results.json and the
mapping between the two."""

from medret.tracking.wandb_run import RunTracker, check_logger, start_tracker

__all__ = ["RunTracker", "check_logger", "start_tracker"]
