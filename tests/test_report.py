"""python -m medret.report: table, CSV, PNG plots; partial jobs listed; one section and PNG set per data set."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medret.evaluation import run_evaluate
from medret.report import (
    deploy_bytes,
    encode_rate,
    pareto_front,
    pareto_front_max,
    retention_points,
    sanitize,
    score_of,
    write_report,
)
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
    assert u3["verdict"].split(" ")[0] in ("accept", "reject", "inconclusive") and u3["ci95"].startswith("[")
    import matplotlib.image as mpimg

    pngs = [f for f in files if f.suffix == ".png"]
    # runs judged by acceptance profiles (criterion rows in results.json) also get the slice plot
    judged = any(p.criteria for r in rep.results for p in r.profiles.values())
    assert {p.name for p in pngs} == {
        "pareto_size_ndcg10.png",
        "category_delta_ndcg10.png",
        "pareto_speed_ndcg10.png",
        "retention_bits.png",
    } | ({"slice_delta_ndcg10.png"} if judged else set())
    assert (sweep / "decision_matrix.md").is_file() and (sweep / "decision_matrix.csv").is_file()
    for p in pngs:
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01  # a drawn figure, not blank


def test_runs_of_several_datasets_report_per_dataset_and_cli_reports_it(sweep, tiny_bert, tmp_path):
    # a sweep over data.seed is several data sets: one section and one PNG set each, not an error
    other = tmp_path / "other"
    run_evaluate(compose_cfg(*tiny_overrides(tiny_bert, "logger=none", "data.seed=99")), other / "0")
    rep, files = write_report([sweep, other], tmp_path / "out")
    groups = rep.by_dataset()
    assert len(groups) == 2 and sorted(len(g.rows) for g in groups.values()) == [1, 3]
    md = (tmp_path / "out" / "report.md").read_text()
    names = {p.name for p in files}
    for name in groups:
        assert f"## {name}" in md and f"pareto_size_ndcg10_{sanitize(name)}.png" in names
    assert "pareto_size_ndcg10.png" not in names  # suffixed when there is more than one data set
    proc = subprocess.run(
        [sys.executable, "-m", "medret.report", str(sweep), str(other), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "2 data sets" in proc.stdout, proc.stderr
    assert len(list((tmp_path / "o").glob("pareto_size_ndcg10_*.png"))) == 2
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


# --- fake results.json files: the report's logic and plots without running a model ---

FP32_NDCG = 0.645
MINILM_MB = 90.9


def fake_result(
    scheme: str,
    bits: int | None,
    eff: float,
    mb: float,
    ndcg: float,
    docs_s: float | None,
    *,
    runtime: tuple[str, str, float] | None = None,
    threads: int = 2,
    dataset: str = "synthetic-300-s1-test",
) -> dict:
    """A results.json as evaluate writes it now (runtime: (name, quantize mode, MB on disk))."""
    res = {
        "config": {"model": {"name": "minilm"}, "quant": {"name": scheme, "bits": bits}, "index": {"name": "flat"}},
        "data": {"name": dataset, "num_docs": 300, "num_queries": 40},
        "metrics": {"ndcg@10": ndcg, "recall@100": 0.9, "precision@10": 0.08, "f1@10": 0.15},
        "metrics_ci95": {"ndcg@10": [ndcg - 0.04, ndcg + 0.04]},
        "by_category": {"negation": {"ndcg@10": ndcg}, "abbreviation": {"ndcg@10": ndcg}},
        "throughput": {"encode_docs_per_s": docs_s, "search_qps": 9000.0},
        "sizes": {"model_param_bytes": int(mb * 1e6), "fp32_model_param_bytes": int(MINILM_MB * 1e6)},
        "quant": {
            "scheme": scheme,
            "bits": bits,
            "effective_bits_per_param": eff,
            # embeddings stay fp32 in the custom schemes: over all parameters the bits are higher
            "effective_bits_per_param_all": eff if scheme in ("none", "fp16") else eff + 6.0,
            "model_bytes": int(mb * 1e6),
        },
        "index": {"factory": "Flat"},
        "device": {"encoder": "cpu", "index": "cpu", "cpu_threads": threads},
        "runtime": {"name": "torch", "quantize": "none", "bytes_on_disk": None, "threads": threads},
    }
    if runtime:
        name, mode, disk_mb = runtime
        res["runtime"] = {"name": name, "quantize": mode, "bytes_on_disk": int(disk_mb * 1e6), "threads": threads}
    if scheme != "none" or runtime:
        delta = ndcg - FP32_NDCG
        res["deltas"] = {"ndcg@10": {"fp32": FP32_NDCG, "delta": delta, "ci95": [delta - 0.02, delta + 0.02]}}
        res["verdict"] = {"accept": delta > -0.01, "max_drop": 0.01}
        for cat in res["by_category"].values():
            cat["delta_ndcg@10"] = delta
    return res


FAKE_RUNS = {  # name -> fake_result args: MiniLM-sized numbers like a real SciFact sweep's
    "none": ("none", None, 32.0, MINILM_MB, FP32_NDCG, 14.0),
    "fp16": ("fp16", None, 16.0, 45.4, FP32_NDCG, 30.0),
    "uniform-2": ("uniform", 2, 2.25, 51.4, 0.006, 9.0),
    "uniform-4": ("uniform", 4, 4.25, 54.0, 0.631, 27.0),
    "uniform-8": ("uniform", 8, 8.26, 59.4, 0.646, 29.0),
    "nf-2": ("nf", 2, 2.25, 51.4, 0.022, 9.4),
    "nf-3": ("nf", 3, 3.25, 52.7, 0.612, 13.5),
    "nf-4": ("nf", 4, 4.25, 54.0, 0.6447, None),  # embeddings from the cache: no encode timing
    "nf-8": ("nf", 8, 8.26, 59.4, 0.6472, 28.6),
    "bnb_int8": ("bnb_int8", 8, 8.06, 59.1, 0.6463, 9.1),
}
RUNTIME_RUNS = {  # name -> (args, runtime): exported runtimes, sized by their files on disk
    "onnx-int8": (("none", None, 32.0, MINILM_MB, 0.640, 60.0), ("onnx", "dynamic_int8", 23.0)),
    "ov-int4": (("none", None, 32.0, MINILM_MB, 0.610, 45.0), ("openvino", "int4_weights", 16.5)),
}


def write_fake_sweep(root: Path, dataset: str = "synthetic-300-s1-test") -> Path:
    for name, args in FAKE_RUNS.items():
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_text(json.dumps(fake_result(*args, dataset=dataset)))
    for name, (args, rt) in RUNTIME_RUNS.items():
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_text(json.dumps(fake_result(*args, runtime=rt, dataset=dataset)))
    (root / "uniform-4-t4").mkdir()  # the same run on 4 threads: its speed is not comparable to 2 threads'
    (root / "uniform-4-t4" / "results.json").write_text(
        json.dumps(fake_result(*FAKE_RUNS["uniform-4"][:5], 50.0, threads=4, dataset=dataset))
    )
    return root


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 10_000, path
    img = mpimg.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 600 and img.std() > 0.01, path  # drawn, not blank


def test_fake_sweep_plots_fronts_and_table_columns(tmp_path):
    root = write_fake_sweep(tmp_path / "sweep")
    rep, files = write_report([root])
    assert len(rep.rows) == 13 and not rep.partial
    pngs = {p.name: p for p in files if p.suffix == ".png"}
    assert set(pngs) == {
        "pareto_size_ndcg10.png",
        "pareto_speed_ndcg10_cpu-2t.png",  # two device/threads groups: one PNG each
        "pareto_speed_ndcg10_cpu-4t.png",
        "retention_bits.png",
        "category_delta_ndcg10.png",
    }
    for p in pngs.values():
        _png_ok(p)
    names = [r["run"].split("/")[-1] for r in rep.rows]

    # (a) x is the deployable model: the runtime's files for onnx/openvino, the torch parameters otherwise
    size = [(deploy_bytes(r), score_of(r)) for r in rep.results]
    assert [names[i] for i in pareto_front(size)] == ["ov-int4", "onnx-int8", "fp16", "bnb_int8", "nf-8"]
    # (b) within cpu/2 threads, the untimed (cached) nf-4 left out: faster and better
    two = [(r, n) for r, n in zip(rep.results, names) if r["device"]["cpu_threads"] == 2 and encode_rate(r)]
    speed = [(encode_rate(r), score_of(r)) for r, _ in two]
    assert [two[i][1] for i in pareto_front_max(speed)] == ["nf-8", "uniform-8", "fp16", "onnx-int8"]
    # (c) retention against the fp32 score in deltas; fp32 itself is 1.0
    ret = {names[rep.results.index(r)]: y for r, _, y, _ in retention_points(rep.results)}
    assert ret["none"] == 1.0 and abs(ret["nf-3"] - 0.612 / FP32_NDCG) < 1e-9 and len(ret) == 13

    md = (root / "report.md").read_text()
    assert "| runtime |" in md and "| disk_MB |" in md and "| eff_bits_all |" in md
    assert "1 without an encode timing" in md and "pareto_speed_ndcg10_cpu-4t.png" in md
    rows = {r["run"].split("/")[-1]: r for r in csv.DictReader((root / "report.csv").open())}
    assert rows["onnx-int8"]["runtime"] == "onnx/dynamic_int8" and float(rows["onnx-int8"]["disk_MB"]) == 23.0
    assert rows["nf-3"]["runtime"] == "torch" and rows["nf-3"]["disk_MB"] == ""
    assert float(rows["nf-3"]["eff_bits_all"]) == 9.25 and float(rows["nf-3"]["eff_bits"]) == 3.25


def test_pareto_front_max():
    pts = [(10, 0.60), (30, 0.64), (20, 0.64), (5, 0.65), (30, 0.50), (40, 0.40)]
    assert pareto_front_max(pts) == [3, 1, 5]  # (20, .64) is beaten by (30, .64); x ties keep the better


def old_style(res: dict) -> dict:
    """What an evaluate run before runtimes wrote: no runtime, device, all-parameter bits, fp32 in deltas."""
    res = json.loads(json.dumps(res))
    for key in ("runtime", "device", "metrics_ci95", "by_category"):
        res.pop(key)
    res["quant"].pop("effective_bits_per_param_all")
    for d in res.get("deltas", {}).values():
        d.pop("fp32")
    return res


def test_old_results_without_the_new_keys_still_report(tmp_path):
    root = tmp_path / "old"
    for name in ("none", "uniform-4", "nf-3", "nf-4"):
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_text(json.dumps(old_style(fake_result(*FAKE_RUNS[name]))))
    rep, files = write_report([root])
    assert len(rep.rows) == 4 and not rep.partial
    assert {r["runtime"] for r in rep.rows} == {"torch"} and {r["disk_MB"] for r in rep.rows} == {""}
    assert {r["eff_bits_all"] for r in rep.rows} == {""}
    pngs = {p.name: p for p in files if p.suffix == ".png"}
    assert set(pngs) == {"pareto_size_ndcg10.png", "pareto_speed_ndcg10.png", "retention_bits.png"}
    for p in pngs.values():
        _png_ok(p)
    ret = {rep.rows[rep.results.index(r)]["run"].split("/")[-1]: y for r, _, y, _ in retention_points(rep.results)}
    assert abs(ret["nf-3"] - 0.612 / FP32_NDCG) < 1e-9  # fp32 = score - delta when deltas lack it
    assert "unknown, default threads: 4 runs, 1 without an encode timing" in (root / "report.md").read_text()


def test_fake_datasets_get_suffixed_pngs_and_one_section_each(tmp_path):
    root = tmp_path / "seeds"
    for seed in (1, 2):
        write_fake_sweep(root / f"seed{seed}", dataset=f"synthetic-300-s{seed}-test")
    rep, files = write_report([root])
    assert len(rep.by_dataset()) == 2 and len(rep.rows) == 26
    md = (root / "report.md").read_text()
    assert md.startswith("# medret report: 2 data sets")
    assert "## synthetic-300-s1-test" in md and "## synthetic-300-s2-test" in md
    names = {p.name for p in files}
    for seed in (1, 2):
        sfx = f"_synthetic-300-s{seed}-test"
        assert {f"pareto_size_ndcg10{sfx}.png", f"retention_bits{sfx}.png"} <= names
        assert f"pareto_speed_ndcg10_cpu-4t{sfx}.png" in names and f"category_delta_ndcg10{sfx}.png" in names
    assert {r["dataset"] for r in csv.DictReader((root / "report.csv").open())} == {
        "synthetic-300-s1-test",
        "synthetic-300-s2-test",
    }


def test_old_verdicts_read_the_same_in_the_report_and_the_sweep_summary(tmp_path):
    # before the third outcome only `accept` was stored: a CI straddling the gate is inconclusive everywhere
    from medret.launch.summary import job_rows

    root = tmp_path / "old"
    for i, name in enumerate(("uniform-4", "nf-2")):
        res = fake_result(*FAKE_RUNS[name])
        del res["verdict"]["accept"]
        res["verdict"] |= {"accept": False, "metric": "ndcg@10"}
        res["deltas"]["ndcg@10"]["ci95"] = [-0.03, 0.005] if name == "uniform-4" else [-0.7, -0.6]
        (root / str(i) / ".hydra").mkdir(parents=True)
        (root / str(i) / ".hydra" / "overrides.yaml").write_text(f"- run={name}\n")
        (root / str(i) / "results.json").write_text(json.dumps(res))
    rep, _ = write_report([root])
    assert [r["verdict"] for r in rep.rows] == ["inconclusive", "reject"]
    assert [r["verdict"] for r in job_rows(root)] == ["inconclusive", "reject"]


# --- acceptance profiles: the decision matrix, the slice plot and the sweep summary's profiles column ---

PROFILES = {  # name -> (metric, margin, slices)
    "screening": ("recall@100", 0.02, ["all"]),
    "decision_support": ("ndcg@10", 0.01, ["all"]),
    "precision_critical": ("ndcg@10", 0.01, ["all", "numeric", "negation", "abbreviation"]),
    "exploration": ("ndcg@10", 0.05, ["all"]),
}
SLICES = {"all": 40, "numeric": 35, "negation": 31, "abbreviation": 12}  # abbreviation: under the minimum


def with_profiles(res: dict, losses: dict[str, float]) -> dict:
    """``res`` judged by PROFILES: each slice's delta is -losses[slice] (0 if not given), CI +- 0.005."""
    res = json.loads(json.dumps(res))
    res["slices"] = {s: {"num_queries": n, "critical": s != "all"} for s, n in SLICES.items()}
    res["profiles"] = {}
    for name, (metric, margin, slices) in PROFILES.items():
        rows = []
        for s in slices:
            d = -losses.get(s, 0.0)
            small = SLICES[s] < 30
            outcome = "too_small" if small else ("reject" if d + 0.005 < -margin else "accept")
            outcome = "inconclusive" if not small and d - 0.005 < -margin <= d + 0.005 else outcome
            rows.append(
                {"metric": metric, "max_drop": margin, "slice": s, "n": SLICES[s], "fp32": 0.6, "delta": d}
                | {"ci95": [d - 0.005, d + 0.005], "outcome": outcome, "queries_to_decide": 900}
            )
        judged = [r for r in rows if r["outcome"] != "too_small"]
        worst = next((r for r in judged if r["outcome"] == "reject"), None)
        worst = worst or next((r for r in judged if r["outcome"] == "inconclusive"), None)
        res["profiles"][name] = {
            "outcome": worst["outcome"] if worst else "accept",
            "decided_by": f"{worst['metric']} on {worst['slice']}" if worst else None,
            "correction": "holm",
            "criteria": rows,
        }
    return res


def write_profiled_sweep(root: Path) -> Path:
    runs = {  # job -> (fake run, per-slice losses); None: no profiles (the fp32 baseline, an old run)
        "0": ("none", None),
        "1": ("nf-4", {}),
        "2": ("nf-3", {"negation": 0.08}),  # fine overall, lost on negated queries
        "3": ("uniform-2", {"all": 0.3, "numeric": 0.3, "negation": 0.3}),
        "4": ("uniform-4", {"all": 0.012}),  # the CI straddles decision support's margin
        "5": ("nf-8", None),  # a run from before profiles
    }
    for job, (name, losses) in runs.items():
        res = fake_result(*FAKE_RUNS[name])
        (root / job / ".hydra").mkdir(parents=True)
        (root / job / ".hydra" / "overrides.yaml").write_text(f"- run={name}\n")
        (root / job / "results.json").write_text(json.dumps(res if losses is None else with_profiles(res, losses)))
    return root


def test_decision_matrix_names_what_decided_each_profile(tmp_path):
    root = write_profiled_sweep(tmp_path / "sweep")
    rep, files = write_report([root])
    assert {"decision_matrix.md", "decision_matrix.csv"} <= {p.name for p in files}
    rows = {r["run"].split("/")[-1]: r for r in csv.DictReader((root / "decision_matrix.csv").open())}
    assert list(rows["1"])[:8] == ["run", "scheme", "bits", "runtime", *PROFILES]
    assert {rows["1"][p] for p in PROFILES} == {"accept"}
    assert rows["2"]["precision_critical"] == "reject: ndcg@10 on negation"
    assert rows["2"]["decision_support"] == "accept"
    assert rows["3"]["screening"] == "reject: recall@100 on all" and rows["3"]["exploration"].startswith("reject")
    assert rows["4"]["decision_support"] == "inconclusive: ndcg@10 on all (~900 queries to decide)"
    assert rows["4"]["exploration"] == "accept"
    for job in ("0", "5"):  # no profiles: empty cells, still listed
        assert {rows[job][p] for p in PROFILES} == {""}
    md = (root / "decision_matrix.md").read_text()
    assert "| run | scheme | bits | runtime | screening | decision_support |" in md
    assert "reject: ndcg@10 on negation" in md and "- precision_critical: 1 accept, 2 reject, 1 inconclusive" in md


def test_slice_plot_shows_a_loss_confined_to_a_critical_slice(tmp_path):
    from medret.report.slices import slice_metric, slice_rows

    root = write_profiled_sweep(tmp_path / "sweep")
    rep, files = write_report([root])
    pngs = {p.name: p for p in files if p.suffix == ".png"}
    assert "slice_delta_ndcg10.png" in pngs
    _png_ok(pngs["slice_delta_ndcg10.png"])
    nf3 = next(r for r in rep.results if r.bits == 3)
    assert slice_metric(rep.results) == "ndcg@10"
    rows, source = slice_rows(nf3, "ndcg@10")  # the profile judging nDCG@10 on the most slices
    assert source == "precision_critical" and set(rows) == set(SLICES)
    assert rows["negation"].outcome == "reject" and rows["all"].outcome == "accept"
    assert rows["abbreviation"].outcome == "too_small"


def test_runs_without_profiles_draw_no_slice_plot_and_an_empty_matrix(tmp_path):
    root = write_fake_sweep(tmp_path / "sweep")
    _, files = write_report([root])
    assert not any(p.name.startswith("slice_delta") for p in files)
    md = (root / "decision_matrix.md").read_text()
    assert "No run of this data set was judged by a profile" in md
    rows = list(csv.DictReader((root / "decision_matrix.csv").open()))
    assert len(rows) == 13 and list(rows[0]) == ["run", "scheme", "bits", "runtime", "dataset"]


def test_sweep_summary_shows_each_profiles_outcome(tmp_path):
    from medret.launch.summary import SweepSummary, job_rows, short_names

    root = write_profiled_sweep(tmp_path / "sweep")
    rows = {r["job"]: r for r in job_rows(root)}
    assert rows["1"]["profiles"] == "scr:A dec:A pre:A exp:A"
    assert rows["2"]["profiles"] == "scr:A dec:A pre:R exp:A"
    assert rows["4"]["profiles"] == "scr:A dec:I pre:I exp:A"
    assert "profiles" not in rows["0"] and "profiles" not in rows["5"]
    assert short_names(["screening", "screening_strict", "exploration"]) == {
        "screening": "screening",
        "screening_strict": "screening_",
        "exploration": "exp",
    }
    from omegaconf import OmegaConf

    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}}))
    text = (root / "summary.txt").read_text()
    assert "scr:A dec:A pre:R exp:A" in text
    assert "profiles: scr=screening dec=decision_support pre=precision_critical exp=exploration" in text
