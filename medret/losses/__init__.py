"""Training losses for retrievers."""

from medret.losses.distill import similarity_structure, token_cosine
from medret.losses.infonce import info_nce

__all__ = ["info_nce", "similarity_structure", "token_cosine"]
