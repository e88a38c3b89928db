"""Embedding shard cache: one encode per (model, quant) across index variants, resume after a real kill,
corrupt shards re-encoded, foreign manifests and unwritable dirs refused (concurrent jobs: tests/test_faults.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medret.errors import InputError
from medret.evaluation import run_evaluate
from tests.test_evaluate import ROOT, compose_cfg, tiny_overrides


def cached_run(tiny_bert, out: Path, cache: Path, *extra: str) -> dict:
    cfg = compose_cfg(*tiny_overrides(tiny_bert, "logger=none", f"cache.dir={cache}", "cache.shard_size=64", *extra))
    return run_evaluate(cfg, out)


def test_index_sweep_encodes_the_corpus_once(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    flat = cached_run(tiny_bert, tmp_path / "flat", cache)
    assert flat["throughput"]["shards_encoded"] == 5 and flat["throughput"]["shards_cached"] == 0
    for preset in ("sq8", "hnsw", "binary"):
        res = cached_run(tiny_bert, tmp_path / preset, cache, f"index={preset}")
        thr = res["throughput"]
        assert thr["shards_encoded"] == 0 and thr["shards_cached"] == 5 and thr["queries_cached"]
        assert thr["encode_docs_per_s"] is None  # nothing was encoded
        assert 0.0 < res["index"]["recall_vs_exact@10"] <= 1.0
    again = cached_run(tiny_bert, tmp_path / "flat2", cache)
    assert again["metrics"] == flat["metrics"]
    nocache = cached_run(tiny_bert, tmp_path / "nocache", tmp_path / "unused", "cache.enabled=false")
    assert nocache["metrics"] == flat["metrics"]
    assert (tmp_path / "flat" / "run.trec").read_text() == (tmp_path / "flat2" / "run.trec").read_text()


def test_corrupt_or_truncated_shard_is_detected_and_reencoded(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    first = cached_run(tiny_bert, tmp_path / "a", cache)
    shard_dir = Path(first["cache"]["corpus_dir"])
    victim = shard_dir / "shard-00002.emb.npy"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    flipped = shard_dir / "shard-00003.emb.npy"
    raw = bytearray(flipped.read_bytes())
    raw[-5] ^= 0xFF  # same size, wrong content: only the checksum sees it
    flipped.write_bytes(bytes(raw))
    second = cached_run(tiny_bert, tmp_path / "b", cache)
    assert second["throughput"]["shards_encoded"] == 2 and second["throughput"]["shards_cached"] == 3
    assert second["metrics"] == first["metrics"]


def test_foreign_manifest_and_unwritable_cache_are_refused(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    first = cached_run(tiny_bert, tmp_path / "a", cache)
    manifest = Path(first["cache"]["corpus_dir"]) / "manifest.json"
    m = json.loads(manifest.read_text())
    m["meta"]["corpus"] = "another-corpus"
    manifest.write_text(json.dumps(m))
    with pytest.raises(InputError, match="manifest was written for another config"):
        cached_run(tiny_bert, tmp_path / "b", cache)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"cache.dir=.*a-file/sub: not writable"):
        cached_run(tiny_bert, tmp_path / "c", blocker / "sub")


def cli(tiny_bert: Path, cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        *tiny_overrides(tiny_bert, "logger=none"),
        "data.num_records=20000",
        "cache.shard_size=500",
        f"cache.dir={cache}",
        f"hydra.run.dir={out}",
        *extra,
    ]
    return subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )


def shards_done(cache: Path) -> int:
    return max(
        (
            len(json.loads(p.read_text())["shards"])
            for p in cache.glob("embeddings/*/manifest.json")
            if p.stat().st_size
        ),
        default=0,
    )


@pytest.mark.slow
def test_killed_encode_resumes_with_only_missing_shards_and_identical_results(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    proc = cli(tiny_bert, cache, tmp_path / "killed")
    deadline = time.time() + 300
    while shards_done(cache) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = shards_done(cache)
    assert 3 <= done < 40
    assert not (tmp_path / "killed" / "results.json").exists()

    resumed = cli(tiny_bert, cache, tmp_path / "resumed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    res = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert (
        res["throughput"]["shards_cached"] >= done
        and res["throughput"]["shards_encoded"] == 40 - res["throughput"]["shards_cached"]
    )

    clean = cli(tiny_bert, tmp_path / "cache2", tmp_path / "clean")
    assert clean.wait(timeout=600) == 0
    assert (tmp_path / "clean" / "run.trec").read_text() == (tmp_path / "resumed" / "run.trec").read_text()


def test_float16_cache_halves_shards(tiny_bert, tmp_path):
    a = cached_run(tiny_bert, tmp_path / "a", tmp_path / "c32")
    b = cached_run(tiny_bert, tmp_path / "b", tmp_path / "c16", "cache.dtype=float16")
    size = lambda r: sum(p.stat().st_size for p in Path(r["cache"]["corpus_dir"]).glob("*.emb.npy"))  # noqa: E731
    assert size(b) < 0.55 * size(a)
    assert abs(a["metrics"]["ndcg@10"] - b["metrics"]["ndcg@10"]) < 0.02
    np.testing.assert_equal(a["data"]["num_passages"], b["data"]["num_passages"])


def test_disk_full_during_shard_write_is_a_clear_error(tiny_bert, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        with pytest.raises(InputError, match="disk full while"):
            cached_run(tiny_bert, tmp_path / "run", small / "cache")
        assert not (tmp_path / "run" / "results.json").exists()
        assert not list(small.rglob("*.tmp"))  # no half-written files left behind
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_only_shard_encodes_one_shard_and_a_full_run_reuses_it(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    res = cached_run(tiny_bert, tmp_path / "s1", cache, "cache.only_shard=1")
    done = res["shard"]
    assert (done["shard"], done["shards"], done["encoded"], done["vectors"]) == (1, 5, True, 64)
    full = cached_run(tiny_bert, tmp_path / "full", cache)
    assert full["throughput"]["shards_cached"] == 1 and full["throughput"]["shards_encoded"] == 4
    with pytest.raises(InputError, match=r"cache.only_shard=9: the corpus has shards 0..4"):
        cached_run(tiny_bert, tmp_path / "s9", cache, "cache.only_shard=9")
