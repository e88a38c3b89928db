"""Vector indexes: FAISS factory strings behind named presets, on GPU when one is present."""

from medret.index.faiss_index import SearchIndex, build_index

__all__ = ["SearchIndex", "build_index"]
