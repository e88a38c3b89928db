"""Sensitivity scan: ``python -m medret.sensitivity data=beir data.path=PATH data.split=train quant=uniform``
(the same config groups as evaluate.py, plus ``scan.*``; see conf/sensitivity.yaml)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from medret.config import register_configs
from medret.launch.task import run_task
from medret.sensitivity.config import register_sensitivity_config

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

register_configs()
register_sensitivity_config()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sensitivity")
def main(cfg: DictConfig) -> float:
    from medret.sensitivity.scan import run_sensitivity

    return run_task(run_sensitivity, cfg)


if __name__ == "__main__":
    main()
