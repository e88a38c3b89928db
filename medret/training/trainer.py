"""Contrastive fine-tuning of a retriever with accelerate: checkpoints that resume identically,
dev evaluation through the evaluate code path, and export of the best model as an HF dir."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from medret.cache import cache_root
from medret.data import RetrievalDataset, load_dataset
from medret.errors import InputError
from medret.evaluation.outputs import write_json
from medret.evaluation.pipeline import model_identity, quant_identity, retrieve, score
from medret.losses import info_nce
from medret.models import Retriever, load_retriever
from medret.models.lora import merge_to_dense, save_adapters
from medret.models.st_files import write_sentence_transformers_files
from medret.quant import needs_calibration, quantize_retriever, validate
from medret.quant.fake import attach_fake_quant, detach_fake_quant
from medret.quant.persist import save_quantized
from medret.tracking import start_tracker
from medret.training.pairs import PairSplit, split_pairs

log = logging.getLogger(__name__)

STATE = "trainer_state.json"


def _config_hash(cfg) -> str:
    """What a checkpoint must agree with to be resumed: everything but the step budget and logging."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for k in ("max_steps", "dev_every", "checkpoint_every", "keep_checkpoints", "resume"):
        d["train"].pop(k, None)
    d.pop("logger", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def _mine_hard_negatives(
    retriever: Retriever, data: RetrievalDataset, split: PairSplit, cfg, root: Path, n: int
) -> dict[int, list[int]]:
    """Top-ranked non-relevant records per training query, with the starting model and medret's index."""
    train_data = _subset(data, split.train_queries)
    depth = min(data.num_docs, n + max(len(p) for p in split.positives.values()) + 5)
    out = retrieve(retriever, train_data, cfg, depth, root, {"weights": model_identity(retriever), "quant": "none"})
    doc_index = {d: i for i, d in enumerate(data.doc_ids)}
    hard = {}
    for qi, hits in zip(split.train_queries, out.ranked):
        hard[qi] = [doc_index[d] for d, _ in hits if doc_index[d] not in split.positives[qi]][:n]
    return hard


def _dev_ndcg(retriever: Retriever, data: RetrievalDataset, split: PairSplit, cfg, ks: list[int]) -> float:
    dev_cfg = OmegaConf.merge(cfg, {"cache": {"enabled": False}})  # weights change every time: nothing to reuse
    dev = _subset(data, split.dev_queries)
    for enc in {id(retriever.doc): retriever.doc, id(retriever.query): retriever.query}.values():
        enc.model.eval()
    out = retrieve(retriever, dev, dev_cfg, max(ks), Path("."), {})
    _, per_query = score(out, dev, ks)
    return float(per_query["ndcg@10"].mean())


def _distinct(retriever: Retriever) -> list:
    return [retriever.doc] if retriever.query.model is retriever.doc.model else [retriever.doc, retriever.query]


def _save_latent(retriever: Retriever, unwrap, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, enc in enumerate(_distinct(retriever)):
        state = {k: v.detach().cpu().clone() for k, v in unwrap(enc.model).state_dict().items()}
        torch.save(state, folder / f".encoder{i}.pt.tmp")
        (folder / f".encoder{i}.pt.tmp").replace(folder / f"encoder{i}.pt")


def _load_latent(retriever: Retriever, unwrap, folder: Path) -> None:
    for i, enc in enumerate(_distinct(retriever)):
        unwrap(enc.model).load_state_dict(torch.load(folder / f"encoder{i}.pt", weights_only=True))


def _attach_qlora(retriever: Retriever, data: RetrievalDataset, cfg) -> dict:
    """Quantize the base (frozen) and put LoRA adapters on its quantized linears."""
    from medret.models.lora import attach_lora, lora_targets, quant_digest

    t = cfg.quant
    calibration = list(data.doc_texts[: max(t.calibration_texts * 4, 256)]) if needs_calibration(t) else None
    info = quantize_retriever(retriever, t, calibration=calibration)
    targets, n = [], 0
    for enc in _distinct(retriever):
        targets.append(lora_targets(enc.model))
        n += attach_lora(enc.model, targets[-1], cfg.train.lora_r, cfg.train.lora_alpha, cfg.train.lora_dropout)
    quant = quant_identity(cfg)
    log.info(
        "qlora: base %s (%.2f bits/param), LoRA r=%d on %d linears, %d trainable parameters",
        t.name,
        info["effective_bits_per_param"],
        cfg.train.lora_r,
        sum(map(len, targets)),
        n,
    )
    return {
        "r": cfg.train.lora_r,
        "alpha": cfg.train.lora_alpha,
        "targets": targets,
        "quant": quant,
        "quant_digest": quant_digest(quant),
        "base_model": cfg.model.path,
        "trainable_params": n,
    }


def _save_adapter_files(models: list, unwrap, folder: Path) -> None:
    from safetensors.torch import save_file

    from medret.models.lora import adapter_state

    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(models):
        save_file(adapter_state(unwrap(m)), str(folder / f"adapter{i}.safetensors"))


def _load_adapter_files(models: list, unwrap, folder: Path) -> None:
    from safetensors.torch import load_file

    from medret.models.lora import load_adapter_state

    for i, m in enumerate(models):
        load_adapter_state(unwrap(m), load_file(str(folder / f"adapter{i}.safetensors")))


def export(retriever: Retriever, unwrap, out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    targets = (
        [(retriever.doc, tmp)]
        if retriever.query.model is retriever.doc.model
        else [(retriever.doc, tmp / "doc_encoder"), (retriever.query, tmp / "query_encoder")]
    )
    for enc, folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        unwrap(enc.model).save_pretrained(folder)
        enc.tokenizer.save_pretrained(folder)
        s = enc.settings
        write_sentence_transformers_files(folder, s.pooling, s.normalize, s.max_length, enc.dim)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def run_train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    t = cfg.train
    if t.name not in ("contrastive", "qat", "qlora"):
        raise InputError(f"train={t.name}: expected contrastive, qat or qlora")
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
    if t.name == "qlora" and cfg.quant.name in ("none", "fp16", "bf16"):
        raise InputError(
            f"quant={cfg.quant.name}: qlora trains adapters over a quantized base; use bnb_nf4, "
            "bnb_int8 or a custom scheme (or train=contrastive for fp32)"
        )
    if t.name == "qlora" and cfg.model.adapter:
        raise InputError("model.adapter: qlora starts new adapters; merge the old ones first (best_model/)")
    run_dir = Path(run_dir)
    ks = sorted(set(int(k) for k in cfg.eval.k_values) | {10})
    data = load_dataset(cfg.data)
    if data.unknown_qrels["docs"]:  # a training positive that is not in the corpus is a broken pair
        raise InputError(
            f"{data.sources.get('qrels', data.name)}: {data.unknown_qrels['docs']} positives name "
            f"records missing from the corpus {data.sources.get('corpus', '')}".rstrip()
        )
    split = split_pairs(data, t.dev_fraction, cfg.seed)
    if len(split.pairs) < t.batch_size:
        raise InputError(f"train.batch_size={t.batch_size}: only {len(split.pairs)} training pairs")
    if split.dev_queries and max(ks) > data.num_docs:
        raise InputError(f"eval.k_values: k={max(ks)} is larger than the corpus ({data.num_docs} documents)")
    log.info(
        "train: %d pairs from %d queries, %d dev queries",
        len(split.pairs),
        len(split.train_queries),
        len(split.dev_queries),
    )

    torch.manual_seed(cfg.seed)
    retriever = load_retriever(cfg.model)
    if t.name == "qat":
        for enc in _distinct(retriever):
            n_fake = attach_fake_quant(enc.model, cfg.quant)
        log.info("qat: %d linear layers fake-quantized (%s, %s bits)", n_fake, cfg.quant.name, cfg.quant.bits)
    lora_meta = None
    if t.name == "qlora":
        lora_meta = _attach_qlora(retriever, data, cfg)
    mp = t.mixed_precision if t.mixed_precision != "auto" else ("fp16" if retriever.doc.device.type == "cuda" else "no")
    acc = Accelerator(
        mixed_precision=mp, gradient_accumulation_steps=t.grad_accum, cpu=retriever.doc.device.type == "cpu"
    )
    root = cache_root(cfg.cache.dir)
    hard = _mine_hard_negatives(retriever, data, split, cfg, root, t.hard_negatives) if t.hard_negatives else {}

    models = (
        [retriever.doc.model]
        if retriever.symmetric or retriever.query.model is retriever.doc.model
        else [retriever.doc.model, retriever.query.model]
    )
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, t.warmup_steps, t.max_steps)
    prepared = acc.prepare(*models, opt, sched)
    models, opt, sched = list(prepared[: len(models)]), prepared[-2], prepared[-1]
    retriever.doc.model = models[0]
    retriever.query.model = models[-1] if len(models) > 1 else models[0]

    if t.name == "qlora":  # checkpoints hold the adapters only: the quantized base is rebuilt from the config
        acc.register_save_state_pre_hook(
            lambda ms, weights, out: (_save_adapter_files(ms, acc.unwrap_model, Path(out)), weights.clear())
        )
        acc.register_load_state_pre_hook(
            lambda ms, folder: (_load_adapter_files(ms, acc.unwrap_model, Path(folder)), ms.clear())
        )
    ckpt_root = run_dir / "checkpoints"
    config_hash = _config_hash(cfg)
    state = {"step": 0, "best_dev_ndcg@10": None, "best_step": None, "history": [], "config_hash": config_hash}
    ckpts = sorted(ckpt_root.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if t.resume else []
    if ckpts:
        saved = json.loads((ckpts[-1] / STATE).read_text())
        if saved["config_hash"] != config_hash:
            raise InputError(
                f"{ckpts[-1]}: checkpoint of another config (hash {saved['config_hash']} != "
                f"{config_hash}); use another hydra.run.dir or train.resume=false"
            )
        acc.load_state(str(ckpts[-1]))
        state = saved
        # a changed train.max_steps changes the schedule: continue on the new one, not the saved lr
        inner = getattr(sched, "scheduler", sched)
        for group, base, lam in zip(opt.param_groups, inner.base_lrs, inner.lr_lambdas):
            group["lr"] = base * lam(inner.last_epoch)
        log.info("resumed from %s (step %d)", ckpts[-1], state["step"])

    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = start_tracker(cfg.logger, run_dir, resolved, job_type="train")
    best_dir = run_dir / "best_model"
    t0 = time.perf_counter()
    bar = tqdm(total=t.max_steps, initial=state["step"], desc="train", unit="step", mininterval=2.0)
    while state["step"] < t.max_steps:
        step = state["step"]
        for m in models:
            m.train()
        losses = []
        for micro in range(t.grad_accum):
            pairs = _batch(split, step * t.grad_accum + micro, t.batch_size, cfg.seed)
            docs = [di for _, di in pairs] + [h for qi, _ in pairs for h in hard.get(qi, [])]
            # another pair of the same query in the batch is not a negative for it
            fn = torch.tensor(
                [[d in split.positives[qi] and j != i for j, d in enumerate(docs)] for i, (qi, _) in enumerate(pairs)],
                device=acc.device,
            )
            with acc.accumulate(*models):
                q = _embed(retriever.query, [data.query_texts[qi] for qi, _ in pairs])
                d = _embed(retriever.doc, [data.doc_texts[di] for di in docs])
                loss = info_nce(q, d, t.temperature, fn)
                acc.backward(loss)
                if acc.sync_gradients and t.max_grad_norm > 0:
                    acc.clip_grad_norm_(params, t.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        state["step"] = step = step + 1
        record = {"step": step, "loss": float(np.mean(losses)), "lr": float(sched.get_last_lr()[0])}
        if split.dev_queries and (step % t.dev_every == 0 or step == t.max_steps):
            record["dev_ndcg@10"] = _dev_ndcg(retriever, data, split, cfg, ks)
            if state["best_dev_ndcg@10"] is None or record["dev_ndcg@10"] > state["best_dev_ndcg@10"]:
                state["best_dev_ndcg@10"], state["best_step"] = record["dev_ndcg@10"], step
                if t.name == "qat":  # keep the latent weights; the packed model is made once, at the end
                    _save_latent(retriever, acc.unwrap_model, run_dir / "best_latent")
                elif t.name == "qlora":
                    save_adapters(
                        [acc.unwrap_model(e.model) for e in _distinct(retriever)],
                        run_dir / "best_adapter",
                        {**lora_meta, "step": step},
                    )
                else:
                    export(retriever, acc.unwrap_model, best_dir)
        state["history"].append(record)
        tracker.log_metrics(record, step)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            folder = ckpt_root / f"step-{step}"
            acc.save_state(str(folder))
            write_json(folder / STATE, state)
            for old in sorted(ckpt_root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[: -t.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    bar.close()
    quant_info = None
    if t.name == "qat":
        if state["best_step"] is not None:
            _load_latent(retriever, acc.unwrap_model, run_dir / "best_latent")
        shared = retriever.query.model is retriever.doc.model
        for enc in _distinct(retriever):
            enc.model = acc.unwrap_model(enc.model)
            detach_fake_quant(enc.model)
        if shared:
            retriever.query.model = retriever.doc.model
        quant_info = quantize_retriever(retriever, cfg.quant)
        save_quantized(retriever, best_dir, quant_info)
        quant_info = {k: v for k, v in quant_info.items() if k != "layers"}
    elif t.name == "qlora":
        if state["best_step"] is None:  # no dev split: the last adapters are the ones kept
            save_adapters(
                [acc.unwrap_model(e.model) for e in _distinct(retriever)],
                run_dir / "best_adapter",
                {**lora_meta, "step": state["step"]},
            )
        else:
            _load_adapter_files([e.model for e in _distinct(retriever)], acc.unwrap_model, run_dir / "best_adapter")
        merged = sum(merge_to_dense(acc.unwrap_model(e.model)) for e in _distinct(retriever))
        export(retriever, acc.unwrap_model, best_dir)
        quant_info = {
            "scheme": cfg.quant.name,
            "bits": cfg.quant.bits,
            "lora_r": t.lora_r,
            "adapter": str(run_dir / "best_adapter"),
            "merged_layers": merged,
            "trainable_params": lora_meta["trainable_params"],
        }
    elif not split.dev_queries or state["best_step"] is None:
        export(retriever, acc.unwrap_model, best_dir)  # no dev split: the last model is the one exported
    results = {
        "steps": state["step"],
        "best_step": state["best_step"],
        "best_dev_ndcg@10": state["best_dev_ndcg@10"],
        "final_loss": state["history"][-1]["loss"] if state["history"] else None,
        "train_pairs": len(split.pairs),
        "dev_queries": len(split.dev_queries),
        "hard_negatives": t.hard_negatives,
        "mixed_precision": mp,
        "seconds": time.perf_counter() - t0,
        "best_model": str(best_dir),
        "quant": quant_info,
        "history": state["history"],
        "config": resolved,
    }
    write_json(run_dir / "train_results.json", results)
    tracker.log_summary({k: v for k, v in results.items() if isinstance(v, (int, float)) and v is not None})
    tracker.finish()
    if math.isnan(results["final_loss"] or 0.0):
        raise InputError("training diverged: the loss is NaN (lower train.lr)")
    log.info(
        "trained %d steps, best dev nDCG@10 %s at step %s -> %s",
        state["step"],
        state["best_dev_ndcg@10"],
        state["best_step"],
        best_dir,
    )
    return results
