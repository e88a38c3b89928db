"""torch: the encoder as loaded (and quantized) in PyTorch, unchanged; the default runtime."""

from __future__ import annotations

from typing import Any

from medret.config import RuntimeConfig
from medret.runtime.backend import BuildJob, register
from medret.runtime.info import torch_info


class TorchBackend:
    name = "torch"
    modes = ("none",)
    precisions = ("f32",)
    calibrated: tuple[str, ...] = ()
    libraries = ("torch",)
    hint = " (quantize in PyTorch with quant=...)"

    def modules(self, cfg: RuntimeConfig) -> list[str]:
        return []

    def check(self, cfg: RuntimeConfig) -> None:
        pass  # the opset and the runtime packages do not apply

    def build(self, encoder: Any, cfg: RuntimeConfig, job: BuildJob) -> tuple[Any, dict[str, Any]]:
        return encoder, torch_info(encoder)


register(TorchBackend())
