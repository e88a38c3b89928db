"""Faults through real ``evaluate.py`` processes: SIGKILL in the index build or while the outputs are
written, then the same command again, gives the metrics of a clean run and never reads a half-written
file as done; concurrent jobs on one cache split the encoding, each shard written once; a damaged
cache manifest is re-encoded with a warning, never a traceback. (SIGKILL during encode:
tests/test_cache.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cache import cached_run
from tests.test_evaluate import ROOT, tiny_overrides


def evaluate(tiny_bert: Path, cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        *tiny_overrides(tiny_bert, "logger=none"),
        f"cache.dir={cache}",
        f"hydra.run.dir={out}",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )


def finished(proc: subprocess.Popen, timeout: float = 600) -> None:
    assert proc.wait(timeout=timeout) == 0, proc.stderr.read()[-3000:]


def kill_when(proc: subprocess.Popen, seen, what: str, timeout: float = 300) -> None:
    """SIGKILL the job's whole process group the moment ``seen()`` is true."""
    deadline = time.time() + timeout
    while not seen() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before {what}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def log_has(run_dir: Path, text: str) -> bool:
    log = run_dir / "evaluate.log"
    return log.is_file() and text in log.read_text(errors="replace")


# enough work in each phase for a kill to land inside it: 1000 queries x depth 100 of outputs, 8000 records
PHASE_RUN = ("data.num_records=8000", "data.num_queries=1000", "cache.shard_size=1000")


@pytest.fixture(scope="module")
def clean(tiny_bert, tmp_path_factory) -> dict:
    """Reference: the same command, never interrupted, on its own cache."""
    base = tmp_path_factory.mktemp("clean")
    finished(evaluate(tiny_bert, base / "cache", base / "run", "index=hnsw", *PHASE_RUN))
    return {"results": json.loads((base / "run" / "results.json").read_text()), "dir": base / "run"}


def assert_same_as_clean(run_dir: Path, clean: dict) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    assert res["metrics"] == clean["results"]["metrics"]
    assert (run_dir / "run.trec").read_text() == (clean["dir"] / "run.trec").read_text()
    assert (run_dir / "per_query.jsonl").read_text() == (clean["dir"] / "per_query.jsonl").read_text()


@pytest.mark.slow
def test_sigkill_during_index_build_then_same_command_gives_clean_metrics(tiny_bert, tmp_path, clean):
    run, cache = tmp_path / "run", tmp_path / "cache"
    cmd = (tiny_bert, cache, run, "index=hnsw", *PHASE_RUN)
    proc = evaluate(*cmd)
    kill_when(proc, lambda: log_has(run, "building over"), "the index build")
    assert not log_has(run, "built in"), "the kill landed after the index build"
    assert not (run / "results.json").exists()
    again = evaluate(*cmd)
    finished(again)
    assert_same_as_clean(run, clean)
    res = json.loads((run / "results.json").read_text())
    assert res["throughput"]["shards_encoded"] == 0  # every shard was whole: all read back, none re-encoded


def writing_outputs(run: Path) -> bool:
    """A temp file of run.trec / per_query.jsonl / results.json exists: the writes are under way."""
    return any(p.name.endswith(".tmp") for p in run.glob(".*")) or (run / "run.trec").exists()


@pytest.mark.slow
def test_sigkill_while_writing_outputs_leaves_no_results_and_the_rerun_completes(tiny_bert, tmp_path, clean):
    run, cache = tmp_path / "run", tmp_path / "cache"
    cmd = (tiny_bert, cache, run, "index=hnsw", *PHASE_RUN)
    proc = evaluate(*cmd)
    kill_when(proc, lambda: writing_outputs(run), "the outputs were written")
    # results.json marks a run complete: it must not exist, and anything that does exist is whole
    assert not (run / "results.json").exists()
    if (run / "run.trec").exists():
        assert (run / "run.trec").read_text() == (clean["dir"] / "run.trec").read_text()
    again = evaluate(*cmd)
    finished(again)
    assert_same_as_clean(run, clean)


@pytest.mark.slow
def test_concurrent_jobs_split_the_encoding_each_shard_written_once(tiny_bert, tmp_path):
    cache, n_jobs, n_shards = tmp_path / "cache", 3, 24
    extra = ("data.num_records=6000", "cache.shard_size=250")
    jobs = [evaluate(tiny_bert, cache, tmp_path / f"job{i}", *extra) for i in range(n_jobs)]
    inodes: dict[str, set[int]] = {}  # every file that ever held a shard: a second write is a second inode
    while any(j.poll() is None for j in jobs):
        for p in cache.glob("embeddings/*/shard-*.emb.npy"):
            try:
                inodes.setdefault(f"{p.parent.name}/{p.name}", set()).add(p.stat().st_ino)
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    for j in jobs:
        finished(j, timeout=1)
    results = [json.loads((tmp_path / f"job{i}" / "results.json").read_text()) for i in range(n_jobs)]
    corpus_dir = Path(results[0]["cache"]["corpus_dir"]).name
    corpus_inodes = {k: v for k, v in inodes.items() if k.startswith(corpus_dir)}
    assert len(corpus_inodes) == n_shards and all(len(v) == 1 for v in corpus_inodes.values())
    encoded = [r["throughput"]["shards_encoded"] for r in results]
    assert sum(encoded) == n_shards, encoded  # each shard encoded by exactly one job
    assert sum(e > 0 for e in encoded) >= 2, encoded  # and the work was split
    assert [r["metrics"] for r in results] == [results[0]["metrics"]] * n_jobs
    trecs = {(tmp_path / f"job{i}" / "run.trec").read_text() for i in range(n_jobs)}
    assert len(trecs) == 1
    assert not list(cache.glob("embeddings/*/*.claim"))  # every claim released


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated JSON
        lambda text: "[1, 2, 3]",  # valid JSON, not a manifest
        lambda text: json.dumps({**json.loads(text), "shards": ["x"]}),  # shards of the wrong type
        lambda text: json.dumps(  # one entry with wrong types
            {**json.loads(text), "shards": {**json.loads(text)["shards"], "1": {"rows": "many"}}}
        ),
        lambda text: b"\xff\xfe\x00 not utf-8",
    ],
    ids=["truncated", "not-a-manifest", "shards-wrong-type", "entry-wrong-types", "binary"],
)
def test_damaged_manifest_is_not_cached_with_a_warning(tiny_bert, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    first = cached_run(tiny_bert, tmp_path / "a", cache)
    manifest = Path(first["cache"]["corpus_dir"]) / "manifest.json"
    damaged = damage(manifest.read_text())
    manifest.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
    second = cached_run(tiny_bert, tmp_path / "b", cache)
    assert second["metrics"] == first["metrics"]
    thr = second["throughput"]
    assert thr["shards_encoded"] + thr["shards_cached"] == 5 and thr["shards_encoded"] >= 1
    assert any("damaged" in r.getMessage() and "manifest" in r.getMessage() for r in caplog.records)
    json.loads(manifest.read_text())  # rewritten whole
    third = cached_run(tiny_bert, tmp_path / "c", cache)
    assert third["throughput"]["shards_encoded"] == 0 and third["metrics"] == first["metrics"]


def test_unreadable_manifest_is_one_error_line(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    first = cached_run(tiny_bert, tmp_path / "a", cache)
    manifest = Path(first["cache"]["corpus_dir"]) / "manifest.json"
    manifest.unlink()
    manifest.mkdir()  # a folder where the manifest should be: nothing to recover
    proc = evaluate(tiny_bert, cache, tmp_path / "b", "cache.shard_size=64")
    assert proc.wait(timeout=300) == 2
    err = proc.stderr.read()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "manifest.json" in lines[0] and "Traceback" not in err, err[-2000:]
