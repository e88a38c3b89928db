"""Evaluate a (quantized) retriever: ``python evaluate.py data=beir data.path=PATH quant=none``."""

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


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from medret.evaluation import run_evaluate

    try:
        results = run_evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    except InputError as e:
        log.error("error: %s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return results.get("metrics", {}).get("ndcg@10", 0.0)  # an encode-only shard task has none


if __name__ == "__main__":
    main()
