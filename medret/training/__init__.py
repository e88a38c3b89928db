"""Fine-tuning retrievers: contrastive training with checkpoints, dev evaluation and export."""

from medret.training.trainer import run_train

__all__ = ["run_train"]
