"""Acceptance profiles: bad profile files fail before the model loads, the family-wise statistics do not cry
wolf (simulated on real per-query rows), and a quantized run reports every profile."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medret.evaluation.fidelity import verdict
from medret.evaluation.profiles import (
    AUTO_SLICES,
    Criterion,
    Profile,
    judge_profiles,
    load_profiles,
    profile_outcome,
)
from medret.metrics import paired_delta_ci
from medret.tracking.outputs import summary_of
from tests.conftest import real_data
from tests.test_evaluate import compose_cfg, run_cli, tiny_overrides

DEFAULT = ["screening", "decision_support", "precision_critical", "exploration"]
K = [1, 3, 5, 10, 100]


def test_the_shipped_profiles_load_with_the_default_k_values():
    profiles = {p.name: p for p in load_profiles(DEFAULT, K)}
    assert list(profiles) == DEFAULT
    assert [c.metric for c in profiles["screening"].criteria] == ["recall@100", "recall@10"]
    assert [c.metric for c in profiles["decision_support"].criteria] == ["ndcg@10", "precision@1", "mrr@10"]
    assert profiles["precision_critical"].criteria[0].slices == ("critical",)
    loose = min(c.max_drop for c in profiles["exploration"].criteria)
    assert loose > max(c.max_drop for c in profiles["decision_support"].criteria)
    # a narrowed k list: the shipped profiles skip what it cannot compute instead of failing
    (screening,) = load_profiles(["screening"], [1, 3, 5, 10], skip_missing_k=True)
    assert [c.metric for c in screening.criteria] == ["recall@10"] and screening.skipped == ("recall@100",)


BAD_PROFILES = {
    "unknown metric": (
        "criteria:\n  - {metric: bleu@10, max_drop: 0.01, slices: [all]}\n",
        "criteria[0].metric='bleu@10': expected <metric>@<k> with metric in",
    ),
    "k not in k_values": (
        "criteria:\n  - {metric: recall@20, max_drop: 0.01, slices: [all]}\n",
        "criteria[0].metric='recall@20': expected <metric>@<k> with metric in precision, recall, f1, ndcg, mrr, "
        "map and k in eval.k_values [1, 3, 5, 10, 100]",
    ),
    "negative margin": (
        "criteria:\n  - {metric: ndcg@10, max_drop: 0.01}\n  - {metric: mrr@10, max_drop: -0.02}\n",
        "criteria[1].max_drop=-0.02: expected a finite absolute drop >= 0",
    ),
    "unknown slice": (
        "criteria:\n  - {metric: ndcg@10, max_drop: 0.01, slices: [all, dosage]}\n",
        "criteria[0].slices: unknown slice 'dosage' (expected all, critical, numeric, negation",
    ),
}


@pytest.mark.parametrize("case", [*BAD_PROFILES, "unknown profile name"])
def test_cli_bad_profile_is_one_error_line_before_model_load(case, tmp_path):
    if case == "unknown profile name":
        profile, expected = "no_such_profile", "eval.profiles: unknown profile 'no_such_profile': no file"
    else:
        text, message = BAD_PROFILES[case]
        profile = tmp_path / "bad.yaml"
        profile.write_text(text)
        expected = f"{profile}: {message}"
    proc = run_cli(
        f"eval.profiles=[screening,'{profile}']",
        "model.path=/nonexistent-model-dir",  # reached only after every option passed: it would fail there
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(f"error: {expected}"), errors[0]
    assert "nonexistent-model-dir" not in proc.stderr


def test_a_one_row_profile_is_the_gate_verdict():
    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 400)
    new = base - 0.004 + rng.normal(0, 0.05, 400)
    gate = Profile("gate", (Criterion("ndcg@10", 0.01, ("all",)),))
    res = judge_profiles([gate], {"ndcg@10": base}, {"ndcg@10": new}, {"all": np.ones(400, bool)}, 30, 500, 7)["gate"]
    mean, lo, hi = paired_delta_ci(base, new, 500, 7)
    v = verdict({"delta": mean, "ci95": [lo, hi]}, new - base, "ndcg@10", 0.01)
    (row,) = res["criteria"]
    assert res["ci_level"] == pytest.approx(0.95) and row["ci95"] == pytest.approx([lo, hi])
    assert res["outcome"] == row["outcome"] == v["outcome"] and res["correction"] == "bonferroni"
    assert row["queries_to_decide"] == v["queries_to_decide"]  # the same z at a family of one


def test_small_slices_are_reported_never_judged_and_the_family_level_counts_judged_rows():
    n = 200
    base = {"ndcg@10": np.linspace(0, 1, n)}
    new = {"ndcg@10": base["ndcg@10"] - 0.2}  # a huge loss, everywhere
    slices = {"all": np.ones(n, bool), "numeric": np.arange(n) < 50, "negation": np.arange(n) < 10}
    crit = Profile("pc", (Criterion("ndcg@10", 0.01, ("critical",)),))
    res = judge_profiles([crit], base, new, slices, 30, 200, 0)["pc"]
    rows = {r["slice"]: r for r in res["criteria"]}
    assert list(rows) == list(AUTO_SLICES)
    assert rows["numeric"]["outcome"] == "reject" and rows["numeric"]["n"] == 50
    assert rows["negation"]["outcome"] == "too_small" and rows["negation"]["ci95"] is None
    assert rows["negation"]["queries_to_decide"] >= 30
    assert rows["rare_term"]["n"] == 0 and rows["rare_term"]["outcome"] == "too_small"
    assert res["judged_rows"] == 1 and res["outcome"] == "reject" and res["decided_by"] == "ndcg@10 on numeric"
    # nothing judged at all: no decision, and nothing named
    tiny = {s: m & (np.arange(n) < 5) for s, m in slices.items()}
    assert judge_profiles([crit], base, new, tiny, 30, 200, 0)["pc"]["outcome"] == "inconclusive"
    assert profile_outcome([{"outcome": "too_small"}]) == ("inconclusive", None)


# --- the simulation: false rejects on real per-query rows ---


@pytest.fixture(scope="module")
def scifact_rows():
    """Real per-query metrics: SciFact test's 300 claims ranked by TF-IDF (cheap and deterministic; a real
    retriever's per-query spread, without loading a model), and slices tagged by the claims' own text."""
    sklearn_text = pytest.importorskip("sklearn.feature_extraction.text")
    from medret.config import DataConfig
    from medret.data import load_dataset
    from medret.metrics import evaluate_run

    ds = load_dataset(DataConfig(name="beir", path=str(real_data("scifact")), split="test"))
    vec = sklearn_text.TfidfVectorizer(sublinear_tf=True).fit(list(ds.doc_texts))
    scores = (vec.transform(ds.query_texts) @ vec.transform(list(ds.doc_texts)).T).toarray()
    ids = list(ds.doc_ids)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    _, per_query = evaluate_run({q: [ids[j] for j in row] for q, row in zip(ds.query_ids, top)}, ds.qrels, K)
    texts = ds.query_texts
    tagged = {  # simple stand-ins for medret.evaluation.slices: this test is about the statistics
        "numeric": [bool(re.search(r"\d", t)) for t in texts],
        "negation": [
            bool(re.search(r"\b(no|not|without|lacks?|fails?|reduces?|decreases?)\b", t, re.I)) for t in texts
        ],
        "abbreviation": [bool(re.search(r"\b[A-Z][A-Z0-9]+\b", t)) for t in texts],
        "long_query": [len(t.split()) > 15 for t in texts],
    }
    slices = {"all": np.ones(len(texts), bool), **{s: np.array(m) for s, m in tagged.items()}}
    assert all(m.sum() >= 30 for m in slices.values())  # every stand-in slice is judged
    return per_query, slices


DRAWS = 200
RESAMPLES = 400  # not eval.bootstrap_resamples (2000): 200 draws x 4 profiles must take seconds


def noisy(base: dict[str, np.ndarray], rng, shift: dict[str, float]) -> dict[str, np.ndarray]:
    """fp32 plus zero-mean noise on a random 30% of queries (most quantized rankings keep most queries
    unchanged), minus a fixed ``shift`` per metric."""
    out = {}
    for m, v in base.items():
        changed = rng.random(len(v)) < 0.3
        out[m] = v + changed * rng.normal(0, 0.1, len(v)) - shift.get(m, 0.0)
    return out


def reject_rate(profile: Profile, per_query, slices, shift_of_margin: float, extra: float = 0.0) -> float:
    """Fraction of draws rejected; every criterion's metric is shifted by ``shift_of_margin`` x its margin
    (1.0: the true drop sits exactly on the margin, the least favourable harmless change) plus ``extra``."""
    base = {c.metric: per_query[c.metric] for c in profile.criteria}
    shift = {c.metric: shift_of_margin * c.max_drop + extra for c in profile.criteria}
    rng = np.random.default_rng(0)
    rejects = 0
    for draw in range(DRAWS):
        res = judge_profiles([profile], base, noisy(base, rng, shift), slices, 30, RESAMPLES, draw)
        rejects += res[profile.name]["outcome"] == "reject"
    return rejects / DRAWS


@pytest.mark.parametrize("name", DEFAULT)
def test_simulated_false_reject_rate_is_at_most_5_percent(name, scifact_rows):
    per_query, slices = scifact_rows
    (profile,) = load_profiles([name], K)
    assert reject_rate(profile, per_query, slices, 0.0) <= 0.05  # zero-mean noise
    assert reject_rate(profile, per_query, slices, 1.0) <= 0.05  # a true drop of exactly the margin


@pytest.mark.parametrize("name", DEFAULT)
def test_a_real_shift_beyond_the_margin_is_rejected(name, scifact_rows):
    per_query, slices = scifact_rows
    (profile,) = load_profiles([name], K)
    base = {c.metric: per_query[c.metric] for c in profile.criteria}
    shift = {c.metric: c.max_drop + 0.05 for c in profile.criteria}
    rng = np.random.default_rng(1)
    for draw in range(5):
        res = judge_profiles([profile], base, noisy(base, rng, shift), slices, 30, RESAMPLES, draw)[name]
        assert res["outcome"] == "reject", res
        metric, _, where = res["decided_by"].partition(" on ")
        assert metric in base and where in slices


# --- end to end ---


def test_quantized_run_reports_every_profile_and_its_slices(tiny_bert, tmp_path):
    from medret.evaluation import run_evaluate

    cfg = compose_cfg(
        *tiny_overrides(
            tiny_bert,
            "quant=uniform",
            "quant.bits=4",
            "quant.group_size=16",
            "logger=none",
            f"cache.dir={tmp_path / 'c'}",
        )
    )
    res = run_evaluate(cfg, tmp_path / "run")
    n = res["data"]["num_queries"]
    assert res["slices"]["all"] == {"num_queries": n, "critical": False}
    assert all(res["slices"][s]["critical"] for s in AUTO_SLICES if s in res["slices"])
    profiles = res["profiles"]
    assert list(profiles) == DEFAULT
    for p in profiles.values():
        assert p["outcome"] in ("accept", "reject", "inconclusive") and p["correction"] == "bonferroni"
        for row in p["criteria"]:
            assert {"metric", "max_drop", "slice", "n", "fp32", "delta", "ci95", "outcome", "queries_to_decide"} <= set(
                row
            )
            if row["outcome"] != "too_small":
                assert row["n"] >= 30 and row["ci95"][0] <= row["delta"] <= row["ci95"][1]
    (row,) = [r for r in profiles["decision_support"]["criteria"] if r["metric"] == "ndcg@10"]
    assert row["n"] == n and row["delta"] == pytest.approx(res["deltas"]["ndcg@10"]["delta"])
    assert row["fp32"] == pytest.approx(res["deltas"]["ndcg@10"]["fp32"])
    assert {r["slice"] for r in profiles["precision_critical"]["criteria"]} == set(AUTO_SLICES)
    summary = summary_of(res)
    assert {f"profile/{p}": profiles[p]["outcome"] for p in DEFAULT}.items() <= summary.items()

    fp32 = run_evaluate(
        compose_cfg(*tiny_overrides(tiny_bert, "logger=none", f"cache.dir={tmp_path / 'c'}")), tmp_path / "fp32"
    )
    assert "profiles" not in fp32 and "all" in fp32["slices"]


def test_without_the_correction_the_same_simulation_cries_wolf(scifact_rows, monkeypatch):
    """The check above has teeth: per-row 95% intervals over precision_critical's four judged slices reject a
    change whose true drop sits on the margin far more often than 5% (0.115 on these rows, 0.02 corrected)."""
    import medret.evaluation.profiles as profiles

    per_query, slices = scifact_rows
    (profile,) = load_profiles(["precision_critical"], K)
    monkeypatch.setattr(profiles, "FAMILY_ALPHA", 0.05 * 4)  # level 1 - 0.2/4 = 0.95 per row: no correction
    assert reject_rate(profile, per_query, slices, 1.0) > 0.08
