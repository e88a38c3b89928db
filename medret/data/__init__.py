"""Retrieval data: BEIR folders, generic JSONL/CSV record sets and the synthetic clinical generator."""

from __future__ import annotations

import logging
from pathlib import Path

from medret.config import DataConfig
from medret.data import synthetic
from medret.data.dataset import RetrievalDataset, check_unique, reconcile_qrels, restrict_to_judged
from medret.data.files import check_file, find_file, read_categories, read_qrels, read_texts
from medret.errors import InputError
from medret.storage import file_sha256

__all__ = ["RetrievalDataset", "check_data_options", "load_dataset"]

log = logging.getLogger(__name__)


def check_data_options(cfg: DataConfig) -> None:
    """Data options that need no file read: checked before anything heavy starts."""
    if cfg.name not in ("synthetic", "beir", "records"):
        raise InputError(f"data.name={cfg.name!r}: expected synthetic, beir or records")
    if cfg.name == "synthetic":
        if cfg.num_records < 1:
            raise InputError(f"data.num_records={cfg.num_records}: expected a positive record count")
        if cfg.num_queries < 1:
            raise InputError(f"data.num_queries={cfg.num_queries}: expected a positive query count")
    field = cfg.query_category_field
    if field is not None and (not isinstance(field, str) or not all(field.split("."))):
        raise InputError(f"data.query_category_field={field!r}: expected a dotted field path such as metadata.qtype")
    if field is not None and cfg.name == "synthetic":
        raise InputError(
            f"data.query_category_field={field!r}: synthetic queries carry their own categories; leave it unset"
        )
    if cfg.max_queries is not None and cfg.max_queries < 1:
        raise InputError(f"data.max_queries={cfg.max_queries}: expected a positive count (or null for all queries)")
    if cfg.passage_tokens < 0:
        raise InputError(f"data.passage_tokens={cfg.passage_tokens}: expected 0 (no split) or a token count")
    if cfg.passage_tokens and not 0 <= cfg.passage_stride < cfg.passage_tokens:
        raise InputError(
            f"data.passage_stride={cfg.passage_stride}: expected 0 <= stride < passage_tokens ({cfg.passage_tokens})"
        )


def _load_synthetic(cfg: DataConfig) -> RetrievalDataset:
    ids = synthetic.SyntheticIds(cfg.num_records)
    queries = synthetic.make_queries(cfg.seed, cfg.num_records, cfg.num_queries, cfg.split)
    # qrels from the facts alone, streamed: no note text is rendered here
    facts = (synthetic.record_facts(cfg.seed, i) for i in range(cfg.num_records))
    qrels = synthetic.judge(queries, facts, ids)
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
        check_file(p)
    doc_ids, doc_texts = read_texts(corpus, (cfg.title_field, cfg.text_field), cfg.text_field)
    if not doc_ids:
        raise InputError(f"{corpus}: empty corpus (expected at least one record)")
    query_ids, query_texts = read_texts(queries, ("text",), "text")
    if not query_ids:
        raise InputError(f"{queries}: no queries (expected at least one record with '_id' and 'text')")
    check_unique(doc_ids, str(corpus), "doc")
    counts: dict[str, int] = {}
    qrels, unknown = reconcile_qrels(read_qrels(qrels_path, counts), doc_ids, query_ids, str(qrels_path), cfg.strict)
    counts["empty_documents"] = _count_empty(doc_texts, corpus, "records have no text; they are kept")
    counts["empty_queries"] = _count_empty(query_texts, queries, "queries have no text; they are left out")
    if counts["empty_queries"]:  # an empty query's embedding ranks nothing in particular
        kept = [(q, t) for q, t in zip(query_ids, query_texts) if t.strip()]
        query_ids, query_texts = [q for q, _ in kept], [t for _, t in kept]
    categories = {}
    if cfg.query_category_field:  # after the queries' own checks: a malformed line is named as such first
        categories = read_categories(queries, cfg.query_category_field, "data.query_category_field")
    return RetrievalDataset(
        name=name,
        doc_ids=doc_ids,
        doc_texts=doc_texts,
        query_ids=query_ids,
        query_texts=query_texts,
        qrels=qrels,
        query_categories=categories,
        unknown_qrels=unknown,
        sources={"corpus": str(corpus), "queries": str(queries), "qrels": str(qrels_path)},
        corpus_fingerprint=f"{file_sha256(corpus)}:{cfg.title_field}:{cfg.text_field}",
        warnings=counts,
    )


def _count_empty(texts: list[str], path: Path, what: str) -> int:
    """Texts that are empty or only whitespace, warned about once with the first line's position."""
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        log.warning("%s: %d %s (first is record %d)", path, len(empty), what, empty[0] + 1)
    return len(empty)


def load_dataset(cfg: DataConfig) -> RetrievalDataset:
    check_data_options(cfg)
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
    return _keep_judged(ds, cfg.max_queries)


def _keep_judged(ds: RetrievalDataset, max_queries: int | None) -> RetrievalDataset:
    """Only queries with a relevant judgement are scored: the others are counted, not silently lost.

    Queries with no judgement at all are normal in BEIR (queries.jsonl holds every split); queries judged
    but with nothing relevant (all 0 or negative grades) are worth a warning."""
    unjudged = sum(1 for q in ds.query_ids if q not in ds.qrels)
    total = len(ds.query_ids)
    ds = restrict_to_judged(ds, None)
    irrelevant = total - unjudged - len(ds.query_ids)
    if irrelevant:
        log.warning(
            "%s: %d judged queries have no relevant record; left out", ds.sources.get("qrels", ds.name), irrelevant
        )
    ds.warnings.update(queries_without_judgements=unjudged, queries_without_relevant=irrelevant)
    return restrict_to_judged(ds, max_queries) if max_queries is not None else ds
