"""Train kinds, one class each: what it checks, how it prepares the model, keeps the best one and finishes.

``contrastive`` fine-tunes fp32 weights; ``qat`` trains through a custom quantizer (straight-through) and
saves the packed model; ``qlora`` trains LoRA adapters over a frozen quantized base and saves the adapters
plus a merged fp32 model; ``distill`` (``distill_kind.py``) trains a quantized student against the fp32 teacher
on corpus texts. A new kind is one class that calls ``register`` (here, or in a module ``medret/training/*_kind.py``,
imported on first lookup) plus one YAML in conf/train/.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medret.config import TrainRootConfig
from medret.data import RetrievalDataset
from medret.errors import InputError
from medret.models import Retriever
from medret.models.lora import load_adapter_files, merge_to_dense, save_adapter_files, save_adapters
from medret.models.saving import export, save_quantized
from medret.plugins import import_all
from medret.quant import calibration_corpus, needs_calibration, quant_identity, quantize_retriever, scheme, validate
from medret.quant.fake import attach_fake_quant, detach_fake_quant
from medret.storage import write_atomic

if TYPE_CHECKING:
    from medret.training.session import Session

log = logging.getLogger(__name__)


class TrainKind:
    """The contrastive default of every step; the other kinds override what they do differently."""

    name = "contrastive"

    def resolve(self, cfg: TrainRootConfig) -> TrainRootConfig:
        """The config this kind trains with, before any check (distill: quant=auto into its per-layer widths)."""
        return cfg

    def check(self, cfg: TrainRootConfig) -> None:
        """Options this kind cannot train with (one-line InputError)."""
        if cfg.quant.name != "none":
            raise InputError(
                f"quant={cfg.quant.name}: contrastive training fine-tunes fp32 weights; use train=qat to "
                "train through a custom quantizer, or quantize the exported model with evaluate.py"
            )

    def load(self, cfg: TrainRootConfig) -> tuple[RetrievalDataset, Any, list[int]]:
        """The data, its split into training and dev parts, and the cut-offs a dev score needs: (query, positive)
        pairs from the qrels of ``data.split``, a share of the queries held out."""
        from medret.training.checks import load_pairs  # checks imports this module

        return load_pairs(cfg)

    def counts(self, split: Any) -> dict[str, int]:
        """How much was trained on and held out, for train_results.json."""
        return {"train_pairs": len(split.pairs), "dev_queries": len(split.dev_queries)}

    def prepare(self, retriever: Retriever, data: RetrievalDataset, cfg: TrainRootConfig) -> dict | None:
        """Change the loaded model before training; returns what later steps need (kept on the Session)."""
        return None

    def optimizer(self, models: list, cfg: TrainRootConfig) -> torch.optim.Optimizer:
        """AdamW over every parameter that requires grad."""
        params = [p for m in models for p in m.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def step(self, s: Session, data: RetrievalDataset, split: Any, hard: dict, step: int) -> float:
        """One optimizer step (``train.grad_accum`` micro-batches); returns its mean loss."""
        from medret.training.loop import train_step  # loop imports the session, which imports this module

        return train_step(s, data, split, hard, step)

    def dev_metric(self, cfg: TrainRootConfig) -> str:
        """The dev score the best model is kept by (higher is better)."""
        return cfg.eval.optimize_metric

    def has_dev(self, split: Any) -> bool:
        return bool(split.dev_queries)

    def dev(self, s: Session, data: RetrievalDataset, split: Any, ks: list[int], metric: str) -> dict[str, float]:
        """Dev scores by name: ``metric`` among them."""
        from medret.training.loop import dev_score

        return {metric: dev_score(s, data, split, ks, metric)}

    def hook_checkpoints(self, acc: Any) -> None:
        """Change what accelerate's checkpoints hold (default: the whole models)."""

    def keep_best(self, s: Session, run_dir: Path, step: int) -> None:
        export(s.retriever, run_dir / "best_model", s.acc.unwrap_model)

    def finish(self, s: Session, run_dir: Path, state: dict) -> dict | None:
        """Write the deployable result; returns its quant info for train_results.json."""
        if state["best_step"] is None:  # no dev split: the last model is the one exported
            export(s.retriever, run_dir / "best_model", s.acc.unwrap_model)
        return None


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class QatKind(TrainKind):
    name = "qat"

    def check(self, cfg: TrainRootConfig) -> None:
        validate(cfg.quant)
        if cfg.quant.method != "rtn":  # QAT trains through round-to-nearest: exports the same
            raise InputError(f"quant.method={cfg.quant.method}: train=qat trains and exports round-to-nearest (rtn)")
        if cfg.quant.rotate != "none":  # fake quantization rounds the weights as they are
            raise InputError(
                f"quant.rotate={cfg.quant.rotate}: train=qat rounds unrotated weights; use quant.rotate=none"
            )

    def prepare(self, retriever: Retriever, data: RetrievalDataset, cfg: TrainRootConfig) -> dict | None:
        n_fake = sum(attach_fake_quant(enc.model, cfg.quant) for enc in retriever.encoders())
        log.info("qat: %d linear layers fake-quantized (%s, %s bits)", n_fake, cfg.quant.name, cfg.quant.bits)
        return None

    def keep_best(self, s: Session, run_dir: Path, step: int) -> None:
        # the latent weights; the packed model is made once, at the end
        folder = run_dir / "best_latent"
        for i, m in enumerate(s.unwrapped()):
            state = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
            write_atomic(folder / f"encoder{i}.pt", [_torch_bytes(state)])

    def finish(self, s: Session, run_dir: Path, state: dict) -> dict | None:
        if state["best_step"] is not None:
            for i, m in enumerate(s.unwrapped()):
                m.load_state_dict(torch.load(run_dir / "best_latent" / f"encoder{i}.pt", weights_only=True))
        shared = s.retriever.query.model is s.retriever.doc.model
        for enc in s.retriever.encoders():
            enc.model = s.acc.unwrap_model(enc.model)
            detach_fake_quant(enc.model)
        if shared:
            s.retriever.query.model = s.retriever.doc.model
        info = quantize_retriever(s.retriever, s.cfg.quant)
        save_quantized(s.retriever, run_dir / "best_model", info, s.source)
        return {k: v for k, v in info.items() if k != "layers"}


class QloraKind(TrainKind):
    name = "qlora"

    def check(self, cfg: TrainRootConfig) -> None:
        validate(cfg.quant)
        if scheme(cfg.quant.name).kind in ("none", "cast"):
            raise InputError(
                f"quant={cfg.quant.name}: qlora trains adapters over a quantized base; use bnb_nf4, "
                "bnb_int8 or a custom scheme (or train=contrastive for fp32)"
            )
        if cfg.model.adapter:
            raise InputError("model.adapter: qlora starts new adapters; merge the old ones first (best_model/)")

    def prepare(self, retriever: Retriever, data: RetrievalDataset, cfg: TrainRootConfig) -> dict | None:
        """Quantize the base (frozen) and put LoRA adapters on its quantized linears; returns their meta."""
        from medret.models.lora import attach_lora, lora_targets, quant_digest

        t = cfg.quant
        calibration = calibration_corpus(data.doc_texts, t) if needs_calibration(t) else None
        info = quantize_retriever(retriever, t, calibration=calibration)
        targets, n = [], 0
        for enc in retriever.encoders():
            targets.append(lora_targets(enc.model))
            n += attach_lora(enc.model, targets[-1], cfg.train.lora_r, cfg.train.lora_alpha, cfg.train.lora_dropout)
        quant = quant_identity(cfg.quant)
        log.info(
            "qlora: base %s (%.2f bits/param), LoRA r=%d on %d linears, %d trainable parameters",
            t.name,
            info["effective_bits_per_param"],
            cfg.train.lora_r,
            sum(map(len, targets)),
            n,
        )
        meta = {"r": cfg.train.lora_r, "alpha": cfg.train.lora_alpha, "targets": targets, "quant": quant}
        return {**meta, "quant_digest": quant_digest(quant), "base_model": cfg.model.path, "trainable_params": n}

    def hook_checkpoints(self, acc: Any) -> None:
        # checkpoints hold the adapters only: the quantized base is rebuilt from the config
        acc.register_save_state_pre_hook(
            lambda ms, weights, out: (save_adapter_files([acc.unwrap_model(m) for m in ms], Path(out)), weights.clear())
        )
        acc.register_load_state_pre_hook(
            lambda ms, folder: (load_adapter_files([acc.unwrap_model(m) for m in ms], Path(folder)), ms.clear())
        )

    def keep_best(self, s: Session, run_dir: Path, step: int) -> None:
        save_adapters(s.unwrapped(), run_dir / "best_adapter", {**s.kind_meta, "step": step})

    def finish(self, s: Session, run_dir: Path, state: dict) -> dict | None:
        if state["best_step"] is None:  # no dev split: the last adapters are the ones kept
            self.keep_best(s, run_dir, state["step"])
        else:
            load_adapter_files(s.unwrapped(), run_dir / "best_adapter")
        merged = sum(merge_to_dense(m) for m in s.unwrapped())
        export(s.retriever, run_dir / "best_model", s.acc.unwrap_model)
        return {
            "scheme": s.cfg.quant.name,
            "bits": s.cfg.quant.bits,
            "lora_r": s.cfg.train.lora_r,
            "adapter": str(run_dir / "best_adapter"),
            "merged_layers": merged,
            "trainable_params": s.kind_meta["trainable_params"],
        }


_KINDS: dict[str, TrainKind] = {}


def register(kind: TrainKind) -> TrainKind:
    _KINDS[kind.name] = kind
    return kind


def names() -> tuple[str, ...]:
    import_all("medret.training", "_kind")
    return tuple(_KINDS)


def train_kind(name: str) -> TrainKind:
    import_all("medret.training", "_kind")
    if name not in _KINDS:
        raise InputError(f"train={name}: expected {', '.join(_KINDS)}")
    return _KINDS[name]


for _kind in (TrainKind(), QatKind(), QloraKind()):
    register(_kind)
