"""Evaluation runs: the end-to-end pipeline and its atomically written outputs."""

from medret.evaluation.pipeline import run_evaluate

__all__ = ["run_evaluate"]
