"""train=distill: label-free distillation that may move the codes.

The student is the run's quantized model (``quant=...``, rounded by its method: GPTQ's solution is the start),
every packed linear trained through its own grid (``medret.quant.ste``: latent weights re-rounded each forward,
straight-through; scales, offsets, k-means codebooks, biases and LayerNorms fitted); the teacher is the fp32 model
as loaded. Both read the same corpus texts (``data.doc_texts``, never queries): a seeded sample of
``train.distill_texts`` to train on, and ``train.distill_dev_texts`` others held out, on which the mean
teacher-student embedding cosine picks the best step (label-free: no qrels are read). Loss per batch:
``distill_token_weight`` x (1 - token-output cosine) + ``distill_similarity_weight`` x MSE between the in-batch
cosine-similarity matrices. ``distill_crop`` reads a share of each batch as short word spans of the same texts
(query-length inputs, still the corpus's own words). The best student is written packed (``best_model``;
``model.path=`` evaluates it).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from medret.config import TrainRootConfig
from medret.data import RetrievalDataset, load_dataset
from medret.errors import InputError
from medret.losses import similarity_structure, token_cosine
from medret.models import Retriever
from medret.models.saving import save_quantized
from medret.quant import calibration_corpus, names, needs_calibration, quantize_retriever, scheme, validate
from medret.quant.ste import unwrap, wrap
from medret.training.kinds import QatKind, register
from medret.training.latent_adam import LatentAdam
from medret.training.loop import optimizer_step

if TYPE_CHECKING:
    from medret.training.session import Session

log = logging.getLogger(__name__)

WEIGHTS = ("distill_token_weight", "distill_similarity_weight")


@dataclass
class TextSplit:
    train: list[int]  # corpus positions trained on (and calibrated on)
    dev: list[int]  # held-out corpus positions: the teacher-student fidelity that keeps the best step


def split_texts(num_docs: int, cfg: TrainRootConfig) -> TextSplit:
    """Disjoint seeded samples of the corpus; a function of the corpus size and ``seed`` alone, so every quant
    config of a comparison is scored on the same held-out texts."""
    t = cfg.train
    if t.distill_dev_texts >= num_docs:
        raise InputError(
            f"train.distill_dev_texts={t.distill_dev_texts}: the corpus has {num_docs} records; hold out fewer "
            f"(at least train.batch_size={t.batch_size} must remain to train on)"
        )
    order = np.random.default_rng([cfg.seed, 0xD157]).permutation(num_docs)
    dev = sorted(int(i) for i in order[: t.distill_dev_texts])
    train = sorted(int(i) for i in order[t.distill_dev_texts : t.distill_dev_texts + t.distill_texts])
    if len(train) < t.batch_size:
        raise InputError(
            f"train.batch_size={t.batch_size}: only {len(train)} corpus texts to train on "
            f"(train.distill_texts={t.distill_texts}, {len(dev)} held out by train.distill_dev_texts)"
        )
    return TextSplit(train, dev)


def step_texts(split: TextSplit, step: int, batch_size: int, seed: int) -> list[int]:
    """The corpus positions of a (micro-)step: a function of the step alone, so a resumed run sees the same."""
    per_epoch = max(1, len(split.train) // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(split.train))
    return [split.train[i] for i in order[pos * batch_size : (pos + 1) * batch_size]]


MIN_CROP_WORDS = 4


def crop(text: str, rng: np.random.Generator, max_words: int) -> str:
    """A contiguous span of ``min(4, max_words)..max_words`` words of ``text`` (the whole text if it is shorter):
    a query-length input that is still the corpus's own text."""
    words = text.split()
    n = int(rng.integers(min(MIN_CROP_WORDS, max_words), max_words + 1))
    if len(words) <= n:
        return text
    start = int(rng.integers(0, len(words) - n + 1))
    return " ".join(words[start : start + n])


def step_inputs(texts: list[str], step: int, share: float, max_words: int, seed: int) -> list[str]:
    """A step's texts with the first ``round(share x batch)`` cropped (the batch order is already random); the
    spans are a function of the step alone, so a resumed run reads the same inputs."""
    if not share:
        return texts
    rng = np.random.default_rng([seed, step, 0xC409])
    n = round(share * len(texts))
    return [crop(t, rng, max_words) for t in texts[:n]] + texts[n:]


def dev_inputs(texts: list[str], share: float, max_words: int, seed: int) -> list[str]:
    """The held-out texts, and with cropping on one span of each as well: the best step is then the one that
    keeps short inputs as close to the teacher as whole ones."""
    if not share:
        return texts
    rng = np.random.default_rng([seed, 0xDE7C])
    return texts + [crop(t, rng, max_words) for t in texts]


def _tokens(enc, texts: list[str]) -> dict[str, torch.Tensor]:
    s = enc.settings
    return enc.tokenizer(
        [s.prefix + t for t in texts], padding=True, truncation=True, max_length=s.max_length, return_tensors="pt"
    ).to(enc.device)


@torch.no_grad()
def embed(model: torch.nn.Module, enc, texts: list[str], batch_size: int) -> torch.Tensor:
    """Pooled embeddings of ``texts`` by ``model`` read as ``enc`` reads (prefix, length, pooling), in order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: little padding
    out = torch.empty(len(texts), enc.dim)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = _tokens(enc, [texts[i] for i in idx])
        out[idx] = enc.pool(model(**batch).last_hidden_state, batch["attention_mask"]).float().cpu()
    return out


def fidelity(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """Mean teacher-student embedding cosine, and the MSE between their cosine-similarity matrices."""
    return {
        "cosine": float(F.cosine_similarity(student, teacher, dim=-1).mean()),
        "similarity_mse": float(similarity_structure(student, teacher)),
    }


class DistillKind(QatKind):
    """``keep_best`` is qat's (the latent state); ``finish`` writes the packed codes instead of re-rounding."""

    name = "distill"

    def resolve(self, cfg: TrainRootConfig) -> TrainRootConfig:
        if cfg.quant.name != "auto":
            return cfg
        from medret.models.encoder import resolve_model_path
        from medret.quant.auto import resolve_auto

        quant, _ = resolve_auto(
            dataclasses.replace(cfg.quant, side="both"),
            cfg.model.path,
            cfg.model.revision,
            None,
            functools.partial(resolve_model_path, cfg.model.path),
        )
        return dataclasses.replace(cfg, quant=dataclasses.replace(quant, side=cfg.quant.side))

    def check(self, cfg: TrainRootConfig) -> None:
        validate(cfg.quant)
        if scheme(cfg.quant.name).kind != "custom":
            raise InputError(
                f"quant={cfg.quant.name}: train=distill trains the codes of a custom scheme "
                f"({', '.join(names('custom'))}, or quant=auto over one)"
            )
        t = cfg.train
        if t.hard_negatives:
            raise InputError(
                f"train.hard_negatives={t.hard_negatives}: train=distill learns from corpus texts alone "
                "(no queries, no negatives); use 0"
            )
        for name in WEIGHTS:
            if not (math.isfinite(getattr(t, name)) and getattr(t, name) >= 0):
                raise InputError(f"train.{name}={getattr(t, name)}: expected a finite number >= 0")
        if not any(getattr(t, name) for name in WEIGHTS):
            raise InputError(f"train.{WEIGHTS[0]}=0 and train.{WEIGHTS[1]}=0: no loss to train on; set one > 0")
        if not (math.isfinite(t.distill_latent_lr) and t.distill_latent_lr >= 0):
            raise InputError(
                f"train.distill_latent_lr={t.distill_latent_lr}: expected a finite number >= 0 (0 keeps the codes)"
            )
        if not (math.isfinite(t.distill_crop) and 0 <= t.distill_crop <= 1):
            raise InputError(f"train.distill_crop={t.distill_crop}: expected a share of the batch in [0, 1]")
        if t.distill_crop_words < 1:
            raise InputError(f"train.distill_crop_words={t.distill_crop_words}: expected a positive number of words")
        if t.distill_texts < 1:
            raise InputError(f"train.distill_texts={t.distill_texts}: expected a positive number of corpus texts")
        if t.distill_dev_texts < 0:
            raise InputError(f"train.distill_dev_texts={t.distill_dev_texts}: expected 0 or more")

    def load(self, cfg: TrainRootConfig) -> tuple[RetrievalDataset, TextSplit, list[int]]:
        data = load_dataset(cfg.data)  # its queries and qrels are loaded, and never read
        split = split_texts(data.num_docs, cfg)
        log.info("distill: %d corpus texts to train on, %d held out", len(split.train), len(split.dev))
        return data, split, []

    def counts(self, split: TextSplit) -> dict[str, int]:
        return {"train_texts": len(split.train), "dev_texts": len(split.dev)}

    def prepare(self, retriever: Retriever, data: RetrievalDataset, cfg: TrainRootConfig) -> dict | None:
        """The fp32 teachers copied, the students quantized (calibrated on training texts only) and wrapped."""
        split = split_texts(data.num_docs, cfg)
        encoders = retriever.encoders()
        teachers = [copy.deepcopy(e.model).eval().requires_grad_(False) for e in encoders]
        train_texts = [data.doc_texts[i] for i in split.train]
        calibration = calibration_corpus(train_texts, cfg.quant) if needs_calibration(cfg.quant) else None
        info = quantize_retriever(retriever, cfg.quant, calibration=calibration)
        trained = sum(p.numel() for e in encoders for p in wrap(e.model))
        tc = cfg.train
        dev_texts = dev_inputs([data.doc_texts[i] for i in split.dev], tc.distill_crop, tc.distill_crop_words, cfg.seed)
        bs = cfg.model.batch_size
        targets = [embed(t, e, dev_texts, bs) for t, e in zip(teachers, encoders)] if dev_texts else []
        meta = {"teachers": teachers, "dev_texts": dev_texts, "dev_targets": targets, "quant": info}
        start = _dev_fidelity([e.model for e in encoders], encoders, meta, bs) if dev_texts else {}
        # the rounding's own state, put back if no dev score beats it (as refinement reverts a worse fit)
        meta["start_state"] = [{k: v.detach().cpu().clone() for k, v in e.model.state_dict().items()} for e in encoders]
        log.info(
            "distill: %s %s bits (%s, %.3f bits/param) trained through its grid: %d parameters; start %s",
            cfg.quant.name,
            cfg.quant.bits,
            cfg.quant.method,
            info["effective_bits_per_param"],
            trained,
            start,
        )
        return {**meta, "start": start, "trainable_params": trained}

    def optimizer(self, models: list, cfg: TrainRootConfig) -> torch.optim.Optimizer:
        """The stored floats, biases and LayerNorms by AdamW at ``train.lr``; the latent weights (in level gaps) at
        ``distill_latent_lr`` with a second moment per tensor and at most half a gap per step (``LatentAdam``)."""
        named = [(n, p) for m in models for n, p in m.named_parameters() if p.requires_grad]
        t = cfg.train
        groups = [
            {"params": [p for n, p in named if not n.endswith(".latent")]},
            {
                "params": [p for n, p in named if n.endswith(".latent")],
                "lr": t.distill_latent_lr,
                "weight_decay": 0.0,
                "shared": True,
                "max_move": 0.5,
            },
        ]
        return LatentAdam(groups, lr=t.lr, weight_decay=t.weight_decay)

    def step(self, s: Session, data: RetrievalDataset, split: TextSplit, hard: dict, step: int) -> float:
        t = s.cfg.train
        for m in s.models:
            m.eval()  # no dropout: the teacher's targets are its eval outputs
        losses = []
        for micro in range(t.grad_accum):
            picks = step_texts(split, step * t.grad_accum + micro, t.batch_size, s.cfg.seed)
            texts = step_inputs(
                [data.doc_texts[i] for i in picks],
                step * t.grad_accum + micro,
                t.distill_crop,
                t.distill_crop_words,
                s.cfg.seed,
            )
            with s.acc.accumulate(*s.models):
                loss = torch.zeros((), device=s.acc.device)
                for enc, teacher in zip(s.retriever.encoders(), s.kind_meta["teachers"]):
                    batch = _tokens(enc, texts)
                    mask = batch["attention_mask"]
                    with torch.no_grad():
                        target = teacher(**batch).last_hidden_state.float()
                    hidden = enc.model(**batch).last_hidden_state
                    if t.distill_token_weight:
                        loss = loss + t.distill_token_weight * token_cosine(hidden, target, mask)
                    if t.distill_similarity_weight:
                        emb, ref = enc.pool(hidden, mask), enc.pool(target, mask)
                        loss = loss + t.distill_similarity_weight * similarity_structure(emb, ref)
                optimizer_step(s, loss, t.max_grad_norm)
            losses.append(loss.item())
        return float(np.mean(losses))

    def dev_metric(self, cfg: TrainRootConfig) -> str:
        return "cosine"

    def has_dev(self, split: TextSplit) -> bool:
        return bool(split.dev)

    def dev(self, s: Session, data: RetrievalDataset, split: TextSplit, ks: list[int], metric: str) -> dict[str, float]:
        encoders = s.retriever.encoders()
        return _dev_fidelity([e.model for e in encoders], encoders, s.kind_meta, s.cfg.model.batch_size)

    def finish(self, s: Session, run_dir: Path, state: dict) -> dict | None:
        meta = s.kind_meta
        reverted = state["best_step"] is not None and state["best_dev_cosine"] <= meta["start"]["cosine"]
        for i, m in enumerate(s.unwrapped()):
            if reverted:
                m.load_state_dict(meta["start_state"][i])
            elif state["best_step"] is not None:
                m.load_state_dict(torch.load(run_dir / "best_latent" / f"encoder{i}.pt", weights_only=True))
        shared = s.retriever.query.model is s.retriever.doc.model
        moved = {"layers": 0, "codes": 0, "codes_moved": 0}
        for enc in s.retriever.encoders():
            enc.model = s.acc.unwrap_model(enc.model)
            for k, v in unwrap(enc.model).items():
                moved[k] += v
        if shared:
            s.retriever.query.model = s.retriever.doc.model
        distill = {
            **moved,
            "codes_moved_fraction": moved["codes_moved"] / max(1, moved["codes"]),
            "trainable_params": meta["trainable_params"],
            "dev_texts": len(meta["dev_texts"]),  # with cropping on: each held-out text whole and as a span
            **{f"start_dev_{k}": v for k, v in meta["start"].items()},
            "best_step": state["best_step"],
            **({"best_dev_cosine": state["best_dev_cosine"]} if state["best_step"] is not None else {}),
            "reverted": reverted,  # no dev score beat the rounding's: its codes and floats were written
        }
        info = {**{k: v for k, v in meta["quant"].items() if k != "layers"}, "distill": distill}
        save_quantized(s.retriever, run_dir / "best_model", info, s.source)
        if s.cfg.quant.save_dir:
            info["saved_to"] = str(save_quantized(s.retriever, Path(s.cfg.quant.save_dir), info, s.source))
        log.info(
            "distill: %d of %d codes moved (%.2f%%)",
            moved["codes_moved"],
            moved["codes"],
            100 * distill["codes_moved_fraction"],
        )
        return info


def _dev_fidelity(models: list, encoders: list, meta: dict, batch_size: int) -> dict[str, float]:
    """The students' fidelity to their teachers on the held-out texts (averaged over a pair's two encoders)."""
    scores = []
    for model, enc, target in zip(models, encoders, meta["dev_targets"]):
        model.eval()
        scores.append(fidelity(embed(model, enc, meta["dev_texts"], batch_size), target))
    return {k: float(np.mean([x[k] for x in scores])) for k in scores[0]}


register(DistillKind())
