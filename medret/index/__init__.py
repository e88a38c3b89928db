"""Vector indexes: FAISS factory strings behind named presets, on GPU when one is present."""

from medret.index.faiss_index import (
    SearchIndex,
    build_index,
    check_gpu_limits,
    check_index_options,
    exact_topk,
    factory_string,
    recall_vs_exact,
)

__all__ = [
    "SearchIndex",
    "build_index",
    "check_gpu_limits",
    "check_index_options",
    "exact_topk",
    "factory_string",
    "recall_vs_exact",
]
