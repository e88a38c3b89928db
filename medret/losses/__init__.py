"""Training losses for retrievers."""

from medret.losses.infonce import info_nce

__all__ = ["info_nce"]
