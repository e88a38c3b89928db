"""Rotation before rounding (``quant.rotate=hadamard``): incoherence processing as QuIP# and QuaRot do it.

A linear computes W x = (W R^T)(R x) for any orthogonal R. With R a randomized Hadamard transform over the
input features, the weight W R^T that is rounded has its large input columns spread over a whole block, so a
group's scale is no longer set by one outlier. The encoders medret quantizes are post-LayerNorm, so R cannot
be folded through the residual stream as in pre-RMSNorm LLMs: it is applied to each layer's input at run time
(``RotatedLinear``: one batched matmul by a b x b Hadamard block, O(n b) per token, on CPU faster than a
butterfly transform in torch ops), or folded back into a dense weight when the packed weights are decoded once
(``quant.decode=once``: no run-time cost).

R = blockdiag(H_b) D / sqrt(b): D a seeded random sign per input feature, H_b the Sylvester Hadamard matrix of
b, the largest power of two dividing in_features up to 128 (384 = 3 x 128, 1536 = 12 x 128; an outlier is
spread over 128 columns, two groups of 64). The rotation stores nothing but its seed and sizes: the bits per
parameter are those of the rounding.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn

from medret.errors import InputError

KINDS = ("none", "hadamard")
MIN_BLOCK = 8  # a smaller block spreads an outlier over too few columns to matter; the layer is refused
MAX_BLOCK = 128  # spreads enough for groups of 64; the run-time matmul costs at most a third of a 384-wide linear


def block_size(n: int) -> int:
    """The largest power of two dividing ``n``, at most MAX_BLOCK: the Hadamard blocks of an ``n``-wide input."""
    return min(n & -n, MAX_BLOCK)


def layer_seed(seed: int, name: str) -> int:
    """Each layer its own signs (stable across runs and machines): one seed for the whole model."""
    return zlib.crc32(f"{seed}:{name}".encode())


def hadamard(b: int) -> torch.Tensor:
    """The Sylvester Hadamard matrix of order ``b`` (a power of two): symmetric, H H = b I."""
    h = torch.ones(1, 1)
    while h.shape[0] < b:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


@dataclass
class Rotation:
    """R = blockdiag(H_block) diag(signs) / sqrt(block) over ``n`` input features; signs drawn from ``seed``."""

    n: int
    seed: int
    block: int = 0  # 0: block_size(n)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # by (device, dtype)

    def __post_init__(self):
        self.block = self.block or block_size(self.n)
        if self.n % self.block or self.block & (self.block - 1):
            raise ValueError(f"Hadamard block {self.block} is not a power of two dividing {self.n}")

    def _factors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(signs [n], H_block / sqrt(block)) on ``like``'s device and dtype, drawn once."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            g = torch.Generator().manual_seed(self.seed)
            d = torch.randint(0, 2, (self.n,), generator=g).float() * 2 - 1
            h = hadamard(self.block) / math.sqrt(self.block)
            self._cache[key] = (d.to(like.device, like.dtype), h.to(like.device, like.dtype))
        return self._cache[key]

    def _blocks(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return (x.reshape(-1, self.n // self.block, self.block) @ h).view(x.shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """R x along the last dim (a layer's input); on a weight's rows: W R^T, the weight that is rounded."""
        d, h = self._factors(x)
        return self._blocks(x * d, h)

    def apply_t(self, y: torch.Tensor) -> torch.Tensor:
        """R^T y along the last dim (H is symmetric); on a rounded weight's rows: Q R, its un-rotated weight."""
        d, h = self._factors(y)
        return self._blocks(y, h) * d

    def hessian(self, h: torch.Tensor) -> torch.Tensor:
        """R H R^T: the Hessian of the rotated inputs R x, from that of the inputs (H symmetric)."""
        return self.apply(self.apply(h).T.contiguous())

    def describe(self) -> dict:
        return {"kind": "hadamard", "in": self.n, "block": self.block, "seed": self.seed}


class RotatedLinear(nn.Module):
    """``inner`` (a QuantLinear of W R^T, or any linear of the rotated basis) on R x: computes W x.

    The packed layer stays a child of its own, so refinement, LoRA, export and save/load see an ordinary
    QuantLinear (``<name>.inner``) and this module keeps the rotation around whatever replaces it."""

    def __init__(self, inner: nn.Module, rotation: Rotation):
        super().__init__()
        self.inner, self.rotation = inner, rotation
        self.in_features, self.out_features = inner.in_features, inner.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.rotation.apply(x))

    def extra_repr(self) -> str:
        return f"hadamard block={self.rotation.block}, seed={self.rotation.seed}"


def rotation_for(name: str, in_features: int, spec) -> Rotation | None:
    """The rotation ``spec`` asks of layer ``name`` (None under quant.rotate=none)."""
    if spec.rotate == "none":
        return None
    return Rotation(in_features, layer_seed(spec.rotate_seed, name))


def check_layers(model: nn.Module, specs: dict) -> None:
    """Every rotated layer's input width has Hadamard blocks of at least MIN_BLOCK (before any rounding)."""
    for name, spec in specs.items():
        n = model.get_submodule(name).in_features
        if spec.rotate != "none" and block_size(n) < MIN_BLOCK:
            raise InputError(
                f"quant.rotate={spec.rotate}: layer {name} has in_features={n}, whose largest power-of-two "
                f"factor {block_size(n)} is under {MIN_BLOCK}; leave it out with quant.overrides "
                f"{{{name}: {{rotate: none}}}}"
            )


def rotated_dense(lin: nn.Linear, rotation: Rotation) -> RotatedLinear:
    """The same function as ``lin`` in the rotated basis, unrounded: W R^T on R x (what the rounding starts from)."""
    dense = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
    dense.weight.data = rotation.apply(lin.weight.detach().float())
    if lin.bias is not None:
        dense.bias.data = lin.bias.detach().float().clone()
    return RotatedLinear(dense.to(lin.weight.device).requires_grad_(False), rotation)


def wrap(model: nn.Module, name: str, rotation: Rotation) -> None:
    """Put the module at ``name`` (of rotated weights) inside a RotatedLinear."""
    model.set_submodule(name, RotatedLinear(model.get_submodule(name), rotation), strict=True)


def unrotated_weight(mod: RotatedLinear, decoded: torch.Tensor) -> torch.Tensor:
    """The weight in the original basis of a rotated layer whose inner weight decodes to ``decoded``: Q R."""
    return mod.rotation.apply_t(decoded.float())


def rotations(model: nn.Module) -> dict[str, dict]:
    """The manifest entry of every RotatedLinear: its kind, width, block and seed."""
    return {n: m.rotation.describe() for n, m in model.named_modules() if isinstance(m, RotatedLinear)}


def restore(model: nn.Module, saved: dict[str, dict], where: str) -> None:
    """Re-create the RotatedLinears a manifest names around the model's own linears (their packed inner
    modules then replace ``<name>.inner``)."""
    for name, spec in saved.items():
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise InputError(f"{where}: rotated module {name!r} not in the model built from config.json") from None
        if spec.get("kind") != "hadamard" or spec.get("in") != lin.in_features:
            raise InputError(f"{where}: rotation of {name!r} is {spec}, expected a hadamard over {lin.in_features}")
        wrap(model, name, Rotation(spec["in"], spec["seed"], spec["block"]))
