"""SLURM sweeps that fit the cluster they run on: launcher defaults clipped to the partition's largest node,
a request no node can hold refused before submission, and a submitted job that can never start (SLURM keeps
it PENDING with a partition reason forever) turned into one error line instead of a silent wait."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# pending reasons that no amount of waiting clears: the job asks for more than the partition has
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints")


@dataclass(frozen=True)
class NodeSize:
    partition: str
    cpus: int
    mem_mb: int
    gpus: int
    nodes: int  # in the partition


def slurm_problem() -> str | None:
    """Why no SLURM controller can take jobs from here, or None when one answers."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "the SLURM client commands (sbatch, sinfo) are not installed on this machine"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or ["sinfo failed"])[-1]
    return None


def largest_node(partition: str | None) -> NodeSize | None:
    """CPUs, memory and GPUs of the partition's largest node (the default partition when None);
    None when sinfo is missing or does not know the partition."""
    if shutil.which("sinfo") is None:
        return None
    args = ["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%N", *(["-p", partition] if partition else [])]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 4]
    if not partition:  # the default partition is the one sinfo marks with *
        rows = [r for r in rows if r[0].endswith("*")]
    if out.returncode != 0 or not rows:
        return None
    gpus = lambda gres: sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))  # noqa: E731
    return NodeSize(
        partition=rows[0][0].rstrip("*"),
        cpus=max(int(r[1].rstrip("+")) for r in rows),
        mem_mb=max(int(r[2].rstrip("+")) for r in rows),
        gpus=max(gpus(r[3]) for r in rows),
        nodes=len({r[4] for r in rows}),
    )


def partitions() -> list[str] | None:
    """The partition names, or None when sinfo does not answer (then no partition is refused)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [p.rstrip("*") for p in out.split()]


def fit_to_node(what: str, default: int, *, _root_: DictConfig) -> int:
    """A launcher default (``${medret_slurm_fit:cpus,4}``) no larger than the partition's largest node."""
    node = largest_node(_root_.hydra.launcher.get("partition"))
    if node is None:
        return default
    room = {"cpus": node.cpus, "mem_gb": node.mem_mb // 1024}[what]
    return max(1, min(default, room))


def request_problem(launcher: DictConfig) -> str | None:
    """Why the sweep's jobs could never start on the partition (more than its largest node), or None."""
    partition = launcher.get("partition")
    node = largest_node(partition)
    if node is None:
        known = partitions()
        if partition and known is not None and partition not in known:
            return f"hydra.launcher.partition={partition}: no such partition here (there are: {', '.join(known)})"
        return None
    tasks = int(launcher.get("tasks_per_node") or 1)
    asks = (
        ("cpus_per_task", (launcher.get("cpus_per_task") or 1) * tasks, node.cpus, "CPUs"),
        ("mem_gb", (launcher.get("mem_gb") or 0) * 1024, node.mem_mb, "MB of memory"),
        ("gpus_per_node", launcher.get("gpus_per_node") or 0, node.gpus, "GPUs"),
    )
    for option, asked, has, unit in asks:
        if asked > has:
            return (
                f"hydra.launcher.{option}={launcher.get(option)}: the largest node of partition {node.partition} "
                f"has {has} {unit}, so the jobs could never start; lower it or choose another partition "
                "(hydra.launcher.partition=)"
            )
    if int(launcher.get("nodes") or 1) > node.nodes:
        return f"hydra.launcher.nodes={launcher.get('nodes')}: partition {node.partition} has {node.nodes} node(s)"
    return None


def watch_for_stuck_jobs(submitit_dir: Path, poll_s: float = 5.0) -> threading.Thread:
    """A daemon thread: when a job of this sweep is PENDING for a reason that never clears, print one error
    line, cancel the sweep's jobs and end the process (submitit itself would wait forever)."""

    def jobs() -> list[str]:
        names = (p.name for p in submitit_dir.glob("*") if p.is_dir()) if submitit_dir.is_dir() else ()
        return sorted({n.split("_")[0] for n in names if n.split("_")[0].isdigit()})

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            ids = jobs()
            if not ids:
                continue
            try:  # a controller that does not answer this time is asked again at the next poll
                out = subprocess.run(
                    ["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=60
                ).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            stuck = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
            stuck = [s for s in stuck if s[1] == "PENDING" and s[2] in NEVER_STARTS]
            if stuck:
                subprocess.run(["scancel", *ids], capture_output=True)
                print(
                    f"error: SLURM job {stuck[0][0]} can never start (pending reason {stuck[0][2]}: it asks for "
                    "more than the partition offers; see hydra.launcher.* in conf/hydra/launcher/slurm.yaml); "
                    "the sweep's jobs were cancelled",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(2)  # the launcher's wait is in the main thread and has no timeout

    thread = threading.Thread(target=watch, name="medret-slurm-watch", daemon=True)
    thread.start()
    return thread


OmegaConf.register_new_resolver("medret_slurm_fit", fit_to_node, replace=True)
