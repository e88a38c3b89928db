"""Results are never lost, and a newcomer's start is quiet: W&B online without network or login falls back
to offline files; a full disk (a real small tmpfs, and a real file-size limit) is one error line with nothing
half-written; start-up noise; --help; errors printed once; the multirun summary table."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medret.errors import InputError
from medret.launch.logfile import RunLogFile
from medret.tracking.outputs import write_run_files
from tests.test_evaluate import ROOT, tiny_overrides


def cli(script: str, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
        **kw,
    )


def no_login_env(tmp_path: Path) -> dict[str, str]:
    """A W&B with no API key anywhere: no variable, an empty netrc, its own config dir."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    (tmp_path / "netrc").write_text("")
    return {**env, "NETRC": str(tmp_path / "netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}


def fallback_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [x for x in (proc.stdout + proc.stderr).splitlines() if "logging offline instead" in x]


def assert_offline_run(run_dir: Path, info: dict) -> None:
    assert info["mode"] == "offline" and info["run_id"]
    offline = Path(info["dir"])
    assert offline.parent == run_dir / "wandb" and offline.name.startswith("offline-run-")
    assert offline.name.endswith(info["run_id"]) and any(offline.glob("*.wandb"))  # the run's data, to sync


def test_online_without_login_writes_results_and_logs_offline(tiny_bert, tmp_path):
    env = {k: v for k, v in no_login_env(tmp_path).items()}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *tiny_overrides(tiny_bert, "logger.mode=online")]
        + [f"hydra.run.dir={run_dir}", f"cache.dir={tmp_path / 'cache'}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert len(fallback_lines(proc)) == 1 and "no W&B login" in fallback_lines(proc)[0]
    res = json.loads((run_dir / "results.json").read_text())
    assert (run_dir / "run.trec").stat().st_size > 0
    assert len((run_dir / "per_query.jsonl").read_text().splitlines()) == res["data"]["num_queries"]
    assert_offline_run(run_dir, res["wandb"])


@pytest.mark.slow
def test_online_with_an_unreachable_server_waits_bounded_then_logs_offline(tiny_bert, tmp_path):
    # a key (never valid) and a server address where nothing listens: the real network failure path
    env = {**no_login_env(tmp_path), "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    run_dir = tmp_path / "run"
    t0 = time.perf_counter()
    proc = cli(
        "evaluate.py",
        *tiny_overrides(tiny_bert, "logger.mode=online", "logger.init_timeout=3"),
        f"hydra.run.dir={run_dir}",
        f"cache.dir={tmp_path / 'cache'}",
        env=env,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = fallback_lines(proc)
    assert len(lines) == 1 and "did not take the run within 3 s" in lines[0], proc.stderr[-2000:]
    assert elapsed < 120  # a tiny run plus a 3 s wait, not W&B's default 90 s with retries
    assert_offline_run(run_dir, json.loads((run_dir / "results.json").read_text())["wandb"])


def test_train_online_without_login_finishes_with_its_results(tiny_bert, tmp_path):
    run_dir = tmp_path / "train"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"model.path={tiny_bert}", "logger=wandb", "logger.mode=online"]
        + ["data.num_records=200", "data.num_queries=40", "eval.k_values=[1,10,100]", "train.batch_size=4"]
        + ["train.max_steps=2", "train.dev_every=2", f"hydra.run.dir={run_dir}", f"cache.dir={tmp_path / 'c'}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=no_login_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(fallback_lines(proc)) == 1
    res = json.loads((run_dir / "train_results.json").read_text())
    assert res["steps"] == 2
    assert_offline_run(run_dir, res["wandb"])


def test_invalid_init_timeout_is_refused_before_any_work(tmp_path):
    proc = cli("evaluate.py", "logger.init_timeout=0", "model.path=/nonexistent", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: logger.init_timeout=0.0: expected seconds > 0"]


# --- a full disk: a real tmpfs (needs root to mount; skipped otherwise) and a real file-size limit ---


@pytest.fixture
def small_disk(tmp_path):
    """Mount a real tmpfs of a given size (KiB) under tmp_path; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(point)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(bytes(4096))
        except OSError:
            pass


def test_full_disk_at_start_is_one_line_before_any_work(small_disk):
    disk = small_disk(128)
    fill(disk)
    # a model path that does not exist: the disk is the error reported, found before any model load
    proc = cli("evaluate.py", "logger=none", "model.path=/nonexistent", f"hydra.run.dir={disk / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: hydra.run.dir={disk / 'run'}: cannot write there (No space left on device); "
        "free space there or choose another folder"
    ]
    assert "Traceback" not in proc.stdout and not (disk / "run").exists()


def test_full_disk_at_the_outputs_is_one_line_and_leaves_no_partial_run(tiny_bert, small_disk, tmp_path):
    disk = small_disk(512)  # room for Hydra's files and the log, not for run.trec of 200 queries x 100 hits
    run_dir = disk / "run"
    proc = cli(
        "evaluate.py",
        *tiny_overrides(tiny_bert, "logger=none", "data.num_queries=200"),
        f"hydra.run.dir={run_dir}",
        f"cache.dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 2
    errors = [x for x in (proc.stdout + proc.stderr).splitlines() if "error" in x.lower()]
    assert errors == [f"error: {run_dir / 'run.trec'}: disk full while writing (free space or choose another folder)"]
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr
    left = {p.name for p in run_dir.iterdir()}
    assert left == {".hydra", "evaluate.log"}, left  # no run.trec, per_query.jsonl, results.json, temp files
    assert "run.trec: disk full" in (run_dir / "evaluate.log").read_text()


def test_run_files_are_all_or_nothing_when_results_json_does_not_fit(small_disk):
    disk = small_disk(128)
    ranked = {f"q{i}": [(f"d{j}", 1.0 / (j + 1)) for j in range(10)] for i in range(20)}
    rows = [{"query_id": q, "ndcg@10": 0.5} for q in ranked]
    results = {"config": {"padding": "x" * 200_000}}  # run.trec and per_query.jsonl fit, results.json does not
    with pytest.raises(InputError, match="results.json: disk full while writing"):
        write_run_files(disk / "run", results, rows, ranked, tag="t")
    assert list((disk / "run").iterdir()) == []


def test_run_log_on_a_full_disk_stops_with_one_warning(small_disk, capsys):
    disk = small_disk(64)
    handler = RunLogFile(str(disk / "evaluate.log"))
    fill(disk)
    logger = logging.getLogger("medret.test.full_disk")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(5):
            logger.warning("line %d %s", i, "x" * 8192)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {disk / 'evaluate.log'}: log file stopped (No space left on device)"]


def test_file_size_limit_is_one_line_at_start(tmp_path):
    """Without root: a real RLIMIT_FSIZE makes every larger write fail with EFBIG (Python ignores SIGXFSZ)."""
    limit = 32 * 1024

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = cli("evaluate.py", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", preexec_fn=limited)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: hydra.run.dir={tmp_path / 'run'}: cannot write there (File too large); "
        "free space there or choose another folder"
    ]


# --- the newcomer's start: no noise, a --help that matches, one error line, a summary table ---


def test_start_up_is_quiet_and_faiss_runs_its_simd_build():
    code = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "import medret, faiss, bitsandbytes;"
        "from medret.tracking.provenance import faiss_simd_level; print(faiss_simd_level())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "faiss.loader" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
    assert "kernels-community" not in proc.stderr
    flags = set(next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")).split())
    level = proc.stdout.strip()
    if "avx512f" in flags:
        assert level.startswith("AVX512"), level
    elif "avx2" in flags:
        assert level == "AVX2", level


def help_groups(script: str) -> set[str]:
    out = cli(script, "--help").stdout
    section = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    return {line.split(":")[0] for line in section.splitlines() if ": " in line}


def test_help_lists_the_groups_each_entry_point_takes():
    folders = {d.name for d in (ROOT / "conf").iterdir() if d.is_dir() and d.name != "hydra"}
    assert help_groups("evaluate.py") == folders - {"train"}
    assert help_groups("train.py") == folders


def test_an_error_is_printed_once(tmp_path):
    proc = cli("evaluate.py", "logger.mode=bogus", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).count("logger.mode='bogus'") == 1


def test_multirun_ends_with_one_summary_table(tiny_bert, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(
        "evaluate.py",
        "-m",
        *tiny_overrides(tiny_bert, "logger=none", "quant=none,uniform", "quant.bits=4", "quant.group_size=16"),
        f"hydra.sweep.dir={sweep}",
        f"cache.dir={tmp_path / 'cache'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (sweep / "summary.txt").read_text().splitlines()
    assert "\n".join(table) in proc.stdout
    *table, legend = table  # the line that spells out the profiles column
    assert legend.startswith("profiles: scr=screening dec=decision_support pre=precision_critical exp=exploration;")
    header, rows = table[0].split(), [r.split() for r in table[1:]]
    assert header == ["job", "overrides", "ndcg@10", "delta", "verdict", "model", "MB", "docs/s", "profiles"]
    assert [r[:2] for r in rows] == [["0", "quant=none"], ["1", "quant=uniform"]]
    for row in rows:
        res = json.loads((sweep / row[0] / "results.json").read_text())
        assert row[2] == f"{res['metrics']['ndcg@10']:.4f}"
        assert row[5] == f"{res['sizes']['model_param_bytes'] / 2**20:.2f}"
    uniform = json.loads((sweep / "1" / "results.json").read_text())
    assert rows[1][3] == f"{uniform['deltas']['ndcg@10']['delta']:+.4f}"
    assert rows[1][4] == uniform["verdict"]["outcome"]
    assert rows[0][3] == rows[0][4] == "-"  # the fp32 run has no delta or verdict, and no profiles
    assert len(rows[0]) == 7  # job, overrides, ndcg@10, delta, verdict, model MB, docs/s
    profiles = {k: p["outcome"][0].upper() for k, p in uniform["profiles"].items()}
    assert rows[1][7:] == [f"{k[:3]}:{profiles[k]}" for k in uniform["profiles"]]
