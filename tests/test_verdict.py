"""The three-outcome verdict: accept / reject / inconclusive from the paired CI of the gate metric's drop,
and the number of queries that would decide an inconclusive one."""

from __future__ import annotations

import numpy as np
import pytest

from medret.evaluation.fidelity import queries_to_decide, verdict
from medret.metrics import paired_delta_ci


def _verdict(deltas: np.ndarray, max_drop: float = 0.01) -> dict:
    base = np.full(len(deltas), 0.5)
    mean, lo, hi = paired_delta_ci(base, base + deltas, 2000, 0)
    return verdict({"delta": mean, "ci95": [lo, hi]}, deltas, "ndcg@10", max_drop)


def test_a_tight_small_drop_is_accepted():
    deltas = np.random.default_rng(0).normal(-0.002, 0.01, 2000)  # drop 0.002 +- ~0.0005
    v = _verdict(deltas)
    assert v["outcome"] == "accept" and v["accept"] and v["drop_upper_ci95"] <= 0.01
    assert v["queries_to_decide"] == 2000


def test_a_tight_large_drop_is_rejected():
    deltas = np.random.default_rng(1).normal(-0.05, 0.01, 2000)
    v = _verdict(deltas)
    assert v["outcome"] == "reject" and not v["accept"] and v["drop_lower_ci95"] > 0.01


@pytest.mark.slow
def test_a_wide_ci_across_the_gate_is_inconclusive_and_says_how_many_queries_decide():
    rng = np.random.default_rng(2)
    deltas = rng.normal(-0.005, 0.1, 300)  # SciFact-like: 300 queries, CI about +-0.012
    v = _verdict(deltas)
    assert v["outcome"] == "inconclusive" and not v["accept"]
    assert v["drop_lower_ci95"] <= 0.01 < v["drop_upper_ci95"]
    n = v["queries_to_decide"]
    sd, margin = np.std(deltas, ddof=1), abs(0.01 - v["drop"])
    assert n == pytest.approx((1.959964 * sd / margin) ** 2, rel=1e-3, abs=1) and n > 300
    # with a few more than n queries from the same distribution the CI clears the gate (n is the boundary)
    more = rng.normal(deltas.mean(), sd, int(1.3 * n))
    assert _verdict(more - more.mean() + deltas.mean())["outcome"] != "inconclusive"


def test_a_drop_exactly_on_the_gate_cannot_be_decided():
    assert queries_to_decide(np.array([0.0, -0.02, -0.01]), 0.01, 0.01) is None
