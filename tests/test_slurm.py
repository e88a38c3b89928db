"""Sweeps on a real SLURM (slurm/local-cluster.sh, started by `make test`): a submitit job array,
and a running job requeued with `scontrol requeue` that resumes from its cache and finishes once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_evaluate import ROOT, tiny_overrides, wandb_run_record

pytestmark = pytest.mark.slurm


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "alloc"))


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if not slurm_up():
        pytest.skip("no SLURM cluster answering (start one with: slurm/local-cluster.sh start)")


def sweep_cli(tiny_bert: Path, sweep_dir: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=20",
        f"hydra.sweep.dir={sweep_dir}",
        *tiny_overrides(tiny_bert, *extra),
    ]
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_cwd(sweep_dir),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def tmp_cwd(sweep_dir: Path) -> Path:
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    return sweep_dir.parent


def test_sweep_runs_as_a_slurm_job_array(tiny_bert, tmp_path):
    proc = sweep_cli(
        tiny_bert,
        tmp_path / "sweep",
        "logger=wandb",
        "logger.mode=offline",
        "quant=none,uniform",
        "quant.bits=4",
        "quant.group_size=16",
        f"cache.dir={tmp_path / 'cache'}",
    )
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 2
    schemes = {json.loads(p.read_text())["config"]["quant"]["name"] for p in results}
    assert schemes == {"none", "uniform"}
    tasks = sorted(p.name for p in (tmp_path / "sweep" / ".submitit").glob("[0-9]*_[0-9]*"))
    assert len(tasks) == 2 and tasks[0].split("_")[0] == tasks[1].split("_")[0]  # one SLURM array, two tasks
    groups = {wandb_run_record(Path(json.loads(p.read_text())["wandb"]["dir"]))["run_group"] for p in results}
    assert len(groups) == 1  # one W&B group per sweep
    res = [json.loads(p.read_text()) for p in results]
    uni = next(r for r in res if r["config"]["quant"]["name"] == "uniform")
    assert "verdict" in uni and uni["quant"]["effective_bits_per_param"] > 4


def squeue_job(name_part: str) -> tuple[str, str] | None:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %j"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        jid, state, name = line.split(maxsplit=2)
        if name_part in name:
            return jid, state
    return None


@pytest.mark.slow
def test_requeued_job_resumes_from_its_cache_and_completes_once(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    proc = sweep_cli(
        tiny_bert,
        tmp_path / "sweep",
        "logger=wandb",
        "logger.mode=offline",
        "data.num_records=8000",  # 40 shards: enough to requeue mid-encode, small enough to finish fast
        "cache.shard_size=200",
        f"cache.dir={cache}",
        "hydra.job.name=medret-requeue",
    )
    deadline = time.time() + 600
    job = None
    while time.time() < deadline and proc.poll() is None:
        job = squeue_job("medret-requeue") or job
        manifests = list(cache.glob("embeddings/*/manifest.json"))
        done = max((len(json.loads(m.read_text())["shards"]) for m in manifests if m.stat().st_size), default=0)
        if job and job[1] == "RUNNING" and done >= 3:
            break
        time.sleep(0.2)
    assert job is not None and proc.poll() is None, "the job finished before it could be requeued"
    subprocess.run(["scontrol", "requeue", job[0]], check=True)
    # slurmctld holds a requeued job for about two minutes before it is eligible again; the test needs the restart,
    # not the hold: once it is pending again, make it eligible now
    for _ in range(100):
        if (squeue_job("medret-requeue") or ("", ""))[1] == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job[0]}", "StartTime=now"], check=False)
            break
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    results = list((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 1
    res = json.loads(results[0].read_text())
    assert res["throughput"]["shards_cached"] >= 3  # the second start reused what the first one encoded
    assert res["throughput"]["shards_cached"] + res["throughput"]["shards_encoded"] == 40
    for _ in range(120):  # accounting records the end a moment after the result file appears
        acct = subprocess.run(
            ["sacct", "-n", "-X", "-D", "-j", job[0], "-o", "State"], capture_output=True, text=True
        ).stdout.split()
        if "COMPLETED" in acct:
            break
        time.sleep(0.5)
    assert acct.count("COMPLETED") == 1 and "REQUEUED" in acct, acct  # requeued, then completed once
    # the requeued run continued the same W&B run id: no duplicate run for one job
    run_ids = {p.name.split("-")[-1] for p in (results[0].parent / "wandb").glob("offline-run-*")}
    assert run_ids == {res["wandb"]["run_id"]}


def test_encode_array_then_dependent_search_encodes_nothing(tiny_bert, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(
        tiny_bert, "logger=none", "data.num_records=2000", "cache.shard_size=500", f"cache.dir={tmp_path / 'cache'}"
    )
    out = subprocess.run(
        [str(ROOT / "slurm" / "encode-array.sh"), "4", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MEDRET_PYTHON": sys.executable, "MEDRET_RUN_DIR": str(run_dir)},
    )
    assert out.returncode == 0, out.stderr
    results = run_dir / "search" / "results.json"
    deadline = time.time() + 900
    while not results.exists() and time.time() < deadline:
        time.sleep(1)
    assert results.exists(), sorted(p.name for p in run_dir.iterdir())
    res = json.loads(results.read_text())
    assert res["throughput"]["shards_encoded"] == 0 and res["throughput"]["shards_cached"] == 4
    shards = sorted(json.loads(p.read_text())["shard"] for p in (run_dir / "shards").glob("shard-*.json"))
    assert shards == [0, 1, 2, 3]


def node_size() -> tuple[int, int]:
    """(CPUs, memory MB) of the local cluster's node, read from scontrol (not from medret's sinfo reading)."""
    out = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, check=True).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return int(fields["CPUTot"]), int(fields["RealMemory"])


def test_launcher_defaults_fit_the_partition():
    from hydra import compose, initialize_config_dir

    import medret.launch  # noqa: F401 (registers the resolver the launcher config uses)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    cpus, mem_mb = node_size()
    launcher = cfg.hydra.launcher
    assert 1 <= launcher.cpus_per_task <= cpus and launcher.cpus_per_task == min(4, cpus)
    assert 1 <= launcher.mem_gb * 1024 <= mem_mb and launcher.mem_gb == min(16, mem_mb // 1024)


def test_sweep_with_the_default_resources_runs(tiny_bert, tmp_path):
    """The README's sweep without resource overrides: it starts on this cluster instead of pending forever."""
    sweep = tmp_path / "sweep"
    args = [sys.executable, str(ROOT / "evaluate.py"), "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}"]
    args += tiny_overrides(tiny_bert, "logger=none", "quant=none,uniform", "quant.bits=4", "quant.group_size=16")
    proc = subprocess.run(
        [*args, f"cache.dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=900, cwd=tmp_cwd(sweep)
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len(list(sweep.glob("*/results.json"))) == 2
    assert "ndcg@10" in (sweep / "summary.txt").read_text()  # the sweep's table, as on stdout


def launch_error(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "evaluate.py"), "-m", "hydra/launcher=slurm", "logger=none"]
    args += ["data.num_records=50", "data.num_queries=5", f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_readme_gpu_sweep_on_a_cluster_without_that_partition_is_one_error_line(tmp_path):
    proc = launch_error(
        tmp_path, "quant=bnb_int8,bnb_nf4,kmeans", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1"
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: hydra.launcher.partition=gpu: no such partition")
    assert "Traceback" not in proc.stderr


def test_request_beyond_the_largest_node_is_refused_before_submission(tmp_path):
    cpus, _ = node_size()
    proc = launch_error(tmp_path, f"hydra.launcher.cpus_per_task={cpus + 1}", "hydra.job.name=medret-toobig")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: hydra.launcher.cpus_per_task={cpus + 1}: the largest node of partition "
        f"{subprocess.run(['sinfo', '-h', '-o', '%P'], capture_output=True, text=True).stdout.split()[0].rstrip('*')} "
        f"has {cpus} CPUs, so the jobs could never start; lower it or choose another partition "
        "(hydra.launcher.partition=)"
    ]
    assert squeue_job("medret-toobig") is None  # nothing submitted


def test_sbatch_script_runs_with_its_defaults(tiny_bert, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        ["sbatch", "--parsable", str(ROOT / "slurm" / "evaluate.sbatch"), "logger=none"]
        + tiny_overrides(tiny_bert, f"cache.dir={tmp_path / 'cache'}"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MEDRET_PYTHON": sys.executable, "MEDRET_RUN_DIR": str(run_dir)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr  # was: "Invalid generic resource (gres) specification"
    deadline = time.time() + 600
    while not (run_dir / "results.json").exists() and time.time() < deadline:
        time.sleep(1)
    res = json.loads((run_dir / "results.json").read_text())
    assert res["data"]["num_queries"] == 40
    Path(ROOT / f"slurm-medret-evaluate-{proc.stdout.strip()}.out").unlink(missing_ok=True)
