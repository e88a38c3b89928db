"""The evaluate spine end to end: Hydra composition, outputs, TREC run, W&B offline, sweeps, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from medret.config import register_configs
from medret.evaluation import run_evaluate

ROOT = Path(__file__).resolve().parents[1]
register_configs()


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))


def tiny_overrides(tiny_bert: Path, *extra: str) -> list[str]:
    return [
        "model=minilm",
        f"model.path={tiny_bert}",
        "model.name=tiny",
        "data.num_records=300",
        "data.num_queries=40",
        "eval.k_values=[1,5,10,100]",
        *extra,
    ]


def test_defaults_compose_and_typos_are_rejected():
    cfg = compose_cfg()
    assert (cfg.data.name, cfg.model.name, cfg.quant.name, cfg.index.name, cfg.logger.name) == (
        "synthetic",
        "minilm",
        "none",
        "flat",
        "wandb",
    )
    assert cfg.logger.mode == "offline" and cfg.logger.log_text is False
    assert cfg.model.trust_remote_code is False
    assert list(cfg.eval.k_values) == [1, 3, 5, 10, 100]
    with pytest.raises(ConfigCompositionException, match="num_recods"):
        compose_cfg("data.num_recods=5")
    with pytest.raises(ConfigCompositionException):
        compose_cfg("index=no_such_index")


def read_trec_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, {})[d] = float(s)
    return run


def wandb_summary(run_dir: Path) -> dict:
    exe = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(exe), "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


def test_run_writes_results_trec_per_query_and_wandb_without_text(tiny_bert, tmp_path):
    # its own cache: encode throughput is measured only when this run encodes (another test may have cached the set)
    cache = f"cache.dir={tmp_path / 'cache'}"
    cfg = compose_cfg(*tiny_overrides(tiny_bert, "logger.mode=offline", "logger.group=g1", cache))
    res = run_evaluate(cfg, tmp_path)

    on_disk = json.loads((tmp_path / "results.json").read_text())
    for key in ("ndcg@10", "recall@100", "precision@10", "f1@10", "mrr@10", "map@100", "ndcg@1"):
        assert 0.0 <= on_disk["metrics"][key] <= 1.0
    lo, hi = on_disk["metrics_ci95"]["ndcg@10"]
    assert lo <= on_disk["metrics"]["ndcg@10"] <= hi
    thr = on_disk["throughput"]
    assert thr["encode_docs_per_s"] > 0 and thr["search_qps"] > 0 and thr["peak_rss_bytes"] > 0
    assert thr["latency_ms_p50"] <= thr["latency_ms_p95"]
    assert on_disk["sizes"]["embedding_bytes"] == 300 * 32 * 4
    import faiss

    dev = on_disk["device"]
    assert dev == {"encoder": "cpu", "index": "cpu", "cpu_threads": dev["cpu_threads"], "faiss_simd": dev["faiss_simd"]}
    assert dev["faiss_simd"] == faiss.SIMDConfig.get_level_name()  # the level faiss dispatches to at run time
    assert on_disk["config"]["data"]["num_records"] == 300 and on_disk["versions"]["faiss-cpu"]
    assert set(on_disk["by_category"]) == {"synonym", "condition_medication", "lab_threshold", "negation"}
    assert "commit" in on_disk["git"]

    rows = [json.loads(x) for x in (tmp_path / "per_query.jsonl").read_text().splitlines()]
    assert len(rows) == on_disk["data"]["num_queries"] and "query_text" not in rows[0]
    assert np.isclose(np.mean([r["ndcg@10"] for r in rows]), on_disk["metrics"]["ndcg@10"])

    # trec_eval (pytrec_eval) reading our run file agrees with our metrics
    from medret.data import load_dataset

    ds = load_dataset(cfg.data)
    ref = pytrec_eval.RelevanceEvaluator(
        {q: dict(j) for q, j in ds.qrels.items()}, {"ndcg_cut.10", "P.10", "recall.100"}
    ).evaluate(read_trec_run(tmp_path / "run.trec"))
    assert np.isclose(np.mean([v["ndcg_cut_10"] for v in ref.values()]), on_disk["metrics"]["ndcg@10"])
    assert np.isclose(np.mean([v["recall_100"] for v in ref.values()]), on_disk["metrics"]["recall@100"])

    # W&B offline run, read back from its files: same config and summary, no query/record text
    wb_dir = Path(res["wandb"]["dir"])
    assert wb_dir.is_relative_to(tmp_path)
    summary = wandb_summary(wb_dir)
    assert summary["state"] == "finished"
    assert summary["config"]["data"]["num_records"] == 300 and summary["config"]["logger"]["group"] == "g1"
    assert np.isclose(summary["summary"]["ndcg@10"], on_disk["metrics"]["ndcg@10"])
    assert np.isclose(summary["summary"]["category/negation/ndcg@10"], on_disk["by_category"]["negation"]["ndcg@10"])
    blob = b"".join(p.read_bytes() for p in wb_dir.rglob("*") if p.is_file())
    for text in ds.query_texts[:10] + ds.doc_texts[:5]:
        assert text.encode() not in blob
    assert b"q00000" in blob  # ids do go to W&B


def test_log_text_opt_in_puts_query_text_in_wandb_table(tiny_bert, tmp_path):
    cfg = compose_cfg(*tiny_overrides(tiny_bert, "logger.log_text=true", "write_text=true"))
    run_evaluate(cfg, tmp_path)
    from medret.data import load_dataset

    first = load_dataset(cfg.data).query_texts[0]
    blob = b"".join(p.read_bytes() for p in (tmp_path / "wandb").rglob("*.table.json"))
    assert json.dumps(first)[1:-1].encode() in blob
    assert json.loads((tmp_path / "per_query.jsonl").read_text().splitlines()[0])["query_text"]


def test_passages_fold_back_to_records(tiny_bert, tmp_path):
    cfg = compose_cfg(*tiny_overrides(tiny_bert, "logger=none", "data.passage_tokens=24", "data.passage_stride=4"))
    res = run_evaluate(cfg, tmp_path)
    assert res["data"]["num_passages"] > 2 * res["data"]["num_docs"]
    run = read_trec_run(tmp_path / "run.trec")
    assert all(len(hits) == 100 and all(d.startswith("rec") for d in hits) for hits in run.values())


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def test_cli_bad_input_is_one_error_line_before_model_load(tmp_path):
    # a folder that passes the cheap folder check but cannot load: every error below comes before any load
    fake = tmp_path / "unloadable-model"
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    (fake / "model.safetensors").write_bytes(b"not weights")
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n')
    (beir / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    (beir / "qrels" / "test.tsv").write_text("q\ta\t1\n")
    proc = run_cli(
        "data=beir",
        f"data.path={beir}",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"model.path={fake}",
    )
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {beir / 'corpus.jsonl'}:2: malformed JSON (Expecting value at column 22)"]
    assert not (tmp_path / "run" / "results.json").exists()

    (beir / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n')
    proc = run_cli(
        "data=beir",
        f"data.path={beir}",
        "logger=none",
        "eval.k_values=[1,10]",
        f"hydra.run.dir={tmp_path / 'run2'}",
        f"model.path={fake}",
    )
    assert proc.returncode == 2
    assert "error: eval.k_values: k=10 is larger than the corpus of beir-test (2 documents)" in proc.stderr

    proc = run_cli("data.num_recods=5", f"hydra.run.dir={tmp_path / 'run3'}")
    assert proc.returncode != 0 and "num_recods" in proc.stderr


def wandb_run_record(run_dir: Path) -> dict:
    exe = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(exe), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, check=True, timeout=120
    )
    return next(json.loads(x)["run"] for x in out.stdout.splitlines() if '"type":"run"' in x)


@pytest.mark.slow
def test_cli_multirun_sweep_writes_every_job(tiny_bert, tmp_path):
    proc = run_cli(
        "-m",
        *tiny_overrides(tiny_bert, "logger=wandb", "logger.mode=offline", "data.seed=1,2"),
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 2
    seeds = {json.loads(p.read_text())["config"]["data"]["seed"] for p in results}
    assert seeds == {1, 2}
    runs = []
    for p in results:
        assert (p.parent / "run.trec").stat().st_size > 0 and (p.parent / "per_query.jsonl").exists()
        runs.append(wandb_run_record(Path(json.loads(p.read_text())["wandb"]["dir"])))
    # one W&B group per sweep, job type, a name from the overrides, tags for scheme and index
    assert runs[0]["run_group"] == runs[1]["run_group"] == f"{tmp_path.name}-sweep"  # <date>-<time> by default
    assert {r["job_type"] for r in runs} == {"evaluate"}
    assert "data.seed=1" in runs[0]["display_name"] and "scheme:none" in runs[0]["tags"]
    # the same run dir maps to the same W&B run id: a requeued job continues its run
    first = json.loads(results[0].read_text())["wandb"]["run_id"]
    proc = run_cli(*tiny_overrides(tiny_bert, "logger=wandb", "data.seed=1"), f"hydra.run.dir={results[0].parent}")
    assert proc.returncode == 0 and json.loads(results[0].read_text())["wandb"]["run_id"] == first


def test_quantized_run_reports_fidelity_deltas_verdict_and_reuses_the_fp32_baseline(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    fp32 = run_evaluate(compose_cfg(*tiny_overrides(tiny_bert, "logger=none", f"cache.dir={cache}")), tmp_path / "fp32")
    baseline = Path(fp32["baseline_cache"])
    assert baseline.is_file() and "verdict" not in fp32
    stamp = baseline.stat().st_mtime_ns

    res = run_evaluate(
        compose_cfg(
            *tiny_overrides(
                tiny_bert, "quant=uniform", "quant.bits=3", "quant.group_size=16", "logger=wandb", f"cache.dir={cache}"
            )
        ),
        tmp_path / "u3",
    )
    assert res["baseline_cache"] == str(baseline) and baseline.stat().st_mtime_ns == stamp  # reused, not recomputed
    d = res["deltas"]["ndcg@10"]
    assert d["fp32"] == pytest.approx(fp32["metrics"]["ndcg@10"])
    assert d["delta"] == pytest.approx(res["metrics"]["ndcg@10"] - fp32["metrics"]["ndcg@10"])
    assert d["ci95"][0] <= d["delta"] <= d["ci95"][1]
    v = res["verdict"]
    assert v["accept"] == (v["drop_upper_ci95"] <= 0.01) and v["drop_upper_ci95"] == pytest.approx(-d["ci95"][0])
    assert v["drop_lower_ci95"] == pytest.approx(-d["ci95"][1])
    expected = "accept" if v["accept"] else ("reject" if v["drop_lower_ci95"] > 0.01 else "inconclusive")
    assert v["outcome"] == expected and v["queries"] == len(rows_of(tmp_path / "u3"))
    fid = res["fidelity"]
    assert 0 < fid["embedding_cosine"]["min"] <= fid["embedding_cosine"]["mean"] <= 1
    assert 0 <= fid["ranking"]["top10_overlap"] <= 1 and 0 <= fid["ranking"]["rbo_p0.9"] <= 1
    assert 3.0 < res["quant"]["effective_bits_per_param"] < 4.5
    assert all("sqnr_db" in layer and "mse" in layer for layer in res["quant"]["layers"])
    neg = res["by_category"]["negation"]
    assert "delta_ndcg@10" in neg
    rows = [json.loads(x) for x in (tmp_path / "u3" / "per_query.jsonl").read_text().splitlines()]
    assert {"delta_ndcg@10", "top10_overlap_fp32", "rbo_fp32"} <= set(rows[0])
    summary = wandb_summary(Path(res["wandb"]["dir"]))["summary"]
    assert summary["verdict/accept"] == int(v["accept"]) and summary["verdict/outcome"] == v["outcome"]
    assert summary["delta/ndcg@10"] == pytest.approx(d["delta"])


def test_cli_quant_errors_come_before_model_load(tmp_path):
    proc = run_cli(
        "quant=uniform", "quant.bits=9", "model.path=/nonexistent-model-dir", "logger=none", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode == 2
    assert "error: quant.bits=9: scheme uniform needs an integer width in 2..8" in proc.stderr
    proc = run_cli("eval.gate_metric=ndcg@7", "model.path=/nonexistent-model-dir", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "error: eval.gate_metric='ndcg@7': expected <metric>@<k>" in proc.stderr
    proc = run_cli("quant=gptq", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0 and "gptq" in proc.stderr


def test_slurm_launcher_without_slurm_is_one_clear_error(tiny_bert, tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no sbatch/sinfo on this PATH
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            "-m",
            "hydra/launcher=slurm",
            *tiny_overrides(tiny_bert, "logger=none"),
            f"hydra.sweep.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: hydra/launcher=slurm: no SLURM controller reachable (the SLURM client commands")
    )
    assert not list(tmp_path.glob("*/results.json"))


def test_fisher_kmeans_through_evaluate_gets_calibration_texts(tiny_bert, tmp_path):
    res = run_evaluate(
        compose_cfg(
            *tiny_overrides(
                tiny_bert, "logger=none", "quant=fisher_kmeans", "quant.bits=3", "quant.calibration_texts=16"
            )
        ),
        tmp_path,
    )
    assert res["quant"]["scheme"] == "fisher_kmeans" and "verdict" in res
    assert res["quant"]["effective_bits_per_param"] > 3.0  # + per-row codebooks: large on a 32-wide toy model


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "per_query.jsonl").read_text().splitlines()]
