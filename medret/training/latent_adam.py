"""The optimizer of train=distill: AdamW for the stored floats, and for the latent weights Adam with one second
moment per tensor.

Elementwise Adam moves every weight by about ``lr`` per step whatever its gradient; latent weights all start on
their levels, so they would all reach their midpoints in the same step and flip together (measured on MiniLM at
2 bits: no code moved for 9 steps, then 3%, 16%, 24% in three steps and the loss tripled). With the second moment
shared by the tensor each weight moves in proportion to its own gradient (in level gaps, ``lr`` for a weight of the
tensor's RMS gradient), so the codes whose outputs matter most move first, and a step never moves a weight by more
than ``max_move`` gaps.
"""

from __future__ import annotations

import torch


class LatentAdam(torch.optim.Optimizer):
    def __init__(self, groups, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "shared": False}
        super().__init__(groups, {**defaults, "max_move": None})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, shared = group["lr"], group["shared"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros((), device=p.device) if shared else torch.zeros_like(grad)
                state["step"] += 1
                t = float(state["step"])
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                state["exp_avg"].lerp_(grad, 1 - b1)
                state["exp_avg_sq"].mul_(b2).add_(grad.pow(2).mean() if shared else grad.pow(2), alpha=1 - b2)
                denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt().add_(group["eps"])
                move = state["exp_avg"] / (1 - b1**t) / denom * lr
                if group["max_move"] is not None:
                    move = move.clamp_(-group["max_move"], group["max_move"])
                p.sub_(move.to(p.dtype))
        return loss
