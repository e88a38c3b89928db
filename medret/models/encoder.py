"""Transformer text encoders: HF dirs, hub ids and sentence-transformers dirs; symmetric or paired."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from medret.config import ModelConfig
from medret.errors import InputError
from medret.models.parts import SCHEME, resolve_parts
from medret.models.unread import detach_unread
from medret.quant.persist import is_quantized_dir, load_quantized

log = logging.getLogger(__name__)

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_model_path(path: str) -> str:
    """``pkg://name`` -> the model folder a Python package carries; ``parts://name`` -> a model assembled from split
    packages (medret.models.parts); dirs and hub ids unchanged."""
    if path.startswith(SCHEME):
        return resolve_parts(path)
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


def _model_json(path: Path, expected: type = dict):
    """A JSON file of a model folder; a missing or damaged one is one error line naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}); the model folder is incomplete") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(value, expected):
        raise InputError(f"{path}: expected a JSON {'list' if expected is list else 'object'}")
    return value


def sentence_transformers_settings(model_dir: str) -> dict:
    """Pooling, normalisation and max length declared by a sentence-transformers dir, if any."""
    root = Path(model_dir)
    out: dict = {}
    modules = root / "modules.json"
    if not modules.is_file():
        return out
    for mod in _model_json(modules, list):
        kind = str(mod.get("type", "")) if isinstance(mod, dict) else ""
        if kind.endswith(".Pooling"):
            pcfg = _model_json(root / str(mod.get("path", "")) / "config.json")
            if pcfg.get("pooling_mode_cls_token"):
                out["pooling"] = "cls"
            elif pcfg.get("pooling_mode_mean_tokens"):
                out["pooling"] = "mean"
        elif kind.endswith(".Normalize"):
            out["normalize"] = True
    out.setdefault("normalize", False)
    sbert = root / "sentence_bert_config.json"
    if sbert.is_file():
        msl = _model_json(sbert).get("max_seq_length")
        if msl:
            out["max_length"] = int(msl)
    return out


_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
)
# hub ids are "name" or "org/name"; anything else that does not exist is a missing local folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# position-embedding slots used by the padding offset (RoBERTa-style models start positions at pad + 1)
_POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer", "mpnet")


def check_model_options(cfg: ModelConfig) -> None:
    """Model options, checked before any data or weights load (the folders are checked by ``load_retriever``)."""
    if cfg.batch_size < 1:
        raise InputError(f"model.batch_size={cfg.batch_size}: expected a positive number of texts per batch")
    for option, value in (("model.max_length", cfg.max_length), ("model.query_max_length", cfg.query_max_length)):
        if value is not None and value < 1:
            raise InputError(f"{option}={value}: expected a positive token count (or null for the model's own)")
    if cfg.pooling not in (None, "mean", "cls"):
        raise InputError(f"model.pooling={cfg.pooling!r}: expected mean or cls")
    if cfg.autocast not in ("auto", "fp16", "bf16", "none"):
        raise InputError(f"model.autocast={cfg.autocast!r}: expected auto, fp16, bf16 or none")
    if cfg.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", cfg.device):
        raise InputError(f"model.device={cfg.device!r}: expected auto, cpu, cuda or cuda:N")


def check_model_folders(cfg: ModelConfig) -> None:
    """The model folders (config.json and weights present, no weights read): after the option checks, before any
    data loads, so a wrong path is one line before minutes of data reading."""
    check_model_source("model.path", cfg.path, cfg.revision)
    if cfg.query_path is not None:
        check_model_source("model.query_path", cfg.query_path, cfg.revision)


def check_model_source(option: str, path: str, revision: str | None) -> None:
    """A local model folder holds config.json and weights; a hub id is reachable or in the local cache."""
    folder = Path(resolve_model_path(path)).expanduser()
    if folder.is_file():
        raise InputError(f"{option}={path}: is a file; expected a model folder (config.json and weights)")
    if not folder.exists():
        if not _HUB_ID.match(path):
            raise InputError(f"{option}={path}: no such model folder")
        _check_hub_cache(option, path, revision)
        return
    if not (folder / "config.json").is_file():
        what = "an empty folder" if not any(folder.iterdir()) else "no config.json"
        raise InputError(f"{option}={path}: {what}; expected a Hugging Face or sentence-transformers model folder")
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{option}={path}: config.json is not valid JSON ({str(e).splitlines()[0]})") from None
    if not is_quantized_dir(str(folder)) and not any((folder / w).is_file() for w in _WEIGHTS):
        raise InputError(f"{option}={path}: config.json but no weights (model.safetensors or pytorch_model.bin)")


def _not_cached(option: str, model_id: str) -> InputError:
    return InputError(
        f"{option}={model_id}: model {model_id!r} is not in the local Hugging Face cache and the hub cannot be "
        f"reached; download it once where the hub is reachable, or set {option}= to a local model folder"
    )


def _check_hub_cache(option: str, model_id: str, revision: str | None) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json", revision=revision)
    if constants.HF_HUB_OFFLINE and not isinstance(cached, str):
        raise _not_cached(option, model_id)


def _load_pretrained(option: str, path: str, load):
    """A model or tokenizer from ``load()``; a folder or hub id that cannot be read is one line."""
    try:
        return load()
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        if not Path(path).exists() and _HUB_ID.match(path):
            raise _not_cached(option, path) from None
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{option}={path}: cannot load the model ({type(e).__name__}: {first})") from None


def check_position_limit(encoder: TextEncoder, option: str) -> None:
    """Tokens past the model's position embeddings would index out of range inside the model."""
    config = encoder.model.config
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return
    if getattr(config, "model_type", "") in _POSITION_OFFSET_TYPES:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    if encoder.settings.max_length > limit:
        raise InputError(
            f"{option}={encoder.settings.max_length}: the model {encoder.path} has {limit} position embeddings; "
            f"expected at most {limit}"
        )


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

    def __init__(
        self, path: str, settings: EncoderSettings, cfg: ModelConfig, device: torch.device, option: str = "model.path"
    ):
        self.path = path
        self.settings = settings
        self.device = device
        kw = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        self.tokenizer = _load_pretrained(option, path, lambda: AutoTokenizer.from_pretrained(path, **kw))
        if is_quantized_dir(path):  # saved by quant.save_dir: packed weights, no re-quantization
            self.model = _load_pretrained(option, path, lambda: load_quantized(path, cfg.trust_remote_code)).to(device)
        else:
            self.model = _load_pretrained(option, path, lambda: AutoModel.from_pretrained(path, **kw)).to(device).eval()
        self.unread = detach_unread(self.model)  # the pooler: medret pools last_hidden_state (models.unread)
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


def doc_max_length(cfg: ModelConfig) -> int:
    """The document window the loaded encoder will use, found without loading weights."""
    return _settings(resolve_model_path(cfg.path), cfg, cfg.max_length, cfg.doc_prefix).max_length


def load_retriever(cfg: ModelConfig) -> Retriever:
    check_model_source("model.path", cfg.path, cfg.revision)  # one clear line before transformers tries
    if cfg.query_path is not None:
        check_model_source("model.query_path", cfg.query_path, cfg.revision)
    device = pick_device(cfg.device)
    doc_path = resolve_model_path(cfg.path)
    doc = TextEncoder(doc_path, _settings(doc_path, cfg, cfg.max_length, cfg.doc_prefix), cfg, device)
    check_position_limit(doc, "model.max_length")
    if cfg.query_path is None:
        qset = _settings(doc_path, cfg, cfg.query_max_length or cfg.max_length, cfg.query_prefix)
        if qset == doc.settings:
            return Retriever(doc, doc)
        query = copy.copy(doc)  # same weights and tokenizer, other prefix/length
        query.settings = qset
        check_position_limit(query, "model.query_max_length")
        return Retriever(query, doc)
    q_path = resolve_model_path(cfg.query_path)
    q_len = cfg.query_max_length or cfg.max_length
    query = TextEncoder(q_path, _settings(q_path, cfg, q_len, cfg.query_prefix), cfg, device, "model.query_path")
    check_position_limit(query, "model.query_max_length")
    if query.dim != doc.dim:
        raise InputError(f"model.query_path: query encoder dim {query.dim} != document encoder dim {doc.dim}")
    return Retriever(query, doc)
