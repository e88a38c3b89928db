"""A figure the README quotes comes from the options its command names: the README's refinement recipe, composed as
a user would type it, resolves to the quant options its stored run recorded, and the quoted share of fp32 is that
run's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from medret.config import register_configs
from medret.results import RunResult

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUNS = ROOT / "bench" / "results"
# options a run records that are not quantization recipe (paths, where the scan came from)
NOT_RECIPE = {"save_dir", "sensitivity"}


def readme_command(after: str) -> list[str]:
    """The first backticked command following `after` in the README, as Hydra overrides."""
    tail = README[README.index(after) :]
    return re.search(r"`(quant=[^`]+)`", tail).group(1).split()


def quoted_share(nth: int) -> str:
    """The nth "NN.N%" figure of the measured-recipe sentence."""
    return re.findall(r"(\d+\.\d)%", README[README.index(ANCHOR) :])[nth]


def composed_quant(overrides: list[str]) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
    return dict(cfg.quant)


ANCHOR = "Measured (every option named"
BASE = readme_command(ANCHOR)


@pytest.mark.parametrize(
    "extra, run, share_at",
    [  # the sentence's figures in order: MedQuAD 95.2 -> 98.5, SciFact 100.3, 99.7, 99.0, MedQuAD c512 99.5
        ([], "frontier-medquad/gptq-nf3-g64-act-refine100", 1),
        ([], "frontier-scifact/gptq-nf3-g64-act-refine100", 2),
        (
            ["quant.calibration_texts=512", "quant.refine_steps=300"],
            "frontier-medquad/gptq-nf3-g64-act-c512-refine300",
            5,
        ),
    ],
)
def test_readme_refinement_recipe_is_what_the_quoted_run_ran(extra, run, share_at):
    if extra:  # the README names these two beside the figure: check they are written there
        assert "`" + " ".join(extra) + "`" in README
    raw = json.loads((RUNS / run / "results.json").read_text())
    recorded = {k: v for k, v in raw["config"]["quant"].items() if k not in NOT_RECIPE}
    composed = composed_quant([*BASE, *extra])
    assert {k: composed[k] for k in recorded} == recorded
    result = RunResult.of(raw)
    share = 100 * result.score() / result.fp32_score()
    assert quoted_share(share_at) == f"{share:.1f}"
