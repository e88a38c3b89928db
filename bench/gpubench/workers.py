"""One subprocess per variant with a hard timeout (a crash, a hang or a poisoned CUDA context costs one
row, reported as "failed: <reason>"), run most-important first within the run's total budget."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from gpubench.variants import SPEC, one_line

CLI = Path(__file__).resolve().parent.parent / "gpu_bench.py"  # a worker is this script with --worker


def measure(name: str, wd: Path, cfg: dict) -> dict:
    import torch

    from gpubench.encode import run_encoder
    from gpubench.index import run_index
    from gpubench.ort import run_ort

    dev = torch.device(cfg["device"])
    _, section, _, cuda_only, _ = SPEC[name]
    if dev.type != "cuda" and cuda_only and not cfg.get("no_cuda_skip"):
        return {"status": "skipped", "reason": "needs CUDA"}
    if section == "idx":
        return run_index(name, wd, cfg, dev)
    if name.startswith("ort_"):
        return run_ort(name, wd, cfg, dev)
    return run_encoder(name, wd, cfg, dev)


def worker(name: str, wd: Path) -> None:
    """The --worker entry: measure one variant and write its row, whatever happens, to result_<name>.json."""
    cfg = json.loads((wd / "config.json").read_text())
    try:
        res = measure(name, wd, cfg)
    except ModuleNotFoundError as e:
        traceback.print_exc()
        res = {"status": "skipped", "reason": f"not installed: {e.name}"}
    except BaseException as e:  # noqa: BLE001 - every failure becomes a row
        traceback.print_exc()
        res = {"status": "failed", "reason": one_line(e)}
    (wd / f"result_{name}.json").write_text(json.dumps(res))


def spawn(name: str, wd: Path, timeout: float, log: Path) -> int:
    """Run the worker in its own process group; kill the group at the timeout (and on our own exit)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as fh:
        p = subprocess.Popen(
            [sys.executable, str(CLI), "--worker", name, "--workdir", str(wd)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also on SIGTERM from an outer timeout: never leave a worker holding the GPU
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return p.returncode


def run_worker(name: str, wd: Path, timeout: float) -> dict:
    log = wd / f"log_{name}.txt"
    t0 = time.perf_counter()
    returncode = spawn(name, wd, timeout, log)
    wall = time.perf_counter() - t0
    res_p = wd / f"result_{name}.json"
    lines = log.read_text(errors="replace").splitlines()
    if res_p.is_file():
        res = json.loads(res_p.read_text())
    elif returncode in (-9, -signal.SIGKILL) and wall >= timeout - 1:
        res = {"status": "failed", "reason": f"timeout after {timeout:.0f} s (killed)"}
    else:
        tail = [ln for ln in lines if ln.strip()]
        res = {"status": "failed", "reason": one_line(f"exit code {returncode}: {tail[-1] if tail else 'no output'}")}
    res["worker_s"] = round(wall, 1)
    warn = sorted({ln.strip()[:200] for ln in lines if "Failed to load" in ln or "fell back" in ln})
    if warn:
        res["log_warnings"] = warn[:4]
    if res["status"] == "failed":
        res["log_tail"] = lines[-25:]
    return res


def run_all(names, rows: dict, wd: Path, deadline: float, budget: float, write) -> None:
    """Each variant in turn, or a skipped row once the budget is used up; write() after every row."""
    for name in names:
        left = deadline - time.perf_counter()
        hard = SPEC[name][4]
        if left < 20:
            rows[name] = {"status": "skipped", "reason": f"total time budget ({budget:.0f} s) used up"}
        else:
            print(f"== {name}: {SPEC[name][2]} (timeout {min(hard, left):.0f} s)", flush=True)
            rows[name] = run_worker(name, wd, min(hard, left))
        r = rows[name]
        print(f"   -> {json.dumps({k: v for k, v in r.items() if k != 'log_tail'})}", flush=True)
        if r["status"] == "failed" and r.get("log_tail"):
            print("   log tail:\n      " + "\n      ".join(r["log_tail"]), flush=True)
        write(done=False)
