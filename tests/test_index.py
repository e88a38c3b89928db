"""Index presets against exact search: FAISS factory strings, binary rescoring, placement and limits."""

from __future__ import annotations

import numpy as np
import pytest

from medret.errors import InputError
from medret.index import build_index, check_gpu_limits, exact_topk, recall_vs_exact
from tests.test_evaluate import compose_cfg

PRESETS = ["flat", "fp16", "sq8", "sq4", "pq", "ivf_pq", "hnsw", "binary"]


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, 96))
    x = (centers[rng.integers(0, 40, 6000)] + 0.6 * rng.standard_normal((6000, 96))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(6000, 100, replace=False)] + 0.1 * rng.standard_normal((100, 96)).astype(np.float32)
    return x, q.astype(np.float32)


def index_cfg(name: str, *extra: str):
    return compose_cfg(
        f"index={name}", "index.nlist=32", "index.m=24", "index.nbits=6", "index.train_size=6000", *extra
    ).index


def test_streamed_exact_topk_equals_flat(vectors):
    x, q = vectors
    shards = [x[i : i + 700] for i in range(0, len(x), 700)]
    flat = build_index(iter(shards), index_cfg("flat"), 96)
    np.testing.assert_array_equal(exact_topk(q, shards, 20), flat.search(q, 20)[1])


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if "pq" in p else p for p in PRESETS])
def test_presets_build_from_shards_and_approximate_exact_search(vectors, preset):
    x, q = vectors
    shards = [x[i : i + 1000] for i in range(0, len(x), 1000)]
    cfg = index_cfg(preset)
    idx = build_index(iter(shards), cfg, 96)
    assert idx.ntotal == len(x) and idx.placement == "cpu" and idx.nbytes > 0
    scores, ids = idx.search(q, 10)
    exact = exact_topk(q, shards, 10)
    recall = recall_vs_exact(ids, exact, 10)
    floor = {"flat": 1.0, "fp16": 0.99, "sq8": 0.9, "hnsw": 0.9, "binary": 0.5, "sq4": 0.5, "pq": 0.3, "ivf_pq": 0.3}
    assert floor[preset] <= recall <= 1.0, (preset, recall)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    if preset in ("pq", "ivf_pq", "sq4", "sq8"):
        assert idx.nbytes < len(x) * 96 * 4 / 2  # compressed codes
    if preset == "binary":  # rescored with exact inner products of the float vectors
        np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[ids]), rtol=1e-5, atol=1e-6)


def test_index_config_errors(vectors):
    x, _ = vectors
    with pytest.raises(InputError, match="index.m=48: PQ sub-quantizers must divide the embedding dim 100"):
        build_index(np.ones((300, 100), np.float32), compose_cfg("index=pq").index)
    with pytest.raises(InputError, match="index.factory='IVFbogus': FAISS rejected it"):
        build_index(x, compose_cfg("index=flat", "index.factory=IVFbogus").index)
    with pytest.raises(InputError, match="index.nlist=4096: needs at least that many training vectors"):
        build_index(x[:1000], index_cfg("ivf_pq", "index.nlist=4096"))
    with pytest.raises(InputError, match="FAISS GPU supports k <= 2048"):
        check_gpu_limits(index_cfg("flat"), 4096, "cuda")
    with pytest.raises(InputError, match="index.nprobe=4096"):
        check_gpu_limits(index_cfg("ivf_pq", "index.nprobe=4096"), 10, "cuda")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="index.device=cuda"):
            build_index(x, index_cfg("flat", "index.device=cuda"))
