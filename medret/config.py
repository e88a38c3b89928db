"""Structured configs: one dataclass per config group, registered in Hydra's ConfigStore.

A typo in an override (``data.num_recods=5``) fails at composition because every
group is typed by one of these schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class DataConfig:
    name: str = MISSING  # synthetic | beir | records
    # beir: folder with corpus.jsonl[.gz], queries.jsonl[.gz], qrels/<split>.tsv
    # records: explicit files (JSONL or CSV) below
    path: Optional[str] = None
    split: str = "test"
    corpus_file: Optional[str] = None
    queries_file: Optional[str] = None
    qrels_file: Optional[str] = None
    # synthetic generator
    num_records: int = 2000
    num_queries: int = 200
    seed: int = 13
    # which fields make a document's text ("title text" as BEIR does)
    title_field: str = "title"
    text_field: str = "text"
    # long notes are split into passages of this many tokens (0 = no split: truncate at max_length)
    passage_tokens: int = 0
    passage_stride: int = 0  # tokens shared by consecutive passages
    max_queries: Optional[int] = None  # evaluate only the first N judged queries (quick runs)
    strict: bool = False  # qrels naming unknown ids become an error instead of a warning


@dataclass
class ModelConfig:
    name: str = MISSING
    # HF dir, hub id, sentence-transformers dir, or pkg://<python package> carrying a model dir
    path: str = MISSING
    query_path: Optional[str] = None  # asymmetric: a separate query encoder (MedCPT style)
    revision: Optional[str] = None
    pooling: Optional[str] = None  # mean | cls; None = read from a sentence-transformers dir, else mean
    normalize: Optional[bool] = None  # None = from the sentence-transformers dir, else True
    max_length: Optional[int] = None  # doc tokens; None = sentence_bert_config.json, else 512
    query_max_length: Optional[int] = None  # None = max_length
    query_prefix: str = ""
    doc_prefix: str = ""
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    autocast: str = "auto"  # auto (fp16 on cuda) | fp16 | bf16 | none; CPU always runs fp32
    trust_remote_code: bool = False


@dataclass
class QuantConfig:
    name: str = "none"
    bits: Optional[int] = None


@dataclass
class IndexConfig:
    name: str = MISSING
    factory: str = "Flat"  # a FAISS index_factory string
    device: str = "auto"  # auto | cpu | cuda
    search_batch_size: int = 4096
    latency_sample: int = 200  # single-query searches timed for p50/p95 latency


@dataclass
class LoggerConfig:
    name: str = MISSING  # wandb | none
    mode: str = "offline"  # online | offline | disabled
    project: str = "medret"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    log_text: bool = False  # opt in before any record or query text reaches W&B


@dataclass
class EvalConfig:
    k_values: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 100])
    # cap on passages searched per query when passages fold into records
    passage_fanout: int = 8


@dataclass
class EvaluateConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    write_text: bool = False  # query text in per_query.jsonl (run dir only, never W&B)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="evaluate_schema", node=EvaluateConfig)
