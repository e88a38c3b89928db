"""Bits per layer under an average-bits budget: a multiple-choice knapsack, solved exactly by dynamic
programming over a discretised budget.

Each layer takes exactly one option (a bit width); option j of layer i costs ``costs[i, j]`` stored bits
(codes + scales, from the scheme's real storage) and loses ``losses[i, j]`` (its measured drop). Losses are
assumed additive across layers (the sum of single-layer drops predicts the drop of the whole choice).

Extra costs (above each layer's cheapest option) are rounded *up* to budget units, so any choice the DP
finds fits the real budget. The solution is optimal for the rounded costs: exact whenever the extra costs
are whole units, and otherwise optimal under a budget at most one unit per layer tighter (with the default
100k units over the headroom and 36 layers, 0.04% of the headroom).
"""

from __future__ import annotations

import numpy as np

DEFAULT_STEPS = 100_000  # units of the budget above the cheapest choice: [layers x 100k] int16 choices, milliseconds


def choose_options(costs: np.ndarray, losses: np.ndarray, budget: float, unit: float | None = None) -> list[int]:
    """The option index per layer minimising the summed loss with summed cost <= budget.

    The DP runs over the budget left above every layer's cheapest option, in ``unit``s (default: that
    headroom / DEFAULT_STEPS), each option's extra cost rounded up to whole units. Raises ValueError when
    even the cheapest option everywhere does not fit."""
    costs, losses = np.asarray(costs, np.float64), np.asarray(losses, np.float64)
    if costs.shape != losses.shape or costs.ndim != 2:
        raise ValueError(f"costs {costs.shape} and losses {losses.shape} must both be [layers, options]")
    cheapest = costs.min(axis=1)
    headroom = budget - cheapest.sum()
    if headroom < 0:
        raise ValueError(f"budget {budget} is below the cheapest choice {cheapest.sum()}")
    unit = unit or (headroom / DEFAULT_STEPS if headroom > 0 else 1.0)
    steps = int(np.floor(headroom / unit + 1e-9))
    # the tolerance keeps an extra cost that is a whole number of units (up to float error) at that number
    weights = np.ceil((costs - cheapest[:, None]) / unit - 1e-9).astype(np.int64)
    n_layers, n_options = costs.shape
    best = np.full(steps + 1, np.inf)  # best[c]: least loss of the layers so far using exactly c units
    best[0] = 0.0
    picked = np.zeros((n_layers, steps + 1), dtype=np.int16)
    for i in range(n_layers):
        new = np.full(steps + 1, np.inf)
        for j in range(n_options):
            w = weights[i, j]
            if w > steps:
                continue
            cand = np.full(steps + 1, np.inf)
            cand[w:] = best[: steps + 1 - w] + losses[i, j]
            better = cand < new
            new[better], picked[i, better] = cand[better], j
        best = new
    c = int(np.argmin(best))
    choice = [0] * n_layers
    for i in range(n_layers - 1, -1, -1):
        choice[i] = int(picked[i, c])
        c -= int(weights[i, choice[i]])
    return choice
