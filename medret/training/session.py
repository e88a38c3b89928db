"""The training session: the prepared retriever, optimizer and schedule, and checkpoints that resume it."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medret.config import TrainRootConfig
from medret.data import RetrievalDataset
from medret.errors import InputError
from medret.models import Retriever, load_retriever
from medret.models.saving import source_of
from medret.retrieval import model_identity
from medret.storage import digest, write_json
from medret.training.kinds import TrainKind, train_kind

log = logging.getLogger(__name__)

STATE = "trainer_state.json"


@dataclass
class Session:
    """What the loop needs: the (prepared) retriever, its distinct models, optimizer, schedule."""

    cfg: TrainRootConfig
    kind: TrainKind
    retriever: Retriever
    acc: Any
    models: list
    params: list
    opt: Any
    sched: Any
    kind_meta: dict | None  # what the kind's prepare returned (qlora: the adapters' meta)
    mixed_precision: str
    source: dict  # the fp32 model as loaded (models.saving.source_of): a saved quantized model's reference

    def unwrapped(self) -> list:
        return [self.acc.unwrap_model(e.model) for e in self.retriever.encoders()]


def make_session(cfg: TrainRootConfig, data: RetrievalDataset) -> Session:
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    t, kind = cfg.train, train_kind(cfg.train.name)
    torch.manual_seed(cfg.seed)
    retriever = load_retriever(cfg.model)
    source = source_of(cfg.model, model_identity(retriever))  # before prepare quantizes it
    kind_meta = kind.prepare(retriever, data, cfg)
    mp = t.mixed_precision if t.mixed_precision != "auto" else ("fp16" if retriever.doc.device.type == "cuda" else "no")
    acc = Accelerator(
        mixed_precision=mp, gradient_accumulation_steps=t.grad_accum, cpu=retriever.doc.device.type == "cpu"
    )
    models = [e.model for e in retriever.encoders()]
    opt = kind.optimizer(models, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    sched = get_linear_schedule_with_warmup(opt, t.warmup_steps, t.max_steps)
    prepared = acc.prepare(*models, opt, sched)
    models, opt, sched = list(prepared[: len(models)]), prepared[-2], prepared[-1]
    retriever.doc.model = models[0]
    retriever.query.model = models[-1]
    kind.hook_checkpoints(acc)
    return Session(cfg, kind, retriever, acc, models, params, opt, sched, kind_meta, mp, source)


def _config_hash(cfg: TrainRootConfig) -> str:
    """What a checkpoint must agree with to be resumed: everything but the step budget and logging."""
    d = dataclasses.asdict(cfg)
    for k in ("max_steps", "dev_every", "checkpoint_every", "keep_checkpoints", "resume"):
        d["train"].pop(k, None)
    if cfg.train.name != "distill":  # options only distill reads: older checkpoints of the other kinds still resume
        for k in [k for k in d["train"] if k.startswith("distill_")]:
            d["train"].pop(k)
    d.pop("logger", None)
    return digest(d, 16)


def _checkpoints(root: Path) -> list[Path]:
    return sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def resume(s: Session, ckpt_root: Path, metric: str) -> dict:
    """The saved trainer state of the last checkpoint (loaded into the session), or a fresh one."""
    config_hash = _config_hash(s.cfg)
    state = {"step": 0, f"best_dev_{metric}": None, "best_step": None, "history": [], "config_hash": config_hash}
    ckpts = _checkpoints(ckpt_root) if s.cfg.train.resume else []
    if not ckpts:
        return state
    saved = json.loads((ckpts[-1] / STATE).read_text())
    if saved["config_hash"] != config_hash:
        raise InputError(
            f"{ckpts[-1]}: checkpoint of another config (hash {saved['config_hash']} != "
            f"{config_hash}); use another hydra.run.dir or train.resume=false"
        )
    s.acc.load_state(str(ckpts[-1]))
    # a changed train.max_steps changes the schedule: continue on the new one, not the saved lr
    inner = getattr(s.sched, "scheduler", s.sched)
    for group, base, lam in zip(s.opt.param_groups, inner.base_lrs, inner.lr_lambdas):
        group["lr"] = base * lam(inner.last_epoch)
    log.info("resumed from %s (step %d)", ckpts[-1], saved["step"])
    return saved


def checkpoint(s: Session, ckpt_root: Path, state: dict) -> None:
    folder = ckpt_root / f"step-{state['step']}"
    s.acc.save_state(str(folder))
    write_json(folder / STATE, state)
    for old in _checkpoints(ckpt_root)[: -s.cfg.train.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
