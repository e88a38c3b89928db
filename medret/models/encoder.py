"""Transformer text encoders: HF dirs, hub ids and sentence-transformers dirs; symmetric or paired."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from medret.config import ModelConfig
from medret.errors import InputError
from medret.quant.persist import is_quantized_dir, load_quantized

log = logging.getLogger(__name__)

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_model_path(path: str) -> str:
    """``pkg://name`` -> the model folder a Python package carries; dirs and hub ids unchanged."""
    if not path.startswith("pkg://"):
        return path
    name = path.removeprefix("pkg://")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"model.path={path}: Python package {name!r} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for cand in (root / "model", root):
        if (cand / "config.json").is_file():
            return str(cand)
    raise InputError(f"model.path={path}: no config.json in package folder {root}")


def sentence_transformers_settings(model_dir: str) -> dict:
    """Pooling, normalisation and max length declared by a sentence-transformers dir, if any."""
    root = Path(model_dir)
    out: dict = {}
    modules = root / "modules.json"
    if not modules.is_file():
        return out
    for mod in json.loads(modules.read_text()):
        kind = mod.get("type", "")
        if kind.endswith(".Pooling"):
            pcfg = json.loads((root / mod["path"] / "config.json").read_text())
            if pcfg.get("pooling_mode_cls_token"):
                out["pooling"] = "cls"
            elif pcfg.get("pooling_mode_mean_tokens"):
                out["pooling"] = "mean"
        elif kind.endswith(".Normalize"):
            out["normalize"] = True
    out.setdefault("normalize", False)
    sbert = root / "sentence_bert_config.json"
    if sbert.is_file():
        msl = json.loads(sbert.read_text()).get("max_seq_length")
        if msl:
            out["max_length"] = int(msl)
    return out


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"model.device={requested}: CUDA is not available on this machine")
    return dev


@dataclass
class EncoderSettings:
    pooling: str
    normalize: bool
    max_length: int
    prefix: str


class TextEncoder:
    """One transformer + tokenizer + pooling; ``encode`` returns float32 numpy embeddings."""

    def __init__(self, path: str, settings: EncoderSettings, cfg: ModelConfig, device: torch.device):
        self.path = path
        self.settings = settings
        self.device = device
        kw = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        if is_quantized_dir(path):  # saved by quant.save_dir: packed weights, no re-quantization
            self.model = load_quantized(path, cfg.trust_remote_code).to(device)
        else:
            self.model = AutoModel.from_pretrained(path, **kw).to(device).eval()
        self.autocast = None
        if device.type == "cuda":
            self.autocast = _AUTOCAST.get("fp16" if cfg.autocast == "auto" else cfg.autocast)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def param_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.settings.pooling == "cls":
            emb = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        emb = emb.float()
        if self.settings.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
        return emb

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int, desc: str = "encode") -> np.ndarray:
        """Batches sorted by token length, so padding is wasted only within similar lengths."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        prefix = self.settings.prefix
        enc = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=self.settings.max_length)
        lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(texts))
        order = np.argsort(-lengths, kind="stable")
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        with tqdm(total=len(texts), desc=desc, unit="text", mininterval=2.0, leave=False) as bar:
            for s in range(0, len(texts), batch_size):
                idx = order[s : s + batch_size]
                feats = [{k: enc[k][i] for k in keys} for i in idx]
                batch = self.tokenizer.pad(feats, return_tensors="pt")
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with ctx:
                    hidden = self.model(**batch).last_hidden_state
                out[idx] = self.pool(hidden, batch["attention_mask"]).cpu().numpy()
                bar.update(len(idx))
        return out


@dataclass
class Retriever:
    """A query encoder and a document encoder (the same object when symmetric)."""

    query: TextEncoder
    doc: TextEncoder

    @property
    def symmetric(self) -> bool:
        return self.query is self.doc

    def encoders(self) -> list[TextEncoder]:
        """Each distinct model once: the document encoder, and the query encoder when its weights differ."""
        return [self.doc] if self.query.model is self.doc.model else [self.doc, self.query]

    def param_bytes(self) -> int:
        return sum(e.param_bytes() for e in self.encoders())


def _settings(path: str, cfg: ModelConfig, max_length: int | None, prefix: str) -> EncoderSettings:
    st = sentence_transformers_settings(path) if Path(path).is_dir() else {}
    pooling = cfg.pooling or st.get("pooling", "mean")
    if pooling not in ("mean", "cls"):
        raise InputError(f"model.pooling={pooling!r}: expected mean or cls")
    normalize = cfg.normalize if cfg.normalize is not None else st.get("normalize", True)
    return EncoderSettings(pooling, bool(normalize), max_length or st.get("max_length", 512), prefix)


def load_retriever(cfg: ModelConfig) -> Retriever:
    device = pick_device(cfg.device)
    doc_path = resolve_model_path(cfg.path)
    doc = TextEncoder(doc_path, _settings(doc_path, cfg, cfg.max_length, cfg.doc_prefix), cfg, device)
    if cfg.query_path is None:
        qset = _settings(doc_path, cfg, cfg.query_max_length or cfg.max_length, cfg.query_prefix)
        if qset == doc.settings:
            return Retriever(doc, doc)
        query = copy.copy(doc)  # same weights and tokenizer, other prefix/length
        query.settings = qset
        return Retriever(query, doc)
    q_path = resolve_model_path(cfg.query_path)
    q_len = cfg.query_max_length or cfg.max_length
    query = TextEncoder(q_path, _settings(q_path, cfg, q_len, cfg.query_prefix), cfg, device)
    if query.dim != doc.dim:
        raise InputError(f"model.query_path: query encoder dim {query.dim} != document encoder dim {doc.dim}")
    return Retriever(query, doc)
