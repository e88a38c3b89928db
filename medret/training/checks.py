"""Every training option checked before anything heavy, and the pairs loaded and checked against them."""

from __future__ import annotations

import logging
import math

from medret.cache.options import check_cache_options
from medret.config import TrainConfig, TrainRootConfig
from medret.data import RetrievalDataset, check_data_options, load_dataset
from medret.errors import InputError
from medret.index import check_index_options
from medret.metrics import check_metric
from medret.models.encoder import check_model_options
from medret.quant import scheme
from medret.quant.apply import drop_unused_bits
from medret.tracking import check_logger
from medret.training.kinds import train_kind
from medret.training.pairs import PairSplit, split_pairs

log = logging.getLogger(__name__)


def check_train_numbers(t: TrainConfig) -> None:
    """Step counts, rates and sizes: a zero or NaN here would export an untouched model or fail mid-run."""
    for name in ("max_steps", "batch_size", "grad_accum", "dev_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(t, name) < 1:
            raise InputError(f"train.{name}={getattr(t, name)}: expected a positive integer")
    for name in ("warmup_steps", "hard_negatives"):
        if getattr(t, name) < 0:
            raise InputError(f"train.{name}={getattr(t, name)}: expected 0 or more")
    for name in ("lr", "temperature"):
        if not (math.isfinite(getattr(t, name)) and getattr(t, name) > 0):
            raise InputError(f"train.{name}={getattr(t, name)}: expected a finite number > 0")
    for name in ("weight_decay", "max_grad_norm"):  # max_grad_norm=0: no clipping
        if not (math.isfinite(getattr(t, name)) and getattr(t, name) >= 0):
            raise InputError(f"train.{name}={getattr(t, name)}: expected a finite number >= 0")
    if not 0 <= t.dev_fraction < 1:
        raise InputError(f"train.dev_fraction={t.dev_fraction}: expected 0 <= fraction < 1")


def check_options(cfg: TrainRootConfig) -> None:
    t = cfg.train
    scheme(cfg.quant.name)  # an unknown scheme is blamed on quant=, whatever the kind
    kind = train_kind(t.name)
    check_data_options(cfg.data)
    check_model_options(cfg.model)
    check_train_numbers(t)
    check_logger(cfg.logger)
    # hard negatives and dev scores go through the index and the embedding cache, as in evaluate
    check_index_options(cfg.index)
    check_cache_options(cfg)
    drop_unused_bits(cfg.quant)
    if cfg.quant.side != "both":  # training quantizes (or adapts) every encoder it trains
        raise InputError(f"quant.side={cfg.quant.side}: train.py quantizes both encoders; use quant.side=both")
    check_metric("eval.optimize_metric", cfg.eval.optimize_metric, sorted({*cfg.eval.k_values, 10}))
    if t.batch_size < 2 and t.hard_negatives == 0:
        raise InputError(
            f"train.batch_size={t.batch_size}: in-batch negatives need at least 2 pairs per batch "
            "(or set train.hard_negatives)"
        )
    kind.check(cfg)


def load_pairs(cfg: TrainRootConfig) -> tuple[RetrievalDataset, PairSplit, list[int]]:
    ks = sorted(set(int(k) for k in cfg.eval.k_values) | {10})
    data = load_dataset(cfg.data)
    if data.unknown_qrels["docs"]:  # a training positive that is not in the corpus is a broken pair
        raise InputError(
            f"{data.sources.get('qrels', data.name)}: {data.unknown_qrels['docs']} positives name "
            f"records missing from the corpus {data.sources.get('corpus', '')}".rstrip()
        )
    split = split_pairs(data, cfg.train.dev_fraction, cfg.seed)
    if len(split.pairs) < cfg.train.batch_size:
        raise InputError(f"train.batch_size={cfg.train.batch_size}: only {len(split.pairs)} training pairs")
    if split.dev_queries and max(ks) > data.num_docs:
        raise InputError(f"eval.k_values: k={max(ks)} is larger than the corpus ({data.num_docs} documents)")
    log.info(
        "train: %d pairs from %d queries, %d dev queries",
        len(split.pairs),
        len(split.train_queries),
        len(split.dev_queries),
    )
    return data, split, ks
