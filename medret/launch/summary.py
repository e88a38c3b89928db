"""The table a multirun ends with: one row per job, read back from each job's results file (an evaluate's
through ``medret.results``). Registered as a Hydra callback in conf/evaluate.yaml, conf/train.yaml and
conf/sensitivity.yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from medret.results import METRIC, RunResult, is_complete, read_run
from medret.results import text_table as format_table  # the name callers know


def _number(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def short_names(names: list[str]) -> dict[str, str]:
    """Each profile name cut to its shortest prefix (3 letters at least) that no other name shares."""
    out = {}
    for n in names:
        k = 3
        while k < len(n) and any(o != n and o.startswith(n[:k]) for o in names):
            k += 1
        out[n] = n[:k]
    return out


def profiles_cell(res: RunResult) -> str:
    """'scr:A dec:R pre:I exp:A': each profile's outcome (Accept, Reject, Inconclusive) on the run."""
    short = short_names(list(res.profiles))
    return " ".join(f"{short[n]}:{p.letter}" for n, p in res.profiles.items())


def profile_legend(runs: list[RunResult]) -> str | None:
    """The line under the table that spells out the profiles column; None when no run has profiles."""
    names = list(dict.fromkeys(n for r in runs for n in r.profiles))
    if not names:
        return None
    short = short_names(names)
    spelled = " ".join(f"{short[n]}={n}" for n in names)
    return f"profiles: {spelled}; A accept, R reject, I inconclusive (what decided each: python -m medret.report)"


def evaluate_row(res: RunResult) -> dict[str, str]:
    metric = res.verdict.metric if res.verdict else METRIC
    delta = res.deltas.get(metric)
    size = res.param_bytes
    row = {
        metric: _number(res.metrics.get(metric), ".4f"),
        "delta": _number(delta and delta.delta, "+.4f"),
        "verdict": res.verdict.outcome if res.verdict else "-",
        "model MB": _number(None if size is None else size / 2**20, ".2f"),
        "docs/s": _number(res.encode_rate, ".0f"),
    }
    if res.profiles:  # last (its width varies); runs without an fp32 baseline, and older runs, have none
        row["profiles"] = profiles_cell(res)
    return row


def train_row(res: dict[str, Any]) -> dict[str, str]:
    best = next((k for k in res if k.startswith("best_dev_")), "best_dev")
    return {
        "steps": str(res.get("steps", "-")),
        best: _number(res.get(best), ".4f"),
        "best step": str(res.get("best_step") or "-"),
        "final loss": _number(res.get("final_loss"), ".4f"),
    }


def sensitivity_row(res: dict[str, Any]) -> dict[str, str]:
    pooled = res.get("correlation", {}).get("pooled", {})
    return {
        "layers": str(len(res.get("layers", []))),
        "fp32 dev ndcg@10": _number(res.get("fp32", {}).get("dev_ndcg@10"), ".4f"),
        "rho fidelity": _number(pooled.get("fidelity_drop"), "+.3f"),
        "rho ndcg": _number(pooled.get("ndcg_drop"), "+.3f"),
    }


def job_rows(sweep_dir: Path) -> list[dict[str, str]]:
    """One row per job folder: the overrides that differ between jobs, then its figures (or why none)."""
    jobs = sorted((d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()), key=_job_order)
    overrides = {d: yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or [] for d in jobs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    rows = []
    for d in jobs:
        row = {"job": d.name, "overrides": " ".join(o for o in overrides[d] if o not in shared) or "-"}
        if is_complete(d):
            row.update(evaluate_row(read_run(d)))
        elif (d / "train_results.json").is_file():
            row.update(train_row(json.loads((d / "train_results.json").read_text())))
        elif (d / "sensitivity.json").is_file():  # python -m medret.sensitivity -m ...
            row.update(sensitivity_row(json.loads((d / "sensitivity.json").read_text())))
        else:
            row["result"] = "no results (failed or still running; see its log)"
        rows.append(row)
    return rows


def _job_order(d: Path) -> tuple[int, str]:
    return (int(d.name), "") if d.name.isdigit() else (1 << 30, d.name)


class SweepSummary(Callback):
    """After the last job of a multirun: the table on stdout and as summary.txt in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from medret.storage import write_atomic

        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = job_rows(sweep_dir) if sweep_dir.is_dir() else []
        if not rows:
            return
        table = format_table(rows)
        runs = [read_run(d) for d in sweep_dir.iterdir() if d.is_dir() and is_complete(d)]
        legend = profile_legend([r for r in runs if r is not None])
        table += f"\n{legend}" if legend else ""
        write_atomic(sweep_dir / "summary.txt", [table, "\n"])
        print(f"\nsweep {sweep_dir}: {len(rows)} runs\n{table}", flush=True)
