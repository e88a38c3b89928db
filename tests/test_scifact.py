"""Real data, real weights: the whole SciFact test set with the default MiniLM, fp32, exact search."""

from __future__ import annotations

from pathlib import Path

import ir_measures
import numpy as np
import pytest
import pytrec_eval
from ir_measures import AP, RR, P, R, nDCG

from medret.data import load_dataset
from tests.conftest import real_data
from tests.test_evaluate import compose_cfg, read_trec_run

pytestmark = pytest.mark.slow
K = [1, 3, 5, 10, 100]


@pytest.fixture(scope="module")
def scifact_run(tmp_path_factory):
    from medret.evaluation import run_evaluate

    path = real_data("scifact")
    cfg = compose_cfg("data=beir", f"data.path={path}", "data.split=test", "logger=none")
    out = tmp_path_factory.mktemp("scifact")
    res = run_evaluate(cfg, out)
    return res, load_dataset(cfg.data), read_trec_run(Path(out) / "run.trec")


def test_scifact_ndcg10_matches_published_minilm_figure(scifact_run):
    res, ds, _ = scifact_run
    assert res["data"]["num_docs"] == 5183 and res["data"]["num_queries"] == 300
    assert res["metrics"]["ndcg@10"] == pytest.approx(0.6451, abs=0.002)


def test_scifact_metrics_equal_pytrec_eval(scifact_run):
    res, ds, run = scifact_run
    cuts = ",".join(map(str, K))
    ref = pytrec_eval.RelevanceEvaluator(
        {q: dict(j) for q, j in ds.qrels.items()}, {f"{m}.{cuts}" for m in ("P", "recall", "ndcg_cut", "map_cut")}
    ).evaluate(run)
    for k in K:
        for ours, theirs in (("precision", "P"), ("recall", "recall"), ("ndcg", "ndcg_cut"), ("map", "map_cut")):
            expected = np.mean([ref[q][f"{theirs}_{k}"] for q in ds.query_ids])
            assert res["metrics"][f"{ours}@{k}"] == pytest.approx(expected, abs=1e-9), f"{ours}@{k}"


def test_scifact_metrics_equal_ir_measures(scifact_run):
    res, ds, run = scifact_run
    got = ir_measures.calc_aggregate(
        [nDCG @ 10, RR @ 10, P @ 10, R @ 100, AP @ 100], {q: dict(j) for q, j in ds.qrels.items()}, run
    )
    assert res["metrics"]["ndcg@10"] == pytest.approx(got[nDCG @ 10], abs=1e-9)
    assert res["metrics"]["mrr@10"] == pytest.approx(got[RR @ 10], abs=1e-9)
    assert res["metrics"]["precision@10"] == pytest.approx(got[P @ 10], abs=1e-9)
    assert res["metrics"]["recall@100"] == pytest.approx(got[R @ 100], abs=1e-9)
    assert res["metrics"]["map@100"] == pytest.approx(got[AP @ 100], abs=1e-9)
