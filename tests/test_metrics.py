"""medret's metrics against pytrec_eval (trec_eval) on randomly generated graded runs."""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval

from medret.metrics import bootstrap_ci, evaluate_run

K = [1, 3, 5, 10, 100]


def random_case(seed: int, n_queries: int = 60, n_docs: int = 400):
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, run, scored = {}, {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        judged = rng.choice(n_docs, size=rng.integers(1, 30), replace=False)
        qrels[qid] = {docs[d]: int(rng.integers(0, 3)) for d in judged}
        if not any(qrels[qid].values()):
            qrels[qid][docs[judged[0]]] = 1
        # bias the run towards relevant docs so metrics are not all ~0
        scores = rng.random(n_docs) + np.isin(np.arange(n_docs), judged) * rng.random() * 0.8
        order = np.argsort(-scores)[:150]
        run[qid] = [docs[d] for d in order]
        scored[qid] = {docs[d]: float(scores[d]) for d in order}
    return qrels, run, scored


def pytrec(qrels, scored, measures, depth=None):
    if depth is not None:
        scored = {q: dict(sorted(s.items(), key=lambda x: -x[1])[:depth]) for q, s in scored.items()}
    return pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(scored)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_pytrec_eval(seed):
    qrels, run, scored = random_case(seed)
    qids, mine = evaluate_run(run, qrels, K)
    cuts = ",".join(map(str, K))
    ref = pytrec(qrels, scored, {f"{m}.{cuts}" for m in ("P", "recall", "ndcg_cut", "map_cut")})
    for k in K:
        for ours, theirs in (("precision", "P"), ("recall", "recall"), ("ndcg", "ndcg_cut"), ("map", "map_cut")):
            expected = np.array([ref[q][f"{theirs}_{k}"] for q in qids])
            np.testing.assert_allclose(mine[f"{ours}@{k}"], expected, atol=1e-9, err_msg=f"{ours}@{k}")
        rr = pytrec(qrels, scored, {"recip_rank"}, depth=k)
        np.testing.assert_allclose(mine[f"mrr@{k}"], [rr[q]["recip_rank"] for q in qids], atol=1e-9)
        p = np.array([ref[q][f"P_{k}"] for q in qids])
        r = np.array([ref[q][f"recall_{k}"] for q in qids])
        f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
        np.testing.assert_allclose(mine[f"f1@{k}"], f1, atol=1e-9)
    assert 0.05 < mine["ndcg@10"].mean() < 0.95  # the case is informative, not degenerate


def test_queries_without_results_score_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 2}}
    qids, m = evaluate_run({"q1": ["a"]}, qrels, [1, 10])
    assert qids == ["q1", "q2"]
    assert m["ndcg@10"].tolist() == [1.0, 0.0]
    assert m["recall@1"].tolist() == [1.0, 0.0]


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_queries():
    rng = np.random.default_rng(0)
    small, large = rng.random(50), rng.random(5000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
