"""medret.results: the one reader of results.json (old-run fallbacks, one verdict vocabulary) and the one
table writer; bench/quant_table.py's default plan holds only schemes a plain run can evaluate."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medret.evaluation.fidelity import verdict
from medret.results import (
    OUTCOMES,
    RunResult,
    Verdict,
    csv_table,
    is_complete,
    markdown_table,
    read_run,
    text_table,
    verdict_label,
)

ROOT = Path(__file__).resolve().parents[1]


def result(outcome: str | None, ci95: tuple[float, float], *, accept: bool = False, n: int | None = None) -> dict:
    """A quantized run's results.json; ``outcome=None``: one written before the three-outcome verdict."""
    delta = (ci95[0] + ci95[1]) / 2
    v = {"metric": "ndcg@10", "max_drop": 0.01, "accept": accept}
    if outcome:
        v |= {"outcome": outcome, "queries_to_decide": n}
    return {
        "metrics": {"ndcg@10": 0.6 + delta},
        "deltas": {"ndcg@10": {"fp32": 0.6, "delta": delta, "ci95": list(ci95)}},
        "verdict": v,
    }


def test_stored_outcomes_are_read_as_they_are():
    for outcome in OUTCOMES:
        assert RunResult.of(result(outcome, (-0.02, 0.0), n=300)).verdict.outcome == outcome
    assert RunResult.of({"metrics": {"ndcg@10": 0.6}}).verdict is None  # the fp32 baseline
    assert verdict_label(None) == "baseline"
    assert Verdict("inconclusive", 4203).label() == "inconclusive (~4203 queries to decide)"
    assert Verdict("inconclusive").label() == "inconclusive" and Verdict("reject", 300).label() == "reject"


@pytest.mark.parametrize(
    ("ci95", "accept", "outcome"),
    [((-0.005, 0.004), True, "accept"), ((-0.03, -0.02), False, "reject"), ((-0.02, 0.01), False, "inconclusive")],
)
def test_old_verdicts_are_judged_again_from_their_ci_as_evaluate_judges(ci95, accept, outcome):
    # before the third outcome a run stored only accept: a CI that straddles the gate said "reject"
    run = RunResult.of(result(None, ci95, accept=accept))
    expected = verdict({"delta": sum(ci95) / 2, "ci95": list(ci95)}, np.zeros(5), "ndcg@10", 0.01)["outcome"]
    assert run.verdict.outcome == outcome == expected and run.verdict.queries_to_decide is None


def test_old_inconclusive_verdict_takes_its_queries_from_per_query_jsonl(tmp_path):
    res = result(None, (-0.02, 0.01))
    (tmp_path / "results.json").write_text(json.dumps(res))
    rng = np.random.default_rng(0)
    deltas = rng.normal(-0.005, 0.05, 200)
    (tmp_path / "per_query.jsonl").write_text("".join(json.dumps({"delta_ndcg@10": d}) + "\n" for d in deltas))
    run = read_run(tmp_path)
    want = verdict(res["deltas"]["ndcg@10"], deltas, "ndcg@10", 0.01)
    assert run.verdict == Verdict("inconclusive", want["queries_to_decide"], "ndcg@10")
    assert run.verdict.label() == f"inconclusive (~{want['queries_to_decide']} queries to decide)"
    assert len(run.per_query()) == 200


def test_an_old_verdict_without_ci_falls_back_to_its_accept_bool():
    res = result(None, (-0.02, 0.01), accept=False)
    del res["verdict"]["max_drop"]
    assert RunResult.of(res).verdict.outcome == "reject"


def test_keys_an_older_run_lacks_fall_back():
    res = {
        "config": {"quant": {"name": "nf", "bits": 3}},
        "metrics": {"ndcg@10": 0.61},
        "quant": {"scheme": "nf", "effective_bits_per_param": 3.25, "model_bytes": 52_700_000},
        "sizes": {"model_param_bytes": 52_700_000},
        "deltas": {"ndcg@10": {"delta": -0.03, "ci95": [-0.05, -0.01]}},  # no fp32
    }
    run = RunResult.of(res)
    assert (run.runtime_name, run.runtime_label, run.disk_bytes, run.deploy_bytes) == ("torch", "torch", None, 52.7e6)
    assert run.speed_key == ("unknown", None) and run.cpu_threads is None  # no device block
    assert run.eff_bits_all is None and run.deployed_bits == 3.25  # no all-parameter bits
    assert run.fp32_score() == pytest.approx(0.64)  # score - delta
    assert run.dataset == "unknown" and run.bits == 3 and run.ci_err() == (0.0, 0.0)


def test_an_exported_runtime_is_sized_and_timed_by_its_own_files_and_threads():
    res = {
        "metrics": {"ndcg@10": 0.64},
        "quant": {"scheme": "none", "effective_bits_per_param": 32.0, "model_bytes": 90_900_000},
        "sizes": {"fp32_model_param_bytes": 90_900_000},
        "runtime": {"name": "onnx", "quantize": "dynamic_int8", "bytes_on_disk": 22_725_000, "threads": 4},
        "device": {"encoder": "cuda:0", "cpu_threads": 2},
    }
    run = RunResult.of(res)
    assert run.runtime_label == "onnx/dynamic_int8" and run.deploy_bytes == 22_725_000
    assert run.deployed_bits == pytest.approx(8.0) and run.speed_key == ("cuda", 4)


def test_runtime_label_names_what_else_changes_the_deployed_model():
    def label(**runtime) -> str:
        return RunResult.of({"metrics": {"ndcg@10": 0.6}, "runtime": runtime}).runtime_label

    ov = {"name": "openvino", "quantize": "int8"}
    assert label(**ov, inference_precision="f32", conversion={"smooth_quant": "nncf default"}) == "openvino/int8"
    assert label(**ov, inference_precision="bf16", conversion={"fp32_matmuls_kept": 12}) == (
        "openvino/int8+float_down_proj@bf16"
    )
    assert label(**ov, conversion={"smooth_quant": 0.5}) == "openvino/int8+sq=0.5"
    # static int8 always keeps the down-projections: nothing to tell apart
    assert label(name="onnx", quantize="static_int8", conversion={"fp32_matmuls_kept": 6}) == "onnx/static_int8"


def test_unfinished_and_unreadable_runs(tmp_path):
    assert read_run(tmp_path) is None and not is_complete(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(TypeError):
        read_run(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(KeyError):
        read_run(tmp_path)


def test_the_table_writer():
    rows = [{"a": 1, "b": "x", "extra": 0}, {"a": 2.5}]
    assert markdown_table(["a", "b"], rows) == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 |  |"]
    assert markdown_table(["a", "b"], [], right=["b"])[1] == "|---|---:|"
    assert csv_table(["a", "b"], rows).splitlines() == ["a,b", "1,x", "2.5,"]
    assert (
        text_table([{"job": "0", "v": "accept"}, {"job": "10"}]) == "job  v     \n0    accept\n10"
    )  # the header keeps its padding, as before


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _quant_table():
    return _bench("quant_table")


def test_frontier_table_names_a_saved_model_by_its_own_scheme_and_leaves_its_quantize_time_blank(tmp_path):
    run = result("reject", (-0.022, -0.017))
    run["quant"] = {
        "scheme": "none",
        "effective_bits_per_param": 2.49,
        "quantize_s": 0.01,
        "model_bytes": 7_850_000,
        "saved_quant": {"scheme": "kmeans", "bits": 2, "distill": {"codes_moved": 87}},
    }
    run["profiles"] = {"screening": {"outcome": "accept"}, "exploration": {"outcome": "reject"}}
    run["fidelity"] = {"embedding_cosine": {"mean": 0.9375}}
    (tmp_path / "results.json").write_text(json.dumps(run))
    row = _bench("frontier_table").row(tmp_path, "distilled", 0.6, model_mb=True)
    assert row["quantize s"] == "" and row["model MB"] == "7.85" and row["profiles"] == "scr:A exp:R"
    assert row["retention"] == f"{100 * (0.6 - 0.0195) / 0.6:.1f}%" and row["verdict"] == "reject"
    assert RunResult.of(run).scheme_label == "kmeans+distill"


def test_quant_table_default_plan_holds_no_scheme_that_needs_a_scan(monkeypatch, capsys):
    from medret.quant import scheme

    qt = _quant_table()
    default = qt.FIXED + qt.CUSTOM  # --schemes' default
    planned = {s for s, _ in qt.plan([4, 3, 2, 8], default)}
    assert "auto" not in planned and planned == set(default)
    assert {scheme(s).kind for s in planned} <= {"none", "cast", "bnb", "custom"}
    # asked for by name: one usage error before anything runs, not a traceback after hours of runs
    monkeypatch.setattr(sys, "argv", ["quant_table.py", "--data", "x", "--out", "y", "--schemes", "nf,auto"])
    with pytest.raises(SystemExit) as e:
        qt.main()
    assert e.value.code == 2 and "auto not tabulated here" in capsys.readouterr().err


# --- acceptance profiles and query slices (issue 25): typed, and absent from older runs ---


def profiled() -> dict:
    res = result("accept", (-0.004, 0.002))
    res["slices"] = {"all": {"num_queries": 300, "critical": False}, "negation": {"num_queries": 41, "critical": True}}
    row = {"metric": "ndcg@10", "max_drop": 0.01, "n": 41, "fp32": 0.6, "delta": -0.05, "queries_to_decide": 80}
    res["profiles"] = {
        "precision_critical": {
            "outcome": "reject",
            "decided_by": "ndcg@10 on negation",
            "correction": "holm",
            "criteria": [
                {**row, "slice": "all", "n": 300, "delta": -0.001, "ci95": [-0.004, 0.002], "outcome": "accept"},
                {**row, "slice": "negation", "ci95": [-0.09, -0.02], "outcome": "reject"},
                {**row, "slice": "numeric", "n": 12, "delta": None, "ci95": None, "outcome": "too_small"},
            ],
        },
        "screening": {
            "outcome": "inconclusive",
            "decided_by": "recall@100 on all",
            "criteria": [
                {**row, "metric": "recall@100", "slice": "all", "ci95": [-0.03, 0.0], "outcome": "inconclusive"}
            ],
        },
        "exploration": {"outcome": "accept", "decided_by": None, "criteria": []},
    }
    return res


def test_profiles_and_slices_are_typed():
    run = RunResult.of(profiled())
    pc = run.profiles["precision_critical"]
    assert (pc.outcome, pc.letter, pc.decided_by) == ("reject", "R", "ndcg@10 on negation")
    assert pc.label() == "reject: ndcg@10 on negation"
    neg = next(c for c in pc.criteria if c.slice == "negation")
    assert neg.ci95 == (-0.09, -0.02) and neg.n == 41 and neg.max_drop == 0.01 and neg.outcome == "reject"
    assert pc.criteria[2].outcome == "too_small" and pc.criteria[2].ci95 is None
    assert run.profiles["screening"].label() == "inconclusive: recall@100 on all (~80 queries to decide)"
    assert run.profiles["exploration"].label() == "accept" and run.profiles["exploration"].letter == "A"
    assert list(run.profiles) == ["precision_critical", "screening", "exploration"]
    assert run.slices["negation"].critical and run.slices["negation"].num_queries == 41
    assert not run.slices["all"].critical


def test_older_runs_and_runs_without_a_baseline_have_no_profiles_or_slices():
    assert RunResult.of(result("accept", (-0.004, 0.002))).profiles == {}
    fp32 = RunResult.of({"metrics": {"ndcg@10": 0.6}})
    assert fp32.profiles == {} and fp32.slices == {}
    assert RunResult.of({"metrics": {}, "profiles": None, "slices": None}).profiles == {}


def test_profile_outcomes_come_back_from_a_wandb_summary():
    from medret.results import from_wandb

    config = {"quant": {"name": "nf"}, "data": {"name": "scifact"}}
    summary = {"ndcg@10": 0.6, "profile/screening": "accept", "profile/precision_critical": "reject"}
    run = from_wandb(config, summary)
    assert {n: p.outcome for n, p in run.profiles.items()} == {"screening": "accept", "precision_critical": "reject"}
    assert run.profiles["precision_critical"].label() == "reject"  # W&B keeps the outcome only
    assert from_wandb(config, {"ndcg@10": 0.6}).profiles == {}


# --- cut-offs that follow eval.k_values (the headline log line, default metric options) ---


def test_the_headline_prints_the_configured_cutoffs():
    from medret.metrics import headline, headline_k

    m = {"ndcg@10": 0.645, "recall@100": 0.9, "precision@10": 0.08, "ndcg@5": 0.6, "recall@5": 0.7}
    assert headline(m, [1, 3, 5, 10, 100]) == "nDCG@10 0.6450  R@100 0.9000  P@10 0.0800"  # the default: as before
    assert headline(m | {"precision@5": 0.1}, [1, 3, 5]) == "nDCG@5 0.6000  R@5 0.7000  P@5 0.1000"
    assert "nan" not in headline({}, [1, 3, 5]) and headline({}, [5]) == "nDCG@5 -  R@5 -  P@5 -"
    assert headline_k([20, 100]) == 20 and headline_k([1, 10, 100]) == 10


def test_default_metric_options_follow_a_narrowed_k_list(caplog):
    from omegaconf import OmegaConf

    from medret.config import EvalConfig
    from medret.metrics import check_metric, follow_k_values

    ev = OmegaConf.structured(EvalConfig)
    assert follow_k_values(ev) == {} and ev.gate_metric == "ndcg@10"  # 10 in the list: nothing moves
    ev.k_values = [1, 3, 5]
    with caplog.at_level("WARNING", logger="medret"):
        assert follow_k_values(ev) == {"eval.gate_metric": "ndcg@5", "eval.optimize_metric": "ndcg@5"}
    assert ev.gate_metric == ev.optimize_metric == "ndcg@5" and "eval.optimize_metric" in caplog.text
    check_metric("eval.gate_metric", ev.gate_metric, [1, 3, 5])  # passes now
    chosen = OmegaConf.structured(EvalConfig(k_values=[1, 3, 5], gate_metric="recall@100"))
    assert follow_k_values(chosen) == {"eval.optimize_metric": "ndcg@5"}
    assert chosen.gate_metric == "recall@100"  # a value the user chose is left for check_metric to reject


def test_paired_runs_reads_both_runs_per_query_rows_and_refuses_different_queries(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=50), rng.uniform(size=50)
    for name, scores in (("a", a), ("b", b), ("c", b[:49])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result("accept", (-0.001, 0.001))))
        rows = [{"query_id": f"q{i}", "ndcg@10": float(s)} for i, s in enumerate(scores)]
        (tmp_path / name / "per_query.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pr = _bench("paired_runs")
    monkeypatch.setattr(sys, "argv", ["paired_runs.py", str(tmp_path / "a"), str(tmp_path / "b")])
    pr.main()
    line = capsys.readouterr().out
    assert f"B - A {(b - a).mean():+.4f} [" in line and "over 50 queries" in line
    lo, hi = (float(x) for x in line.split("[")[1].split("]")[0].split(", "))
    assert lo < (b - a).mean() < hi
    monkeypatch.setattr(sys, "argv", ["paired_runs.py", str(tmp_path / "a"), str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="expected the same queries"):
        pr.main()
