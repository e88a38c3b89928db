"""Seeded samples of unlabelled corpus texts (never queries, never labels): the one place they are drawn.

- ``calibration_corpus``: what a calibrated quantization reads (Fisher weights, GPTQ's Hessians, refinement's
  targets), so that evaluate, training and the sensitivity scan quantize a layer alike.
- ``seeded_sample``: at most ``n`` of a list (the runtime's static-int8 calibration takes it too).
- ``spread_sample``: seeded texts from the whole corpus, in corpus order (the runtime's calibration texts,
  the scan's fidelity texts).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np


def seeded_sample(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """A seeded sample of at most ``n`` texts (the same sample for the same list)."""
    return random.Random(seed).sample(list(texts), n) if len(texts) > n else list(texts)


def calibration_corpus(doc_texts: Sequence[str], cfg) -> list[str]:
    """A seeded sample of ``cfg.calibration_texts`` from the first records (``cfg.calibration_seed``)."""
    pool = list(doc_texts[: max(cfg.calibration_texts * 4, 256)])
    return seeded_sample(pool, cfg.calibration_texts, getattr(cfg, "calibration_seed", 0))


def spread_picks(num_docs: int, n: int, seed: Any) -> np.ndarray:
    """At most ``n`` record positions drawn from the whole corpus by ``np.random.default_rng(seed)``, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_docs, size=min(n, num_docs), replace=False))


def spread_sample(doc_texts: Sequence[str], n: int, seed: Any) -> list[str]:
    """The texts at ``spread_picks``: a seeded sample of the whole corpus, in corpus order."""
    return [doc_texts[int(i)] for i in spread_picks(len(doc_texts), n, seed)]
