"""The retrieval layer shared by evaluate and training: encode through the shard cache, index, search,
fold passages into records, score."""

from medret.retrieval.encode import CorpusEmbeddings, EncodeSettings, encode_one_shard
from medret.retrieval.identity import model_identity, weights_digest
from medret.retrieval.search import Retrieval, RetrievalSettings, fold_to_records, retrieve, score

__all__ = [
    "CorpusEmbeddings",
    "EncodeSettings",
    "Retrieval",
    "RetrievalSettings",
    "encode_one_shard",
    "fold_to_records",
    "model_identity",
    "retrieve",
    "score",
    "weights_digest",
]
