"""Contrastive fine-tuning of a retriever with accelerate: checkpoints that resume identically,
dev evaluation through the shared retrieval layer, and export of the best model.

``train=contrastive`` fine-tunes fp32 weights; ``train=qat`` trains through a custom quantizer
(straight-through) and saves the packed model; ``train=qlora`` trains LoRA adapters over a frozen
quantized base and saves the adapters plus a merged fp32 model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from medret.cache import cache_root
from medret.config import TrainConfig, TrainRootConfig, typed
from medret.data import RetrievalDataset, check_data_options, load_dataset
from medret.errors import InputError
from medret.losses import info_nce
from medret.metrics import check_metric
from medret.models import Retriever, load_retriever
from medret.models.encoder import check_model_folders, check_model_options
from medret.models.lora import load_adapter_files, merge_to_dense, save_adapter_files, save_adapters
from medret.models.saving import export, save_quantized
from medret.quant import calibration_corpus, needs_calibration, quant_identity, quantize_retriever, scheme, validate
from medret.quant.apply import drop_unused_bits
from medret.quant.fake import attach_fake_quant, detach_fake_quant
from medret.retrieval import RetrievalSettings, model_identity, retrieve, score
from medret.storage import digest, write_atomic, write_json
from medret.tracking import check_logger, start_tracker
from medret.training.pairs import PairSplit, split_pairs

log = logging.getLogger(__name__)

STATE = "trainer_state.json"
KINDS = ("contrastive", "qat", "qlora")


def _config_hash(cfg: TrainRootConfig) -> str:
    """What a checkpoint must agree with to be resumed: everything but the step budget and logging."""
    d = dataclasses.asdict(cfg)
    for k in ("max_steps", "dev_every", "checkpoint_every", "keep_checkpoints", "resume"):
        d["train"].pop(k, None)
    d.pop("logger", None)
    return digest(d, 16)


def _subset(data: RetrievalDataset, queries: list[int]) -> RetrievalDataset:
    ids = [data.query_ids[i] for i in queries]
    return dataclasses.replace(
        data,
        query_ids=ids,
        query_texts=[data.query_texts[i] for i in queries],
        qrels={q: data.qrels[q] for q in ids},
        query_categories={q: c for q, c in data.query_categories.items() if q in set(ids)},
    )


def _embed(encoder, texts: list[str]) -> torch.Tensor:
    s = encoder.settings
    batch = encoder.tokenizer(
        [s.prefix + t for t in texts], padding=True, truncation=True, max_length=s.max_length, return_tensors="pt"
    ).to(encoder.device)
    hidden = encoder.model(**batch).last_hidden_state
    return encoder.pool(hidden, batch["attention_mask"])


def _batch(split: PairSplit, step: int, batch_size: int, seed: int) -> list[tuple[int, int]]:
    """The pairs of a step: a function of the step alone, so a resumed run sees the same batches."""
    per_epoch = max(1, len(split.pairs) // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(split.pairs))
    return [split.pairs[i] for i in order[pos * batch_size : (pos + 1) * batch_size]]


def check_train_numbers(t: TrainConfig) -> None:
    """Step counts, rates and sizes: a zero or NaN here would export an untouched model or fail mid-run."""
    for name in ("max_steps", "batch_size", "grad_accum", "dev_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(t, name) < 1:
            raise InputError(f"train.{name}={getattr(t, name)}: expected a positive integer")
    for name in ("warmup_steps", "hard_negatives"):
        if getattr(t, name) < 0:
            raise InputError(f"train.{name}={getattr(t, name)}: expected 0 or more")
    for name in ("lr", "temperature"):
        if not (math.isfinite(getattr(t, name)) and getattr(t, name) > 0):
            raise InputError(f"train.{name}={getattr(t, name)}: expected a finite number > 0")
    for name in ("weight_decay", "max_grad_norm"):  # max_grad_norm=0: no clipping
        if not (math.isfinite(getattr(t, name)) and getattr(t, name) >= 0):
            raise InputError(f"train.{name}={getattr(t, name)}: expected a finite number >= 0")
    if not 0 <= t.dev_fraction < 1:
        raise InputError(f"train.dev_fraction={t.dev_fraction}: expected 0 <= fraction < 1")


def check_options(cfg: TrainRootConfig) -> None:
    t, kind = cfg.train, scheme(cfg.quant.name).kind
    if t.name not in KINDS:
        raise InputError(f"train={t.name}: expected {', '.join(KINDS)}")
    check_data_options(cfg.data)
    check_model_options(cfg.model)
    check_train_numbers(t)
    check_logger(cfg.logger)
    drop_unused_bits(cfg.quant)
    check_metric("eval.optimize_metric", cfg.eval.optimize_metric, sorted({*cfg.eval.k_values, 10}))
    if t.batch_size < 2 and t.hard_negatives == 0:
        raise InputError(
            f"train.batch_size={t.batch_size}: in-batch negatives need at least 2 pairs per batch "
            "(or set train.hard_negatives)"
        )
    if t.name == "contrastive" and cfg.quant.name != "none":
        raise InputError(
            f"quant={cfg.quant.name}: contrastive training fine-tunes fp32 weights; use train=qat to "
            "train through a custom quantizer, or quantize the exported model with evaluate.py"
        )
    if t.name in ("qat", "qlora"):
        validate(cfg.quant)
    if t.name == "qat" and cfg.quant.method != "rtn":  # QAT trains through round-to-nearest: exports the same
        raise InputError(f"quant.method={cfg.quant.method}: train=qat trains and exports round-to-nearest (rtn)")
    if t.name == "qlora" and kind in ("none", "cast"):
        raise InputError(
            f"quant={cfg.quant.name}: qlora trains adapters over a quantized base; use bnb_nf4, "
            "bnb_int8 or a custom scheme (or train=contrastive for fp32)"
        )
    if t.name == "qlora" and cfg.model.adapter:
        raise InputError("model.adapter: qlora starts new adapters; merge the old ones first (best_model/)")


def load_pairs(cfg: TrainRootConfig) -> tuple[RetrievalDataset, PairSplit, list[int]]:
    ks = sorted(set(int(k) for k in cfg.eval.k_values) | {10})
    data = load_dataset(cfg.data)
    if data.unknown_qrels["docs"]:  # a training positive that is not in the corpus is a broken pair
        raise InputError(
            f"{data.sources.get('qrels', data.name)}: {data.unknown_qrels['docs']} positives name "
            f"records missing from the corpus {data.sources.get('corpus', '')}".rstrip()
        )
    split = split_pairs(data, cfg.train.dev_fraction, cfg.seed)
    if len(split.pairs) < cfg.train.batch_size:
        raise InputError(f"train.batch_size={cfg.train.batch_size}: only {len(split.pairs)} training pairs")
    if split.dev_queries and max(ks) > data.num_docs:
        raise InputError(f"eval.k_values: k={max(ks)} is larger than the corpus ({data.num_docs} documents)")
    log.info(
        "train: %d pairs from %d queries, %d dev queries",
        len(split.pairs),
        len(split.train_queries),
        len(split.dev_queries),
    )
    return data, split, ks


def _attach_qlora(retriever: Retriever, data: RetrievalDataset, cfg: TrainRootConfig) -> dict:
    """Quantize the base (frozen) and put LoRA adapters on its quantized linears."""
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


@dataclass
class Session:
    """What the loop needs: the (prepared) retriever, its distinct models, optimizer, schedule."""

    cfg: TrainRootConfig
    retriever: Retriever
    acc: Any
    models: list
    params: list
    opt: Any
    sched: Any
    lora_meta: dict | None
    mixed_precision: str

    def unwrapped(self) -> list:
        return [self.acc.unwrap_model(e.model) for e in self.retriever.encoders()]


def make_session(cfg: TrainRootConfig, data: RetrievalDataset) -> Session:
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    t = cfg.train
    torch.manual_seed(cfg.seed)
    retriever = load_retriever(cfg.model)
    if t.name == "qat":
        n_fake = sum(attach_fake_quant(enc.model, cfg.quant) for enc in retriever.encoders())
        log.info("qat: %d linear layers fake-quantized (%s, %s bits)", n_fake, cfg.quant.name, cfg.quant.bits)
    lora_meta = _attach_qlora(retriever, data, cfg) if t.name == "qlora" else None
    mp = t.mixed_precision if t.mixed_precision != "auto" else ("fp16" if retriever.doc.device.type == "cuda" else "no")
    acc = Accelerator(
        mixed_precision=mp, gradient_accumulation_steps=t.grad_accum, cpu=retriever.doc.device.type == "cpu"
    )
    models = [e.model for e in retriever.encoders()]
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, t.warmup_steps, t.max_steps)
    prepared = acc.prepare(*models, opt, sched)
    models, opt, sched = list(prepared[: len(models)]), prepared[-2], prepared[-1]
    retriever.doc.model = models[0]
    retriever.query.model = models[-1]
    if t.name == "qlora":  # checkpoints hold the adapters only: the quantized base is rebuilt from the config
        acc.register_save_state_pre_hook(
            lambda ms, weights, out: (save_adapter_files([acc.unwrap_model(m) for m in ms], Path(out)), weights.clear())
        )
        acc.register_load_state_pre_hook(
            lambda ms, folder: (load_adapter_files([acc.unwrap_model(m) for m in ms], Path(folder)), ms.clear())
        )
    return Session(cfg, retriever, acc, models, params, opt, sched, lora_meta, mp)


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


def mine_hard_negatives(s: Session, data: RetrievalDataset, split: PairSplit, root: Path) -> dict[int, list[int]]:
    """Top-ranked non-relevant records per training query, with the starting model and medret's index.
    Keyed like evaluate's fp32 run, so an earlier evaluate's corpus shards are reused."""
    n = s.cfg.train.hard_negatives
    train_data = _subset(data, split.train_queries)
    depth = min(data.num_docs, n + max(len(p) for p in split.positives.values()) + 5)
    key = {"weights": model_identity(s.retriever), "quant": {"name": "none"}}
    out = retrieve(s.retriever, train_data, RetrievalSettings.of(s.cfg), depth, root, key)
    doc_index = {d: i for i, d in enumerate(data.doc_ids)}
    hard = {}
    for qi, hits in zip(split.train_queries, out.ranked_ids):
        hard[qi] = [doc_index[d] for d in hits if doc_index[d] not in split.positives[qi]][:n]
    return hard


def dev_score(s: Session, data: RetrievalDataset, split: PairSplit, ks: list[int], metric: str) -> float:
    dev = _subset(data, split.dev_queries)
    for m in s.models:
        m.eval()
    # weights change every time: nothing to reuse, so no cache
    out = retrieve(s.retriever, dev, RetrievalSettings.of(s.cfg).without_cache(), max(ks), Path("."), {})
    _, per_query = score(out, dev, ks)
    return float(per_query[metric].mean())


def train_step(s: Session, data: RetrievalDataset, split: PairSplit, hard: dict, step: int) -> float:
    t = s.cfg.train
    for m in s.models:
        m.train()
    losses = []
    for micro in range(t.grad_accum):
        pairs = _batch(split, step * t.grad_accum + micro, t.batch_size, s.cfg.seed)
        docs = [di for _, di in pairs] + [h for qi, _ in pairs for h in hard.get(qi, [])]
        # another pair of the same query in the batch is not a negative for it
        fn = torch.tensor(
            [[d in split.positives[qi] and j != i for j, d in enumerate(docs)] for i, (qi, _) in enumerate(pairs)],
            device=s.acc.device,
        )
        with s.acc.accumulate(*s.models):
            q = _embed(s.retriever.query, [data.query_texts[qi] for qi, _ in pairs])
            d = _embed(s.retriever.doc, [data.doc_texts[di] for di in docs])
            loss = info_nce(q, d, t.temperature, fn)
            s.acc.backward(loss)
            if s.acc.sync_gradients and t.max_grad_norm > 0:
                s.acc.clip_grad_norm_(s.params, t.max_grad_norm)
            s.opt.step()
            s.sched.step()
            s.opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return float(np.mean(losses))


def keep_best(s: Session, run_dir: Path, step: int) -> None:
    """The best-so-far model, in the form its kind keeps: latent weights, adapters or an export."""
    name = s.cfg.train.name
    if name == "qat":  # keep the latent weights; the packed model is made once, at the end
        folder = run_dir / "best_latent"
        for i, m in enumerate(s.unwrapped()):
            state = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
            write_atomic(folder / f"encoder{i}.pt", [_torch_bytes(state)])
    elif name == "qlora":
        save_adapters(s.unwrapped(), run_dir / "best_adapter", {**s.lora_meta, "step": step})
    else:
        export(s.retriever, run_dir / "best_model", s.acc.unwrap_model)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def checkpoint(s: Session, ckpt_root: Path, state: dict) -> None:
    folder = ckpt_root / f"step-{state['step']}"
    s.acc.save_state(str(folder))
    write_json(folder / STATE, state)
    for old in _checkpoints(ckpt_root)[: -s.cfg.train.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def finish(s: Session, run_dir: Path, state: dict) -> dict | None:
    """The deployable result of each kind; returns its quant info for train_results.json."""
    t, cfg, best_dir = s.cfg.train, s.cfg, run_dir / "best_model"
    if t.name == "qat":
        if state["best_step"] is not None:
            for i, m in enumerate(s.unwrapped()):
                m.load_state_dict(torch.load(run_dir / "best_latent" / f"encoder{i}.pt", weights_only=True))
        shared = s.retriever.query.model is s.retriever.doc.model
        for enc in s.retriever.encoders():
            enc.model = s.acc.unwrap_model(enc.model)
            detach_fake_quant(enc.model)
        if shared:
            s.retriever.query.model = s.retriever.doc.model
        info = quantize_retriever(s.retriever, cfg.quant)
        save_quantized(s.retriever, best_dir, info)
        return {k: v for k, v in info.items() if k != "layers"}
    if t.name == "qlora":
        if state["best_step"] is None:  # no dev split: the last adapters are the ones kept
            save_adapters(s.unwrapped(), run_dir / "best_adapter", {**s.lora_meta, "step": state["step"]})
        else:
            load_adapter_files(s.unwrapped(), run_dir / "best_adapter")
        merged = sum(merge_to_dense(m) for m in s.unwrapped())
        export(s.retriever, best_dir, s.acc.unwrap_model)
        return {
            "scheme": cfg.quant.name,
            "bits": cfg.quant.bits,
            "lora_r": t.lora_r,
            "adapter": str(run_dir / "best_adapter"),
            "merged_layers": merged,
            "trainable_params": s.lora_meta["trainable_params"],
        }
    if state["best_step"] is None:
        export(s.retriever, best_dir, s.acc.unwrap_model)  # no dev split: the last model is the one exported
    return None


def run_train(cfg: TrainRootConfig | DictConfig, run_dir: Path) -> dict[str, Any]:
    cfg, run_dir = typed(cfg, TrainRootConfig), Path(run_dir)
    t, metric = cfg.train, cfg.eval.optimize_metric
    check_options(cfg)
    check_model_folders(cfg.model)
    data, split, ks = load_pairs(cfg)
    s = make_session(cfg, data)
    hard = mine_hard_negatives(s, data, split, cache_root(cfg.cache.dir)) if t.hard_negatives else {}
    state = resume(s, run_dir / "checkpoints", metric)
    tracker = start_tracker(cfg.logger, run_dir, dataclasses.asdict(cfg), job_type="train")
    t0 = time.perf_counter()
    bar = tqdm(total=t.max_steps, initial=state["step"], desc="train", unit="step", mininterval=2.0)
    while state["step"] < t.max_steps:
        loss = train_step(s, data, split, hard, state["step"])
        state["step"] = step = state["step"] + 1
        record = {"step": step, "loss": loss, "lr": float(s.sched.get_last_lr()[0])}
        if split.dev_queries and (step % t.dev_every == 0 or step == t.max_steps):
            record[f"dev_{metric}"] = dev_score(s, data, split, ks, metric)
            if state[f"best_dev_{metric}"] is None or record[f"dev_{metric}"] > state[f"best_dev_{metric}"]:
                state[f"best_dev_{metric}"], state["best_step"] = record[f"dev_{metric}"], step
                keep_best(s, run_dir, step)
        state["history"].append(record)
        tracker.log_metrics(record, step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            checkpoint(s, run_dir / "checkpoints", state)
    bar.close()
    results = {
        "steps": state["step"],
        "best_step": state["best_step"],
        f"best_dev_{metric}": state[f"best_dev_{metric}"],
        "final_loss": state["history"][-1]["loss"] if state["history"] else None,
        "train_pairs": len(split.pairs),
        "dev_queries": len(split.dev_queries),
        "hard_negatives": t.hard_negatives,
        "mixed_precision": s.mixed_precision,
        "seconds": time.perf_counter() - t0,
        "best_model": str(run_dir / "best_model"),
        "quant": finish(s, run_dir, state),
        "history": state["history"],
        "config": dataclasses.asdict(cfg),
        "wandb": tracker.describe(),
    }
    write_json(run_dir / "train_results.json", results)  # before the tracker's last calls: they cannot lose it
    tracker.log_summary({k: v for k, v in results.items() if isinstance(v, (int, float)) and v is not None})
    tracker.finish()
    if math.isnan(results["final_loss"] or 0.0):
        raise InputError("training diverged: the loss is NaN (lower train.lr)")
    log.info(
        "trained %d steps, best dev %s %s at step %s",
        state["step"],
        metric,
        state[f"best_dev_{metric}"],
        state["best_step"],
    )
    return results
