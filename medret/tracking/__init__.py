"""Experiment tracking: W&B (online, offline or disabled) or nothing."""

from medret.tracking.wandb_run import RunTracker, start_tracker

__all__ = ["RunTracker", "start_tracker"]
