"""Fine-tune a retriever: ``python train.py data=beir data.path=PATH data.split=train train.max_steps=N``."""

import hydra
from omegaconf import DictConfig

from medret.config import register_configs
from medret.launch.task import run_task

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from medret.training import run_train

    return run_task(run_train, cfg)


if __name__ == "__main__":
    main()
