"""python -m medret.report: table, CSV, PNG plots; partial jobs listed; mixed datasets refused."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.report import pareto_front, write_report
from tests.test_evaluate import compose_cfg, tiny_overrides


@pytest.fixture(scope="module")
def sweep(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    cache = root.parent / "cache"
    for i, extra in enumerate(
        [
            [],
            ["quant=uniform", "quant.bits=3", "quant.group_size=16"],
            ["quant=nf", "quant.bits=4", "quant.group_size=16"],
        ]
    ):
        cfg = compose_cfg(*tiny_overrides(tiny_bert, "logger=none", f"cache.dir={cache}", *extra))
        run_evaluate(cfg, root / str(i))
    (root / "3" / ".hydra").mkdir(parents=True)  # a job that started and was killed before results.json
    (root / "3" / ".hydra" / "overrides.yaml").write_text("- quant=kmeans\n")
    return root


def test_report_table_csv_and_plots(sweep):
    rep, files = write_report([sweep])
    assert len(rep.rows) == 3 and rep.partial == [f"{sweep.name}/3"]
    md = (sweep / "report.md").read_text()
    assert "| uniform | 3 |" in md and "Partial runs" in md and f"{sweep.name}/3" in md
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [r["status"] for r in rows].count("partial") == 1
    base = next(r for r in rows if r["scheme"] == "none")
    assert base["verdict"] == "baseline" and float(base["eff_bits"]) == 32.0
    u3 = next(r for r in rows if r["scheme"] == "uniform")
    assert u3["verdict"] in ("accept", "reject") and u3["ci95"].startswith("[")
    import matplotlib.image as mpimg

    pngs = [f for f in files if f.suffix == ".png"]
    assert {p.name for p in pngs} == {"pareto_size_ndcg10.png", "category_delta_ndcg10.png"}
    for p in pngs:
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01  # a drawn figure, not blank


def test_mixed_datasets_are_refused_and_cli_reports_it(sweep, tiny_bert, tmp_path):
    other = tmp_path / "other"
    run_evaluate(compose_cfg(*tiny_overrides(tiny_bert, "logger=none", "data.seed=99")), other / "0")
    with pytest.raises(InputError, match="mixed datasets in one report"):
        write_report([sweep, other], tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "medret.report", str(sweep), str(other), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: mixed datasets in one report")
    proc = subprocess.run(
        [sys.executable, "-m", "medret.report", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_pareto_front():
    pts = [(90, 0.64), (54, 0.64), (59, 0.65), (40, 0.50), (60, 0.60)]
    assert pareto_front(pts) == [3, 1, 2]


def test_rows_from_a_wandb_run_equal_rows_from_its_results_json(tiny_bert, tmp_path):
    import json

    from medret.report import results_from_wandb, row_of
    from tests.test_evaluate import wandb_summary

    cfg = compose_cfg(
        *tiny_overrides(
            tiny_bert,
            "logger=wandb",
            "logger.mode=offline",
            "quant=uniform",
            "quant.bits=3",
            "quant.group_size=16",
            f"cache.dir={tmp_path / 'cache'}",
        )
    )
    res = run_evaluate(cfg, tmp_path / "run")
    readback = wandb_summary(Path(res["wandb"]["dir"]))  # the offline run's own files, as W&B stores them
    from_wandb = row_of(results_from_wandb(readback["config"], readback["summary"]), "run")
    from_file = row_of(json.loads((tmp_path / "run" / "results.json").read_text()), "run")
    for key in (
        "model",
        "scheme",
        "bits",
        "eff_bits",
        "model_MB",
        "index",
        "ndcg@10",
        "recall@100",
        "f1@10",
        "delta_ndcg@10",
        "ci95",
        "verdict",
        "qps",
    ):
        assert from_wandb[key] == from_file[key], key
