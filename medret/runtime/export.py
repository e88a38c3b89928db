"""Export a loaded torch encoder (transformer + pooling + normalisation) to one fp32 ONNX graph."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medret.runtime.options import MIN_OPSET

log = logging.getLogger(__name__)

OUTPUT = "sentence_embedding"  # not "embedding": the dynamo exporter clashes with a module of that name
ONNX_FILE = "model.onnx"
# ONNX protobufs cap at 2 GiB: larger models keep their weights in a side file
_SINGLE_FILE_MAX_BYTES = 1_800_000_000


class PooledEncoder(nn.Module):
    """Transformer + pooling (+ L2 normalisation): the graph's one output is [batch, dim] float32."""

    def __init__(self, model: nn.Module, pooling: str, normalize: bool):
        super().__init__()
        self.model, self.pooling, self.normalize = model, pooling, normalize

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            feeds["token_type_ids"] = token_type_ids
        hidden = self.model(**feeds).last_hidden_state
        mask = attention_mask
        # same arithmetic as TextEncoder.pool, so the fp32 graph matches torch to float rounding
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        emb = emb.float()
        if self.normalize:
            emb = nn.functional.normalize(emb, p=2, dim=-1)
        return emb


def input_names(encoder: Any) -> tuple[str, ...]:
    """Inputs the graph takes: token_type_ids only where the tokenizer makes them and the model reads them."""
    names = ["input_ids", "attention_mask"]
    params = inspect.signature(encoder.model.forward).parameters
    if "token_type_ids" in getattr(encoder.tokenizer, "model_input_names", []) and "token_type_ids" in params:
        names.append("token_type_ids")
    return tuple(names)


def _bnb_kind(mod: nn.Module) -> bool:
    return type(mod).__name__ in ("Linear8bitLt", "Linear4bit") and type(mod).__module__.startswith("bitsandbytes")


def quantized_modules(model: nn.Module) -> list[str]:
    """Names of modules holding medret-quantized weights (packed QuantLinear or bitsandbytes)."""
    from medret.quant.linear import QuantLinear

    return [n for n, m in model.named_modules() if isinstance(m, QuantLinear) or _bnb_kind(m)]


def source_dtype(model: nn.Module) -> torch.dtype:
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return max(set(floats), key=floats.count) if floats else torch.float32


def fp32_copy(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """A CPU fp32 module computing what ``model`` computes: medret-quantized linears become nn.Linear of
    their dequantized weights (the quantization is then simulated in fp32, not run by integer kernels)."""
    names = quantized_modules(model)
    dtype = source_dtype(model)
    on_cpu = all(t.device.type == "cpu" for t in model.state_dict().values())
    info = {
        "from_medret_quant": bool(names) or dtype != torch.float32,
        "medret_quantized_modules": len(names),
        "source_dtype": str(dtype).removeprefix("torch."),
    }
    if not names and dtype == torch.float32 and on_cpu:
        return model, info  # export does not modify the module: no copy needed
    from medret.quant.linear import QuantLinear
    from medret.quant.state import dequantize

    # swap quantized modules out of the original for the copy's sake, so deepcopy never copies them
    originals = {n: model.get_submodule(n) for n in names}
    replacements: dict[str, nn.Module] = {}
    for name, mod in originals.items():
        if isinstance(mod, QuantLinear):
            weight, bias = dequantize(mod.state(), torch.float32), mod.bias
        else:
            from medret.quant.bnb import dequantized_weight

            weight, bias = dequantized_weight(mod), mod.bias
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        lin.weight.data = weight.detach().to("cpu", torch.float32).clone()
        if bias is not None:
            lin.bias.data = bias.detach().to("cpu", torch.float32).clone()
        replacements[name] = lin
    placeholder = nn.Identity()
    for name in names:
        model.set_submodule(name, placeholder, strict=True)
    try:
        clone = copy.deepcopy(model)
    finally:
        for name, mod in originals.items():
            model.set_submodule(name, mod, strict=True)
    for name, lin in replacements.items():
        clone.set_submodule(name, lin, strict=True)
    return clone.to("cpu", torch.float32).eval(), info


def _example_inputs(encoder: Any, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """Batch 2, two different lengths (never 0/1 sized, which the tracer would specialise), no real text."""
    tok = encoder.tokenizer
    enc = tok(["hello world " * 6, "hello world"], padding=True, truncation=True, max_length=32, return_tensors="pt")
    return tuple(enc[n] if n in enc else torch.zeros_like(enc["input_ids"]) for n in names)


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[str | None]:
    """Trace the plain matmul-softmax-matmul attention (same math as SDPA): its graph has no SDPA
    mask/NaN guards, and ONNX Runtime ran it ~20% faster on MiniLM. Restored afterwards; yields what ran."""
    setter = getattr(model, "set_attn_implementation", None)
    before = getattr(getattr(model, "config", None), "_attn_implementation", None)
    switched = False
    if setter is not None and before not in (None, "eager"):
        try:
            setter("eager")
            switched = True
        except (ValueError, ImportError, NotImplementedError):
            pass  # a model without an eager path exports with what it has
    try:
        yield "eager" if switched else before
    finally:
        if switched:
            setter(before)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns that torchvision ops are missing and about tracing details: noise for us."""
    reg_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = reg_log.level
    reg_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        reg_log.setLevel(level)


def export_onnx(encoder: Any, folder: Path, opset: int = 18) -> dict[str, Any]:
    """Write ``folder/model.onnx``: the encoder's pooled (and normalised) embedding, dynamic batch and length.

    Returns what was exported: input names, the opset written, whether medret quantization was dequantized.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = input_names(encoder)
    model, info = fp32_copy(encoder.model)
    wrapper = PooledEncoder(model, encoder.settings.pooling, encoder.settings.normalize).eval()
    args = _example_inputs(encoder, names)
    dyn = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    opset = max(opset, MIN_OPSET)  # the dynamo exporter writes >= 18; down-conversion fails on BERT graphs
    external = nbytes > _SINGLE_FILE_MAX_BYTES
    with _quiet_exporter(), eager_attention(model) as attention, torch.no_grad():
        # dynamo=True: the TorchScript exporter mis-traces transformers 5 attention (embeddings off by ~0.1)
        torch.onnx.export(
            wrapper,
            args,
            str(folder / ONNX_FILE),
            input_names=list(names),
            output_names=[OUTPUT],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=tuple(dyn for _ in names),
            external_data=external,
            verbose=False,
        )
    _strip_debug_metadata(folder / ONNX_FILE)
    info.update({"inputs": list(names), "opset": opset, "external_data": external, "attention": attention})
    return info


def _strip_debug_metadata(path: Path) -> None:
    """Drop the exporter's per-node stack traces and fx names: they carry local paths and inflate the
    file that bytes_on_disk measures (a tenth of a small model)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))
