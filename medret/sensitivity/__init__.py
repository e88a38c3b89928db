"""Per-layer sensitivity of a retriever to low-bit weights: ``python -m medret.sensitivity``.

For every quantizable nn.Linear and each width of ``scan.bits``, only that layer is quantized (the run's
``quant`` scheme) and two drops are measured against fp32: a label-free one (1 - mean embedding cosine on a
seeded sample of corpus texts) and dev nDCG@10 on queries that are not the test queries. A cheap proxy
(Fisher-weighted quantization error, from squared gradients on unlabelled corpus texts) is reported beside
them with its rank correlation to each. ``quant=auto`` (evaluate.py) turns the written JSON into bits per layer.
"""

from medret.sensitivity.config import ScanConfig, SensitivityRootConfig, register_sensitivity_config

__all__ = ["ScanConfig", "SensitivityRootConfig", "register_sensitivity_config", "run_sensitivity"]


def run_sensitivity(cfg, run_dir):  # imported late: the scan pulls in models and retrieval
    from medret.sensitivity.scan import run_sensitivity as run

    return run(cfg, run_dir)
