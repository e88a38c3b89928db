"""``quant.method=gptq``: GPTQ (``medret.quant.gptq``) as a rounding method, a pass over the whole model
after every other layer is quantized (each layer's inputs come through the quantized layers before it)."""

from __future__ import annotations

from torch import nn

from medret.errors import InputError
from medret.quant import gptq
from medret.quant.layers import layer_report
from medret.quant.linear import QuantLinear
from medret.quant.registry import Method, names, register_method, scheme
from medret.quant.select import group_size_for


def gptq_schemes() -> tuple[str, ...]:
    """The custom schemes whose fitted grid GPTQ rounds to: every one that declares it rounds to a grid."""
    return tuple(n for n in names("custom") if scheme(n).rounds_to_grid)


def check(cfg) -> None:
    if cfg.name not in gptq_schemes() or cfg.outlier_fraction > 0:
        raise InputError(
            f"quant.method=gptq: rounds to the grid of {', '.join(gptq_schemes())} without outliers, "
            f"not quant={cfg.name} with outlier_fraction={cfg.outlier_fraction}"
        )
    if not 0.0 < cfg.gptq_damp < 1.0:
        raise InputError(f"quant.gptq_damp={cfg.gptq_damp}: expected 0 < damp < 1 (a fraction of mean diag H)")


def gptq_layers(model: nn.Module, tokenizer, specs: dict, calibration, max_length: int, importance) -> list[dict]:
    """GPTQ over ``specs`` in forward order; returns their layer reports with the output errors on the
    calibration texts, GPTQ's and round-to-nearest's on the same scheme."""
    device = next(model.parameters()).device
    sizes = {n: group_size_for(model.get_submodule(n).weight, s, n) for n, s in specs.items()}
    done = gptq.quantize_layers(model, tokenizer, calibration, specs, sizes, max_length, importance)
    reports = []
    for name, r in done.items():
        lin = model.get_submodule(name)
        model.set_submodule(name, QuantLinear.from_state(r.state, lin.bias).to(device), strict=True)
        report = layer_report(name, specs[name], sizes[name], r.weight, r.state, r.decoded)
        # calibration ||XW^T - XQ^T||^2 per token and output
        errors = {"output_mse": r.output_error, "output_mse_rtn": r.output_error_rtn, "calibration_tokens": r.tokens}
        reports.append({**report, **errors})
    return reports


register_method(
    Method("gptq", model_pass=gptq_layers, options=("gptq_damp", "act_order"), calibrated=True, check=check)
)

__all__ = ["check", "gptq_layers", "gptq_schemes"]
