"""Launch-time checks for Hydra sweeps (registered as a Hydra callback in conf/evaluate.yaml and train.yaml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


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


class SlurmReachable(Callback):
    """Before a sweep goes to hydra/launcher=slurm: one clear line when no controller answers."""

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
