"""Launch-time checks for Hydra sweeps (registered as a Hydra callback in conf/evaluate.yaml and train.yaml)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from medret.launch.slurm import request_problem, slurm_problem, watch_for_stuck_jobs

# Hydra's own files (.hydra/*.yaml, the log) and a small run's outputs fit in this; a disk without it fails
# at the start with one line instead of in the middle of Hydra's writes with a traceback.
PROBE_BYTES = 256 * 1024


class SlurmReachable(Callback):
    """Before a sweep goes to hydra/launcher=slurm: one clear line when no controller answers or the jobs
    ask for more than the partition's largest node, and a watch for submitted jobs that can never start."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(config.hydra.launcher.get("_target_", ""))
        if "SlurmLauncher" not in target:
            return
        problem = slurm_problem()
        if problem:
            print(
                f"error: hydra/launcher=slurm: no SLURM controller reachable ({problem}); "
                "start one (slurm/local-cluster.sh start) or drop hydra/launcher=slurm to run locally",
                file=sys.stderr,
            )
            sys.exit(2)
        problem = request_problem(config.hydra.launcher)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        # submitit_folder is ".../.submitit/%j": its parent holds one folder per submitted job
        watch_for_stuck_jobs(Path(str(config.hydra.launcher.submitit_folder)).parent)


def folder_problem(folder: Path) -> str | None:
    """Why a run cannot write into ``folder`` (not a folder, read-only, full disk, file-size limit), or None."""
    if folder.exists() and not folder.is_dir():
        return "a file is there, expected a folder"
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".medret-probe-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(bytes(PROBE_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            Path(probe).unlink(missing_ok=True)
    except OSError as e:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # leave nothing behind for a run that never started
        return e.strerror or type(e).__name__
    return None


class RunDirWritable(Callback):
    """Before Hydra writes .hydra/ and the log: the run (or sweep) folder takes a write, else one error line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.run.dir", Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.sweep.dir", Path(str(config.hydra.sweep.dir)))

    @staticmethod
    def _check(option: str, folder: Path) -> None:
        problem = folder_problem(folder)
        if problem:
            print(
                f"error: {option}={folder}: cannot write there ({problem}); free space there or choose another folder",
                file=sys.stderr,
            )
            sys.exit(2)


def app_config_groups(*, _root_: DictConfig) -> str:
    """`--help`'s groups: those this entry point composes (Hydra's own list shows every folder of conf/, so
    evaluate would offer train=, which it refuses), each with the options found in the config folders."""
    runtime = _root_.hydra.runtime
    folders = [Path(src.path) for src in runtime.config_sources if src.schema == "file"]
    lines = []
    for group in sorted(g for g in runtime.choices if not str(g).startswith("hydra/")):
        options = sorted({f.stem for d in folders for f in (d / str(group)).glob("*.yaml")})
        if options:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("medret_config_groups", app_config_groups, replace=True)
