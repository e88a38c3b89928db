"""Model folders written whole or not at all: a fine-tuned export (HF + sentence-transformers files)
and a packed quantized model (``quant.save_dir``, QAT output) that evaluate loads without re-quantizing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from medret.models.encoder import Retriever, TextEncoder
from medret.models.st_files import write_sentence_transformers_files
from medret.models.unread import attached
from medret.quant.persist import MANIFEST, manifest
from medret.storage import atomic_dir

Unwrap = Callable[[nn.Module], nn.Module]


def _targets(retriever: Retriever, root: Path) -> list[tuple[TextEncoder, Path, str]]:
    """A shared model goes to the folder itself; a query/document pair to two sub-folders."""
    encoders = retriever.encoders()
    if len(encoders) == 1:
        return [(encoders[0], root, "doc")]
    return [(retriever.doc, root / "doc_encoder", "doc"), (retriever.query, root / "query_encoder", "query")]


def source_of(model_cfg, identity: dict[str, str]) -> dict[str, dict]:
    """Per side, the fp32 model as configured (portable ``pkg://``/``parts://`` names kept) and its weights digest
    as loaded, before any quantization: what a saved quantized model is judged against."""
    doc = {"path": model_cfg.path, "revision": model_cfg.revision, "weights": identity["doc"]}
    query = {**doc, "weights": identity["query"]}
    if model_cfg.query_path is not None:
        query["path"] = model_cfg.query_path
    return {"doc": doc, "query": query}


def _write_encoder(
    enc: TextEncoder, model: nn.Module, folder: Path, quant_info: dict | None, source: dict | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if quant_info is None:  # a complete HF folder: the unread pooler written back
        with attached(model, enc.unread):
            model.save_pretrained(folder)
    else:  # packed buffers are not HF parameters: write the state dict and the manifest that rebuilds it
        model.config.save_pretrained(folder)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
        )
        (folder / MANIFEST).write_text(manifest(model, quant_info, source, tuple(sorted(enc.unread))))
    enc.tokenizer.save_pretrained(folder)
    s = enc.settings
    write_sentence_transformers_files(folder, s.pooling, s.normalize, s.max_length, enc.dim)


def export(retriever: Retriever, out: Path, unwrap: Unwrap = lambda m: m) -> Path:
    """The retriever's (fp32, possibly fine-tuned) weights as an HF + sentence-transformers dir."""
    with atomic_dir(Path(out)) as tmp:
        for enc, folder, _ in _targets(retriever, tmp):
            _write_encoder(enc, unwrap(enc.model), folder, None)
    return Path(out)


def save_quantized(retriever: Retriever, out: Path, quant_info: dict, source: dict | None = None) -> Path:
    """Packed codes, codebooks, scales and outliers as safetensors, plus ``medret_quant.json`` (with ``source``,
    from ``source_of``, the fp32 model each side came from)."""
    with atomic_dir(Path(out)) as tmp:
        for enc, folder, side in _targets(retriever, tmp):
            _write_encoder(enc, enc.model, folder, quant_info, (source or {}).get(side))
    return Path(out)
