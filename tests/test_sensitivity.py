"""Sensitivity scan (python -m medret.sensitivity) and quant=auto: per-layer curves on a tiny random BERT,
the knapsack against brute force, the written overrides reproducing the weights, bad options."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from medret.config import DataConfig
from medret.data import load_dataset
from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.quant.budget import choose_options
from medret.sensitivity import register_sensitivity_config, run_sensitivity
from tests.test_evaluate import ROOT, compose_cfg

register_sensitivity_config()

# a tiny BERT reading 64 tokens: the 24 (layer, width) encodes of the scan take seconds
TINY = ("model.name=tiny", "model.max_length=64", "quant.calibration_texts=8", "logger=none")
GROUP = "quant.group_size=16"  # the scans' grid; quant=auto takes it from the scan, never from the run
SCAN = ("data.num_records=120", "data.num_queries=30", "scan.dev_queries=8", "scan.dev_corpus=40")
SCAN_BITS = [2, 8]


def compose_scan(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="sensitivity", overrides=list(overrides))


@pytest.fixture(scope="module")
def scan(tiny_bert, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("scan")
    cfg = compose_scan(
        f"model.path={tiny_bert}", *TINY, GROUP, *SCAN, "scan.fidelity_texts=8", f"scan.bits={SCAN_BITS}"
    )
    run_sensitivity(cfg, run_dir)
    return run_dir, json.loads((run_dir / "sensitivity.json").read_text())


def eval_overrides(tiny_bert: Path, *extra: str) -> list[str]:
    return [
        f"model.path={tiny_bert}",
        *TINY,
        "data.num_records=150",
        "data.num_queries=20",
        "eval.k_values=[1,10]",
        *extra,
    ]


def test_scan_writes_measured_and_proxy_curves_for_every_linear(scan, tiny_bert, tmp_path):
    run_dir, report = scan
    names = [layer["name"] for layer in report["layers"]]
    kinds = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
    expected = [f"encoder.layer.{i}.{k}" for i in range(2) for k in (*kinds, "intermediate.dense", "output.dense")]
    assert names == expected  # every quantizable linear (the pooler is excluded as evaluate does)
    assert set(report["types"]) == {*kinds, "intermediate.dense", "output.dense"}
    assert all(agg["layers"] == 2 for agg in report["types"].values())
    for layer in report["layers"]:
        assert layer["fisher_trace"] > 0
        for b in SCAN_BITS:
            p = layer["curve"][str(b)]
            assert np.isfinite([p["fidelity_drop"], p["ndcg_drop"], p["proxy"], p["ndcg"]]).all()
            assert p["proxy"] > 0 and -1e-6 <= p["fidelity_drop"] <= 2
        # 2 bits errs more than 8 in the weights, the proxy and the embeddings
        lo, hi = layer["curve"]["2"], layer["curve"]["8"]
        assert lo["weight_mse"] > hi["weight_mse"] and lo["proxy"] > hi["proxy"]
        assert lo["fidelity_drop"] > hi["fidelity_drop"]
    corr = report["correlation"]
    assert set(corr["per_bits"]) == {"2", "8"} and -1 <= corr["pooled"]["fidelity_drop"] <= 1
    assert (run_dir / "sensitivity.txt").read_text().startswith("layer")

    # the dev queries are the train split's, never the test queries evaluate reports on
    test = load_dataset(DataConfig(name="synthetic", num_records=120, num_queries=30))
    assert report["dev"]["data"] == test.name.replace("-test", "-train") and report["dev"]["queries"] == 8
    assert report["dev"]["corpus_docs"] < 120

    # the storage priced per (layer, width) is what evaluate reports for that layer at that width
    res = run_evaluate(compose_cfg(*eval_overrides(tiny_bert), "quant=uniform", "quant.bits=2", GROUP), tmp_path / "e")
    evaluated = {layer["name"]: layer["effective_bits"] for layer in res["quant"]["layers"]}
    assert evaluated == {layer["name"]: layer["curve"]["2"]["effective_bits"] for layer in report["layers"]}


def test_a_fidelity_only_scan_matches_the_full_scans_fidelity_and_resumes(scan, tiny_bert, tmp_path):
    """scan.ndcg=false: no dev queries or dev corpus (so a test split is allowed), the same fidelity drops as
    the full scan, every point through the cache (a rerun encodes nothing), and quant=auto's default measure
    makes the same choice from it; the nDCG measure is refused on it in one line."""
    _, full = scan
    cache = tmp_path / "cache"
    opts = (f"model.path={tiny_bert}", *TINY, GROUP, *SCAN[:2], "scan.fidelity_texts=8", f"scan.bits={SCAN_BITS}")
    cfg = compose_scan(*opts, "scan.ndcg=false", "data.split=test", f"cache.dir={cache}")
    report = run_sensitivity(cfg, tmp_path / "fid")
    assert report["dev"]["mode"] == "none" and report["dev"]["queries"] == 0 and report["dev"]["query_ids"] == []
    assert report["ndcg"]["measured"] is False and report["fp32"]["dev_ndcg@10"] is None
    for mine, theirs in zip(report["layers"], full["layers"], strict=True):
        for b in SCAN_BITS:
            p, q = mine["curve"][str(b)], theirs["curve"][str(b)]
            assert p["ndcg"] is None and p["ndcg_drop"] is None
            assert p["fidelity_drop"] == pytest.approx(q["fidelity_drop"], rel=1e-4, abs=1e-7)
    assert report["correlation"]["pooled"]["ndcg_drop"] is None
    assert "no dev nDCG@10 (scan.ndcg=false)" in (tmp_path / "fid" / "sensitivity.txt").read_text()
    stores = sorted(p.parent for p in cache.rglob("manifest.json"))
    assert len(stores) == 1 + len(full["layers"]) * len(SCAN_BITS)  # fp32 + one per point: fidelity texts only
    stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}
    again = run_sensitivity(cfg, tmp_path / "fid_again")  # a killed scan's rerun: every point from the cache
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")} == stamp and stamp
    drops = lambda r: [layer["curve"][str(b)]["fidelity_drop"] for layer in r["layers"] for b in SCAN_BITS]  # noqa: E731
    assert drops(again) == drops(report)

    def choice(sens: Path, out: str, *extra: str) -> dict:
        target = "quant.target_bits=5.0"  # between all-2 and all-8 bits for every layer
        res = run_evaluate(
            compose_cfg(*eval_overrides(tiny_bert), "quant=auto", target, f"quant.sensitivity={sens}", *extra),
            tmp_path / out,
        )
        return res["quant"]["auto"]["bits_per_layer"]

    assert choice(tmp_path / "fid" / "sensitivity.json", "a") == choice(scan[0] / "sensitivity.json", "b")
    with pytest.raises(InputError, match=r"^quant.sensitivity_measure=ndcg: .* measured fidelity only") as err:
        choice(tmp_path / "fid" / "sensitivity.json", "c", "quant.sensitivity_measure=ndcg")
    assert "\n" not in str(err.value)


def brute_force(costs: np.ndarray, losses: np.ndarray, budget: float) -> float:
    best = np.inf
    for combo in itertools.product(range(costs.shape[1]), repeat=costs.shape[0]):
        rows = range(costs.shape[0])
        if sum(costs[i, j] for i, j in zip(rows, combo)) <= budget:
            best = min(best, sum(losses[i, j] for i, j in zip(rows, combo)))
    return best


def test_knapsack_meets_the_budget_and_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = 5
        params = rng.integers(1, 9, size=n)
        costs = params[:, None] * np.array([2, 3, 4, 8])  # integer bits: the DP's rounding is exact
        losses = np.sort(rng.random((n, 4)), axis=1)[:, ::-1] * rng.random((n, 1))
        budget = float(rng.uniform(costs[:, 0].sum(), costs[:, -1].sum()))
        picks = choose_options(costs, losses, budget, unit=1.0)  # one unit per bit: the DP is exact
        assert sum(costs[i, j] for i, j in enumerate(picks)) <= budget
        assert sum(losses[i, j] for i, j in enumerate(picks)) == pytest.approx(brute_force(costs, losses, budget))
    # real-valued costs (bits with scales): fits the budget and, at the default units, matches brute force
    costs = rng.integers(100, 900, size=(6, 1)) * np.array([2.27, 3.27, 4.27, 8.27])
    losses = np.sort(rng.random((6, 4)), axis=1)[:, ::-1].copy()
    budget = 3.1 * costs[:, 0].sum() / 2.27
    picks = choose_options(costs, losses, budget)
    assert sum(costs[i, j] for i, j in enumerate(picks)) <= budget
    assert sum(losses[i, j] for i, j in enumerate(picks)) == pytest.approx(brute_force(costs, losses, budget))
    with pytest.raises(ValueError):
        choose_options(costs, losses, costs[:, 0].sum() - 1)


def test_knapsack_gives_the_more_sensitive_layer_the_more_bits():
    costs = np.array([[2.0, 3.0, 4.0, 8.0]] * 2) * 100
    drops = np.array([1.0, 0.3, 0.1, 0.0])
    losses = np.stack([drops * 10, drops])  # layer 0 is ten times as sensitive
    picks = choose_options(costs, losses, 3.0 * 200)  # 3 bits on average: one at 4, one at 2
    assert [[2, 3, 4, 8][j] for j in picks] == [4, 2]


def test_auto_chooses_under_the_budget_and_its_yaml_reproduces_the_weights(scan, tiny_bert, tmp_path):
    scan_dir, report = scan
    sens = scan_dir / "sensitivity.json"
    cheapest = sum(
        min(c["effective_bits"] for c in layer["curve"].values()) * layer["params"] for layer in report["layers"]
    )
    target = 1.5 * cheapest / sum(layer["params"] for layer in report["layers"])  # between all-2 and all-8 bits
    cfg = compose_cfg(
        *eval_overrides(tiny_bert),
        "quant=auto",
        f"quant.target_bits={target}",
        f"quant.sensitivity={sens}",
        f"quant.save_dir={tmp_path / 'auto_model'}",
    )
    res = run_evaluate(cfg, tmp_path / "auto")
    auto = res["quant"]["auto"]
    assert auto["target_bits"] == target and auto["achieved_bits_per_param"] <= target
    assert auto["achieved_bits_per_param"] == pytest.approx(auto["predicted_bits_per_param"], rel=1e-12)
    assert set(auto["bits_per_layer"].values()) == {2, 8}  # the budget forces a real mix
    assert {layer["name"]: layer["bits"] for layer in res["quant"]["layers"]} == auto["bits_per_layer"]
    assert res["config"]["quant"]["name"] == "uniform"  # the scan's scheme, with per-layer overrides

    # the YAML passed back (a quant group file) quantizes every weight identically
    choice_dir = tmp_path / "auto"
    again = compose_cfg(
        *eval_overrides(tiny_bert),
        f"hydra.searchpath=[file://{choice_dir}]",
        "quant=auto_choice",
        f"quant.save_dir={tmp_path / 'yaml_model'}",
    )
    res2 = run_evaluate(again, tmp_path / "again")
    assert res2["metrics"] == res["metrics"]
    a, b = (
        load_file(tmp_path / "auto_model" / "model.safetensors"),
        load_file(tmp_path / "yaml_model" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_auto_rounds_the_chosen_widths_with_the_runs_method(scan, tiny_bert, tmp_path):
    scan_dir, report = scan
    n = sum(layer["params"] for layer in report["layers"])
    cheapest = sum(
        min(c["effective_bits"] for c in layer["curve"].values()) * layer["params"] for layer in report["layers"]
    )
    cfg = compose_cfg(
        *eval_overrides(tiny_bert),
        "quant=auto",
        f"quant.target_bits={1.5 * cheapest / n}",
        f"quant.sensitivity={scan_dir / 'sensitivity.json'}",
        "quant.method=gptq",
        "quant.act_order=true",
        "quant.refine_steps=2",
    )
    res = run_evaluate(cfg, tmp_path / "auto_gptq")
    assert res["config"]["quant"]["method"] == "gptq" and res["config"]["quant"]["act_order"] is True
    assert {layer["method"] for layer in res["quant"]["layers"]} == {"gptq"}
    assert {layer["name"]: layer["bits"] for layer in res["quant"]["layers"]} == res["quant"]["auto"]["bits_per_layer"]
    assert [r["steps"] for r in res["quant"]["refine"]] == [2]  # refinement is the run's too, not dropped
    choice = (tmp_path / "auto_gptq" / "quant" / "auto_choice.yaml").read_text()
    assert "method: gptq" in choice and "refine_steps: 2" in choice


def test_auto_on_another_grid_prices_each_width_by_what_that_grid_stores(scan, tiny_bert, tmp_path):
    scan_dir, report = scan  # scanned on uniform, group 16: +1 bit of scale per weight at every width
    n = sum(layer["params"] for layer in report["layers"])
    cheapest = sum(
        min(c["effective_bits"] for c in layer["curve"].values()) * layer["params"] for layer in report["layers"]
    )
    target = 1.5 * cheapest / n
    cfg = compose_cfg(
        *eval_overrides(tiny_bert),
        "quant=auto",
        f"quant.target_bits={target}",
        f"quant.sensitivity={scan_dir / 'sensitivity.json'}",
        "quant.grid={name:nf,granularity:channel}",
    )
    res = run_evaluate(cfg, tmp_path / "auto_grid")
    auto, layers = res["quant"]["auto"], res["quant"]["layers"]
    assert res["config"]["quant"]["name"] == "nf" and res["config"]["quant"]["granularity"] == "channel"
    assert auto["grid"] == {"name": "nf", "granularity": "channel"}
    assert {layer["name"]: layer["bits"] for layer in layers} == auto["bits_per_layer"]
    # priced by the grid it runs on: what the knapsack predicted is what the quantized model stores
    assert auto["achieved_bits_per_param"] == pytest.approx(auto["predicted_bits_per_param"], rel=1e-12)
    assert auto["achieved_bits_per_param"] <= target
    # ... and not what the scan's own grid would have stored for the same widths
    scan_priced = sum(
        layer["curve"][str(auto["bits_per_layer"][layer["name"]])]["effective_bits"] * layer["params"]
        for layer in report["layers"]
    )
    assert scan_priced / n != pytest.approx(auto["achieved_bits_per_param"], rel=1e-3)
    choice = (tmp_path / "auto_grid" / "quant" / "auto_choice.yaml").read_text()
    assert "name: nf" in choice and "granularity: channel" in choice and "grid" not in choice.split("\n", 3)[3]


def test_bad_auto_options_fail_before_the_model_loads(scan, tiny_bert, tmp_path):
    scan_dir, report = scan
    elsewhere = tmp_path / "scan_of_missing_model.json"  # as if the scan had run on a model absent here
    elsewhere.write_text(json.dumps({**report, "model": {**report["model"], "path": "/nonexistent-model-dir"}}))
    base = [*eval_overrides(tiny_bert), "model.path=/nonexistent-model-dir", "quant=auto"]
    cases = {
        "quant.target_bits=1.0: out of range": [f"quant.sensitivity={elsewhere}", "quant.target_bits=1.0"],
        "quant.target_bits=None: quant=auto needs a budget": [f"quant.sensitivity={elsewhere}"],
        "no such file": [f"quant.sensitivity={tmp_path}/none.json", "quant.target_bits=3"],
        "scanned model.path=": [f"quant.sensitivity={scan_dir / 'sensitivity.json'}", "quant.target_bits=3"],
        "quant.grid: unknown option 'bits'": [
            f"quant.sensitivity={elsewhere}",
            "quant.target_bits=3",
            "quant.grid={bits:4}",
        ],
        "quant.grid: name='bnb_nf4' is not a custom scheme": [
            f"quant.sensitivity={elsewhere}",
            "quant.target_bits=3",
            "quant.grid={name:bnb_nf4}",
        ],
        "quant.grid: cannot read model.path=/nonexistent-model-dir's config": [
            f"quant.sensitivity={elsewhere}",
            "quant.target_bits=3",
            "quant.grid={name:kmeans}",
        ],
        "quant.sensitivity_measure='mse'": [
            f"quant.sensitivity={elsewhere}",
            "quant.target_bits=3",
            "quant.sensitivity_measure=mse",
        ],
        "quant.kmeans_iters=5: quant=auto takes the scheme and its options from the scan": [
            f"quant.sensitivity={elsewhere}",
            "quant.target_bits=3",
            "quant.kmeans_iters=5",
        ],
    }
    for expected, extra in cases.items():
        with pytest.raises(InputError) as err:
            run_evaluate(compose_cfg(*base, *extra), tmp_path / "bad")
        assert expected in str(err.value) and "\n" not in str(err.value)
    # a valid choice in a run whose other options are bad: refused, and no choice file left behind
    with pytest.raises(InputError, match="index.nprobe"):
        run_evaluate(
            compose_cfg(*base, f"quant.sensitivity={elsewhere}", "quant.target_bits=5", "index.nprobe=0"),
            tmp_path / "bad_index",
        )
    assert not (tmp_path / "bad_index" / "quant").exists()
    with pytest.raises(
        InputError, match=r"^quant.grid: only quant=auto takes a grid \(this run's scheme is quant=nf\)$"
    ):
        run_evaluate(
            compose_cfg(*eval_overrides(tiny_bert), "quant=nf", "quant.bits=4", "quant.grid={name:kmeans}"), tmp_path
        )


def test_bad_scan_options_are_one_error_line(tiny_bert, tmp_path):
    base = [f"model.path={tiny_bert}", *TINY, GROUP]
    for extra, expected in (
        (["data.split=test"], "scan.dev=split with data.split=test"),
        (["scan.bits=[1,4]"], "scan.bits=[1, 4]: expected distinct integer widths in 2..8"),
        (["quant=bnb_nf4"], "quant=bnb_nf4: the scan quantizes one layer at a time"),
        (["scan.layers=[nothing.*]"], "scan.layers: 'nothing.*' matches no quantized nn.Linear"),
        (["quant.side=doc"], "quant.side=doc: the scan quantizes both encoders; use quant.side=both"),
    ):
        with pytest.raises(InputError, match=expected.replace("[", r"\[").replace("*", r"\*")):
            run_sensitivity(compose_scan(*base, *SCAN, *extra), tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "medret.sensitivity", "data.split=test", f"hydra.run.dir={tmp_path / 'cli'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
        "error: scan.dev=split with data.split=test: the scan's dev queries must not be the test queries; use "
        "data.split=train (SciFact) or scan.dev=holdout (a seeded share of the queries, e.g. MedQuAD)"
    ]
    assert not (tmp_path / "cli" / "sensitivity.json").exists()


def test_auto_over_a_holdout_scan_reports_only_the_other_queries(tiny_bert, tmp_path):
    """scan.dev=holdout (a set with only a test split) tunes on some test queries: evaluate leaves them out.
    A partial scan (scan.layers) also quantizes only the layers it measured."""
    data = ("data.split=test", "data.num_records=120", "data.num_queries=30")
    cfg = compose_scan(
        f"model.path={tiny_bert}",
        *TINY,
        GROUP,
        *SCAN,
        *data,
        "scan.dev=holdout",
        "scan.layers=[encoder.layer.0.*]",
        "scan.fidelity_texts=8",
        "scan.bits=[2,8]",
    )
    report = run_sensitivity(cfg, tmp_path / "scan")
    held = set(report["dev"]["query_ids"])
    assert len(held) == 8 and report["dev"]["data"] == "synthetic-120-s13-test"
    res = run_evaluate(
        compose_cfg(
            *eval_overrides(tiny_bert),
            *data,
            "quant=auto",
            "quant.target_bits=5",
            f"quant.sensitivity={tmp_path / 'scan' / 'sensitivity.json'}",
        ),
        tmp_path / "eval",
    )
    assert res["quant"]["auto"]["dev_queries_left_out"] == 8 and res["data"]["num_queries"] == 22
    reported = {json.loads(line)["query_id"] for line in (tmp_path / "eval" / "per_query.jsonl").open()}
    assert len(reported) == 22 and not reported & held
    assert {layer["name"] for layer in res["quant"]["layers"]} == set(res["quant"]["auto"]["bits_per_layer"])
    assert all(name.startswith("encoder.layer.0.") for name in res["quant"]["auto"]["bits_per_layer"])


def test_a_sensitivity_sweep_summary_reads_its_scans(scan, tmp_path):
    """conf/sensitivity.yaml ends a multirun with the summary table: a scan's row shows its figures,
    not "no results"."""
    import shutil

    from medret.launch.summary import format_table, job_rows

    run_dir, report = scan
    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- scan.bits=[2,8]\n")
    shutil.copy(run_dir / "sensitivity.json", job / "sensitivity.json")
    [row] = job_rows(tmp_path / "sweep")
    assert "result" not in row and row["layers"] == str(len(report["layers"]))
    assert row["fp32 dev ndcg@10"] == f"{report['fp32']['dev_ndcg@10']:.4f}"
    pooled = report["correlation"]["pooled"]["fidelity_drop"]
    assert row["rho fidelity"] == ("-" if pooled is None else f"{pooled:+.3f}")
    assert "fp32 dev ndcg@10" in format_table([row])
