"""Fine-tune a retriever: ``python train.py data=beir data.path=PATH data.split=train train.max_steps=N``."""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from medret.config import register_configs
from medret.errors import InputError

register_configs()
log = logging.getLogger("medret")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from medret.training import run_train

    try:
        results = run_train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except InputError as e:
        log.error("error: %s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return results["best_dev_ndcg@10"] or 0.0


if __name__ == "__main__":
    main()
