"""Structured configs: one dataclass per config group, registered in Hydra's ConfigStore.

A typo in an override (``data.num_recods=5``) fails at composition because every
group is typed by one of these schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

T = TypeVar("T")


@dataclass
class DataConfig:
    name: str = MISSING  # synthetic | beir | records
    # beir: folder with corpus.jsonl[.gz], queries.jsonl[.gz], qrels/<split>.tsv
    # records: explicit files (JSONL or CSV) below
    path: str | None = None
    split: str = "test"
    corpus_file: str | None = None
    queries_file: str | None = None
    qrels_file: str | None = None
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
    max_queries: int | None = None  # evaluate only the first N judged queries (quick runs)
    strict: bool = False  # qrels naming unknown ids become an error instead of a warning
    # a query field (dotted path, e.g. metadata.qtype) whose value names each query's category slice
    query_category_field: str | None = None


@dataclass
class ModelConfig:
    name: str = MISSING
    # HF dir, hub id, sentence-transformers dir, or pkg://<python package> carrying a model dir
    path: str = MISSING
    query_path: str | None = None  # asymmetric: a separate query encoder (MedCPT style)
    revision: str | None = None
    pooling: str | None = None  # mean | cls; None = read from a sentence-transformers dir, else mean
    normalize: bool | None = None  # None = from the sentence-transformers dir, else True
    max_length: int | None = None  # doc tokens; None = sentence_bert_config.json, else 512
    query_max_length: int | None = None  # None = max_length
    query_prefix: str = ""
    doc_prefix: str = ""
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    autocast: str = "auto"  # auto (fp16 on cuda) | fp16 | bf16 | none; CPU always runs fp32
    trust_remote_code: bool = False
    adapter: str | None = None  # a train=qlora best_adapter dir: LoRA attached after quantization
    # a saved quantized model.path is judged against this fp32 model; None = the source its manifest records
    reference_path: str | None = None


@dataclass
class QuantConfig:
    # none | fp16 | bf16 | bnb_int8 | bnb_nf4 | bnb_fp4 | uniform | kmeans | nf | log | companding
    # | fisher_kmeans | outliers | auto (medret.quant.registry; each scheme declares the options below it reads)
    name: str = "none"
    bits: int | None = None  # 2..8 for the custom schemes
    granularity: str = "group"  # tensor | channel | group (group_size weights of a row) | rows (group_size rows)
    group_size: int = 64
    symmetric: bool = True  # uniform: absmax (True) or min/max (False)
    mu: float = 255.0  # companding
    kmeans_iters: int = 25
    base: str | None = None  # outliers: the scheme that quantizes the dense part
    outlier_fraction: float = 0.0  # keep this fraction of largest-|w| weights in fp16 (any custom scheme)
    # seeded sample of unlabelled corpus texts for every calibrated step: Fisher weights (fisher_kmeans), GPTQ's
    # Hessians (method=gptq), refinement's fp32 targets (refine_steps)
    calibration_texts: int = 64
    calibration_seed: int = 0  # which sample: another seed shows how much a result owes to its calibration draw
    # how weights are rounded to the scheme's grid (medret.quant.registry's methods): rtn (round-to-nearest) |
    # gptq (Hessian error compensation, any custom level set) | hqq (half-quadratic fit of scale and zero, the hqq
    # package; uniform asymmetric)
    method: str = "rtn"
    gptq_damp: float = 0.01  # gptq: added to the Hessian diagonal, as a fraction of its mean
    act_order: bool = False  # gptq: columns in decreasing Hessian diagonal; group grids fitted up front
    # after rounding (any method): Adam steps fitting the stored floats (scales, offsets, k-means codebooks), the
    # quantized layers' biases and the LayerNorms so token outputs match fp32 on the calibration texts; codes
    # and bits unchanged. 0 = off
    refine_steps: int = 0
    refine_lr: float = 1e-3
    # before rounding (custom schemes, any method): none | hadamard (each linear's inputs rotated by a seeded
    # random-sign block Hadamard, W x = (W R^T)(R x), so outlier columns spread; medret.quant.rotate). Stores a
    # seed, no bits; per_forward decoding rotates the inputs at run time, decode=once folds R back
    rotate: str = "none"
    rotate_seed: int = 0  # which random signs (each layer's own, drawn from this seed and its name)
    # bitsandbytes
    threshold: float = 6.0  # LLM.int8 outlier threshold
    blocksize: int = 64
    double_quant: bool = False
    compute_dtype: str = "float32"
    # which nn.Linear modules (fnmatch on module names); LayerNorm is never touched
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=lambda: ["pooler.*"])
    # per-module overrides: {pattern: {bits: 8}} or {pattern: {name: none}} (mixed precision)
    overrides: dict[str, Any] = field(default_factory=dict)
    save_dir: str | None = None  # write the quantized model here (safetensors); evaluate loads it
    embeddings: bool = False  # also quantize the word-embedding table (row-wise groups; bnb's own modules)
    # quant.embeddings=true, custom schemes: the table's rows in frequency tiers (medret.quant.embedding_tiers).
    # Rows ranked by how often the corpus calibration texts use their token; tier t (most frequent first) holds
    # rows up to the cumulative share embedding_tiers[t] of the vocabulary and is stored at embedding_bits[t];
    # a row never seen is in the last tier. e.g. [4,3,2] with [0.02,0.1]; [2] alone: every row at 2 bits.
    # null: every row at the run's width (as before)
    embedding_bits: list[int] | None = None
    embedding_tiers: list[float] | None = None
    # custom schemes: decode the packed weights once after quantizing (runs at fp32 speed), or on every
    # forward (per_forward: only the packed codes stay resident; for memory measurements)
    decode: str = "once"
    # quant=auto: bits per layer from a sensitivity scan (python -m medret.sensitivity), under this budget of
    # average effective bits per parameter; measure = which scanned drop is minimised (fidelity | ndcg)
    target_bits: float | None = None
    sensitivity: str | None = None
    sensitivity_measure: str = "fidelity"
    # quant=auto on another grid than the scan's, e.g. {name: kmeans, granularity: channel}: each width priced by
    # what this grid stores, the drops still the scan's (an approximation the evaluate run then measures)
    grid: Any = None  # a mapping (Any: so the command line can set it without a leading +)
    # quant=auto: what target_bits averages over: linears (the scanned linears, as before) | model (every parameter
    # of the model: the word-embedding table's tiers chosen with the linears, the rest counted as stored)
    budget_over: str = "linears"
    # which encoder is quantized: both | query | doc. One side only (a query/doc pair, or a symmetric model whose
    # quantized side gets its own copy): the other side runs fp32 and reuses the fp32 baseline's cached embeddings
    side: str = "both"


@dataclass
class IndexConfig:
    name: str = MISSING
    # a FAISS index_factory string, or "binary" (sign bits, Hamming search, exact float rescoring)
    factory: str = "Flat"
    device: str = "auto"  # auto | cpu | cuda
    m: int = 48  # PQ sub-quantizers (must divide the embedding dim)
    nbits: int = 8  # PQ bits per sub-quantizer
    nlist: int = 256  # IVF lists
    nprobe: int = 16  # IVF lists visited per query
    opq: bool = False  # rotate with OPQ before IVF-PQ
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 200
    rescore_multiplier: int = 10  # binary: Hamming candidates = k x this, rescored exactly
    train_size: int = 100_000  # vectors used to train IVF/PQ/SQ (first ones of the corpus)
    gpu_shard: bool = True  # multi-GPU: shard the index across GPUs (else replicate)
    search_batch_size: int = 4096
    latency_sample: int = 200  # single-query searches timed for p50/p95 latency


@dataclass
class RuntimeConfig:
    """Where the (quantized) encoder runs: torch as loaded, or exported to a deployable runtime."""

    name: str = "torch"  # a registered backend (medret/runtime/*_backend.py): torch | onnx | openvino
    # onnx: none | dynamic_int8 | static_int8;  openvino: none | int8 | int4_weights
    quantize: str = "none"
    threads: int | None = None  # intra-op threads; None = the runtime's default (all cores)
    provider: str = "auto"  # onnx: auto (CUDA when present, else CPU) | cpu | cuda
    calibration_texts: int = 300  # static int8: corpus texts (seeded sample, never queries)
    group_size: int = 64  # openvino int4_weights: weights per scale group (-1 = per channel)
    int4_mode: str = "int4_asym"  # openvino int4_weights: int4_sym | int4_asym | nf4
    ratio: float = 1.0  # openvino int4_weights: share of layers in 4 bits (the rest int8)
    opset: int = 18  # 18..23: torch's dynamo ONNX exporter writes opset 18 or later, up to its ONNX_MAX_OPSET
    # openvino: precision of the ops left in float (f32 | bf16; bf16 needs AVX512-BF16/AMX, else f32 runs)
    precision: str = "f32"
    # openvino int8: NNCF SmoothQuant alpha for matmuls (None = NNCF's transformer default, 0.95; -1 = off)
    smooth_quant: float | None = None
    # onnx dynamic_int8 / openvino int8: keep the FFN down-projections (GELU input: BERT's activation outliers) in
    # float, as static_int8 always does
    float_down_proj: bool = False


@dataclass
class LoggerConfig:
    name: str = MISSING  # wandb | none
    mode: str = "offline"  # online | offline | disabled
    project: str = "medret"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_text: bool = False  # opt in before any record or query text reaches W&B
    init_timeout: float = 30.0  # seconds to wait for the W&B server before logging offline instead


@dataclass
class EvalConfig:
    k_values: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 100])
    # cap on passages searched per query when passages fold into records
    passage_fanout: int = 8
    # acceptance gate: the quantized model passes when the upper 95% CI bound of the drop in
    # gate_metric vs the fp32 baseline (same model and data) is at most gate_max_drop
    gate_metric: str = "ndcg@10"
    gate_max_drop: float = 0.01
    bootstrap_resamples: int = 2000
    # what a run returns to Hydra (sweepers optimise it) and what training keeps its best model by
    optimize_metric: str = "ndcg@10"
    # acceptance profiles judged on a quantized run (conf/eval/profile/<name>.yaml; medret/evaluation/profiles.py)
    profiles: list[str] = field(
        default_factory=lambda: ["screening", "decision_support", "precision_critical", "exploration"]
    )
    # a slice with fewer queries is reported as too small, never judged
    min_slice_queries: int = 30


@dataclass
class CacheConfig:
    dir: str | None = None  # None: $MEDRET_CACHE_DIR, else ~/.cache/medret
    enabled: bool = True  # embedding shards on disk (resume, reuse across index variants)
    shard_size: int = 10_000  # records per shard
    dtype: str = "float32"  # float16 halves the cache; float32 keeps results bit-identical
    # encode only this shard into the cache and stop (one SLURM array task per shard; see slurm/)
    only_shard: int | None = None


@dataclass
class EvaluateConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = 0
    write_text: bool = False  # query text in per_query.jsonl (run dir only, never W&B)


@dataclass
class TrainConfig:
    name: str = "contrastive"  # contrastive | qat | qlora
    max_steps: int = 100
    batch_size: int = 32  # (query, positive) pairs per step; the other positives are in-batch negatives
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    temperature: float = 0.05
    hard_negatives: int = 0  # per query, mined once with the starting model through medret's index
    mixed_precision: str = "auto"  # auto (fp16 on cuda, else no) | no | fp16 | bf16
    dev_fraction: float = 0.1  # held-out share of the training queries
    dev_every: int = 50
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    resume: bool = True  # continue from the last checkpoint in the run dir
    lora_r: int = 16  # qlora: adapter rank
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    # distill: the quantized student (quant=..., from its GPTQ/RTN rounding) against the fp32 teacher on corpus texts
    distill_texts: int = 2048  # seeded sample of corpus texts trained on (never queries)
    distill_dev_texts: int = 200  # held-out corpus texts: teacher-student embedding cosine picks the best step
    distill_token_weight: float = 1.0  # 1 - token-output cosine to the teacher (as quant.refine_steps)
    distill_similarity_weight: float = 1.0  # MSE between in-batch cosine-similarity matrices (what ranking reads)
    distill_latent_lr: float = 0.001  # latent weights' lr, in level gaps of their group (0: codes fixed)
    distill_crop: float = 0.0  # share of each batch read as a short word span (held-out texts: whole and cropped)
    distill_crop_words: int = 16  # a span's length is drawn from 4..this many words (query length)


@dataclass
class TrainRootConfig(EvaluateConfig):
    train: TrainConfig = field(default_factory=TrainConfig)


def typed(cfg: Any, schema: type[T]) -> T:
    """A composed config (DictConfig) as its dataclass, so every stage gets typed sub-configs."""
    if isinstance(cfg, schema):
        return cfg
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))


def model_name(group_name: str, group_path: str, path: str) -> str:
    """``model.name`` as a model group file declares it: the group's name while ``model.path`` is the group's own,
    else named after the path actually loaded (its folder or hub id's last part), so an MPNet folder given with
    ``model=minilm model.path=...`` is not labelled minilm. An explicit ``model.name=`` still wins."""
    if str(path) == str(group_path):
        return group_name
    tail = str(path).rstrip("/").split("://")[-1]
    return tail.rsplit("/", 1)[-1] or group_name


def register_configs() -> None:
    OmegaConf.register_new_resolver("medret_model_name", model_name, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="train_schema", node=TrainRootConfig)
