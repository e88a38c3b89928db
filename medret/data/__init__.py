"""Retrieval data: BEIR folders, generic JSONL/CSV record sets and the synthetic clinical generator."""

from __future__ import annotations

from pathlib import Path

from medret.config import DataConfig
from medret.data import synthetic
from medret.data.dataset import RetrievalDataset, check_unique, reconcile_qrels, restrict_to_judged
from medret.data.files import find_file, read_qrels, read_texts
from medret.errors import InputError
from medret.storage import file_sha256

__all__ = ["RetrievalDataset", "load_dataset"]


def _load_synthetic(cfg: DataConfig) -> RetrievalDataset:
    if cfg.num_records < 1:
        raise InputError(f"data.num_records={cfg.num_records}: expected a positive record count")
    if cfg.num_queries < 1:
        raise InputError(f"data.num_queries={cfg.num_queries}: expected a positive query count")
    ids = [synthetic.record_id(i) for i in range(cfg.num_records)]
    queries = synthetic.make_queries(cfg.seed, cfg.num_records, cfg.num_queries, cfg.split)
    # qrels from the facts alone, streamed: no note text is rendered here
    facts = ((rid, synthetic.record_facts(cfg.seed, i)) for i, rid in enumerate(ids))
    qrels = synthetic.judge(queries, facts)
    return RetrievalDataset(
        name=f"synthetic-{cfg.num_records}-s{cfg.seed}-{cfg.split}",
        doc_ids=ids,
        doc_texts=synthetic.SyntheticTexts(cfg.seed, cfg.num_records),
        query_ids=[q.qid for q in queries],
        query_texts=[q.text for q in queries],
        qrels=qrels,
        query_categories={q.qid: q.category for q in queries},
        corpus_fingerprint=f"synthetic-v{synthetic.GENERATOR_VERSION}:{cfg.seed}:{cfg.num_records}",
    )


def _load_files(cfg: DataConfig, corpus: Path, queries: Path, qrels_path: Path, name: str) -> RetrievalDataset:
    for p in (corpus, queries, qrels_path):
        if not p.is_file():
            raise InputError(f"{p}: file not found")
    doc_ids, doc_texts = read_texts(corpus, (cfg.title_field, cfg.text_field), cfg.text_field)
    if not doc_ids:
        raise InputError(f"{corpus}: empty corpus (expected at least one record)")
    query_ids, query_texts = read_texts(queries, ("text",), "text")
    check_unique(doc_ids, str(corpus), "doc")
    qrels, unknown = reconcile_qrels(read_qrels(qrels_path), doc_ids, query_ids, str(qrels_path), cfg.strict)
    return RetrievalDataset(
        name=name,
        doc_ids=doc_ids,
        doc_texts=doc_texts,
        query_ids=query_ids,
        query_texts=query_texts,
        qrels=qrels,
        unknown_qrels=unknown,
        sources={"corpus": str(corpus), "queries": str(queries), "qrels": str(qrels_path)},
        corpus_fingerprint=f"{file_sha256(corpus)}:{cfg.title_field}:{cfg.text_field}",
    )


def load_dataset(cfg: DataConfig) -> RetrievalDataset:
    if cfg.name == "synthetic":
        ds = _load_synthetic(cfg)
    elif cfg.name == "beir":
        if not cfg.path:
            raise InputError("data.path: expected a BEIR folder (data=beir data.path=PATH)")
        root = Path(cfg.path)
        if not root.is_dir():
            raise InputError(f"{root}: not a directory (data.path must be a BEIR folder)")
        ds = _load_files(
            cfg,
            find_file(root, "corpus"),
            find_file(root, "queries"),
            root / "qrels" / f"{cfg.split}.tsv",
            f"{root.name}-{cfg.split}",
        )
    elif cfg.name == "records":
        missing = [k for k in ("corpus_file", "queries_file", "qrels_file") if not getattr(cfg, k)]
        if missing:
            raise InputError(f"data={cfg.name}: expected data.{missing[0]} (JSONL or CSV path)")
        corpus = Path(cfg.corpus_file)
        ds = _load_files(cfg, corpus, Path(cfg.queries_file), Path(cfg.qrels_file), corpus.stem)
    else:
        raise InputError(f"data.name={cfg.name!r}: expected synthetic, beir or records")
    return restrict_to_judged(ds, cfg.max_queries)
