"""The scan's options (``scan.*``) on top of evaluate's config groups, registered as ``sensitivity_schema``."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from medret.config import EvaluateConfig


@dataclass
class ScanConfig:
    bits: list[int] = field(default_factory=lambda: [2, 3, 4, 8])  # widths each layer is tried at, alone
    # split: data.split's queries are the dev queries (SciFact: data.split=train), never data.split=test;
    # holdout: a seeded sample of data.split's queries (MedQuAD has only test); their ids are recorded
    dev: str = "split"
    dev_queries: int | None = 300  # seeded sample of the dev queries (null: all)
    # dev corpus: every judged record of the dev queries + seeded others up to this many (null: whole corpus)
    dev_corpus: int | None = 1000
    fidelity_texts: int = 256  # seeded corpus texts for the label-free measure (embedding cosine to fp32)
    # false: the label-free measure only (what quant=auto's default quant.sensitivity_measure=fidelity reads); no
    # dev queries, no dev-corpus encode per point: what makes a BERT-base scan affordable on a CPU
    ndcg: bool = True
    layers: list[str] = field(default_factory=lambda: ["*"])  # fnmatch over the quantized linears (partial scans)
    # also the word-embedding table, its rows in frequency tiers as quant.embedding_tiers cuts them (ranked by
    # token count in the calibration texts; tier t ends at the cumulative vocabulary share embedding_tiers[t];
    # rows never seen are last): each tier alone at each width, so quant=auto quant.budget_over=model can choose
    # the table's widths with the linears' under one budget over every parameter
    embeddings: bool = False
    embedding_tiers: list[float] = field(default_factory=lambda: [0.02, 0.1, 0.3])


@dataclass
class SensitivityRootConfig(EvaluateConfig):
    scan: ScanConfig = field(default_factory=ScanConfig)


def register_sensitivity_config() -> None:
    ConfigStore.instance().store(name="sensitivity_schema", node=SensitivityRootConfig)
