"""Evaluate a (quantized) retriever: ``python evaluate.py data=beir data.path=PATH quant=none``."""

import hydra
from omegaconf import DictConfig

from medret.config import register_configs
from medret.launch.task import run_task

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from medret.evaluation import run_evaluate

    return run_task(run_evaluate, cfg)


if __name__ == "__main__":
    main()
