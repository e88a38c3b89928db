"""The evaluate spine, one stage per function:
options -> data -> retriever -> fp32 baseline -> quantize -> retrieve -> judge -> outputs + W&B."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

import medret
from medret.cache import cache_root, ensure_writable
from medret.cache.options import check_cache_options
from medret.config import EvalConfig, EvaluateConfig, typed
from medret.data import RetrievalDataset, check_data_options, load_dataset
from medret.errors import InputError
from medret.evaluation.baseline import fp32_baseline, save_fp32_baseline
from medret.evaluation.judge import Judgement, check_eval, judge, per_query_rows
from medret.evaluation.profiles import (
    Profile,
    check_profile_categories,
    check_profiles,
    judge_profiles,
    load_profiles,
    slice_summary,
)
from medret.evaluation.reference import reference_baseline, reference_model
from medret.evaluation.sides import check_side, export_key, quantize_sides, run_key
from medret.index import check_gpu_limits, check_index_options, factory_string
from medret.index.faiss_index import choose_placement
from medret.metrics import headline
from medret.models import Retriever, load_retriever
from medret.models.encoder import check_model_folders, check_model_options, doc_max_length, resolve_model_path
from medret.models.saving import save_quantized, source_of
from medret.quant import (
    QuantPlan,
    calibration_corpus,
    check_quant_memory,
    decode_resident,
    plan_quant,
    scheme,
    state_bytes,
)
from medret.quant.auto import check_scanned_weights, leave_out_dev_queries, resolve_auto, write_choice
from medret.quant.corpus import spread_sample
from medret.retrieval import Retrieval, RetrievalSettings, encode_one_shard, model_identity, retrieve
from medret.runtime import build_runtime
from medret.runtime import needs_calibration as runtime_needs_calibration
from medret.runtime import validate as check_runtime
from medret.storage import digest, write_json
from medret.tracking import check_logger, start_tracker
from medret.tracking.outputs import summary_of, write_run_files
from medret.tracking.provenance import device_info, git_commit, peak_memory, versions

log = logging.getLogger(__name__)


def check_options(cfg: EvaluateConfig, auto: dict | None = None) -> QuantPlan:
    """Every option that needs no data or model: a bad one fails before anything heavy starts. Returns the
    quant plan (``auto``: quant=auto's choice, already resolved into ``cfg.quant``)."""
    check_data_options(cfg.data)
    check_model_options(cfg.model)
    check_passage_length(cfg)
    plan = plan_quant(cfg.quant, cfg.model.device, auto)
    cfg.quant = plan.config  # unused bits dropped: results.json records the config that ran
    check_side(cfg.quant, cfg.model.adapter)
    check_eval_numbers(cfg.eval)
    check_eval(cfg.eval)
    check_profiles(cfg.eval)  # bad profile files: one error line before any data or model
    check_index_options(cfg.index)
    check_logger(cfg.logger)
    check_runtime(cfg.runtime)
    check_cache_options(cfg)
    if cfg.model.adapter and plan.scheme.kind in ("none", "cast"):
        raise InputError(
            f"model.adapter={cfg.model.adapter}: a QLoRA adapter sits on a quantized base; set the "
            "quant it was trained over"
        )
    return plan


def check_eval_numbers(ev: EvalConfig) -> None:
    """k values and counts; before the metric names, so a bad k list is blamed on eval.k_values."""
    if not ev.k_values or min(ev.k_values) < 1:
        raise InputError(f"eval.k_values={list(ev.k_values)}: expected a non-empty list of positive integers")
    if ev.bootstrap_resamples < 1:
        raise InputError(f"eval.bootstrap_resamples={ev.bootstrap_resamples}: expected a positive count (e.g. 2000)")
    if not (math.isfinite(ev.gate_max_drop) and ev.gate_max_drop >= 0):
        raise InputError(f"eval.gate_max_drop={ev.gate_max_drop}: expected a finite number >= 0")
    if ev.passage_fanout < 1:
        raise InputError(f"eval.passage_fanout={ev.passage_fanout}: expected a positive count")


def check_passage_length(cfg: EvaluateConfig) -> None:
    """A passage must fit the model's window, else its tail is silently cut off."""
    tokens = cfg.data.passage_tokens
    if not tokens:  # no split: nothing to fit, and no model file read before the model is checked
        return
    limit = doc_max_length(cfg.model)
    if tokens + 2 > limit:  # + [CLS] and [SEP]
        raise InputError(
            f"data.passage_tokens={tokens}: the model reads at most {limit} tokens ({limit - 2} plus [CLS] and "
            f"[SEP]), so passages would be truncated; lower data.passage_tokens or raise model.max_length"
        )


def load_checked_data(cfg: EvaluateConfig) -> tuple[RetrievalDataset, list[int]]:
    data = load_dataset(cfg.data)
    ks = fit_k_values(cfg.eval, data.num_docs, data.name)
    ix = cfg.index
    if "IVF" in ix.factory and not cfg.data.passage_tokens and min(ix.train_size, data.num_docs) < ix.nlist:
        raise InputError(
            f"index.nlist={ix.nlist}: IVF needs that many training vectors; the corpus has {data.num_docs}"
        )
    log.info("data %s: %d documents, %d judged queries", data.name, data.num_docs, len(data.query_ids))
    return data, ks


def fit_k_values(ev: EvalConfig, num_docs: int, where: str) -> list[int]:
    """The k list checked against the corpus. The default list is clipped to a small corpus (recorded in the
    config); a list the user chose is an error, naming every option that must change with it."""
    ks = sorted(set(int(k) for k in ev.k_values))
    if ks[-1] <= num_docs:
        return ks
    metric_options = {"eval.gate_metric": ev.gate_metric, "eval.optimize_metric": ev.optimize_metric}
    if ks == sorted(EvalConfig().k_values):
        ks = [k for k in ks if k <= num_docs]
        log.warning(
            "eval.k_values: the default list clipped to %s for the corpus of %s (%d documents)", ks, where, num_docs
        )
        ev.k_values = ks
        lost = {o: m for o, m in metric_options.items() if int(m.partition("@")[2]) not in ks}
        if lost:
            names = " and ".join(f"{o}={m!r}" for o, m in lost.items())
            raise InputError(
                f"eval.k_values: the default list clipped to the corpus of {where} ({num_docs} documents) is {ks}, "
                f"which leaves out {names}; set eval.k_values and {' and '.join(lost)} together"
            )
        return ks
    over = [f"{o}={m!r}" for o, m in metric_options.items() if int(m.partition("@")[2]) > num_docs]
    also = f"; change {' and '.join(over)} with it" if over else ""
    raise InputError(
        f"eval.k_values: k={ks[-1]} is larger than the corpus of {where} ({num_docs} documents); "
        f"keep every k <= {num_docs}{also}"
    )


def is_variant(cfg: EvaluateConfig) -> bool:
    """Anything but the model as loaded in torch: judged against its fp32 self."""
    return cfg.quant.name != "none" or cfg.runtime.name != "torch"


def quantize_stage(
    retriever: Retriever, cfg: EvaluateConfig, plan: QuantPlan, calibration, identity: dict
) -> tuple[dict, dict]:
    """Quantize in place (only quant.side's encoders); returns (quant info for results.json, the quant part of
    cache keys). ``identity``: the fp32 weights' digests, recorded as a saved model's source."""
    info = quantize_sides(retriever, plan, calibration)
    if plan.config.save_dir and plan.config.name != "none":
        source = source_of(cfg.model, identity)
        info["saved_to"] = str(save_quantized(retriever, Path(plan.config.save_dir), info, source))
    qkey = plan.cache_key
    if cfg.model.adapter:  # LoRA wraps the packed modules: they stay packed, decoded per forward
        qkey = {**qkey, "adapter": attach_adapter(retriever, cfg, info, plan.identity)}
    else:
        info.update(decode_resident(retriever, plan.config))
    return info, qkey


def attach_adapter(retriever: Retriever, cfg: EvaluateConfig, info: dict, quant_identity: dict) -> str:
    """QLoRA adapters over the quantized base; counted in the model's bytes and bits. Returns their digest."""
    from medret.models.lora import load_adapters

    encoders = retriever.encoders()
    meta = load_adapters([e.model for e in encoders], Path(cfg.model.adapter), quant_identity)
    params = sum(p.numel() for e in encoders for n, p in e.model.named_parameters() if "lora_" in n)
    info["adapter"] = {
        "path": cfg.model.adapter,
        "r": meta["r"],
        "step": meta.get("step"),
        "digest": meta["digest"],
        "params": params,
    }
    bits, n = info.get("effective_bits_per_param"), info.get("quantized_params")
    if bits and n:  # the adapters are part of the deployed model: their fp32 bits count
        info["effective_bits_per_param_with_adapter"] = bits + 32 * params / n
    info["model_bytes"] = sum(state_bytes(e.model) for e in encoders)
    return meta["digest"]


def runtime_stage(
    retriever: Retriever, data, cfg: EvaluateConfig, root: Path, key: dict
) -> tuple[Retriever, dict, dict]:
    """The (quantized) encoders as a deployment runs them: torch as loaded, or exported to ONNX Runtime /
    OpenVINO (cached by weights and settings). Returns (retriever, results.json block, cache key)."""
    rt = cfg.runtime
    calibration = None
    if runtime_needs_calibration(rt):  # label-free, seeded corpus texts; never the queries
        calibration = spread_sample(data.doc_texts, rt.calibration_texts, cfg.seed)

    def weights(of: str) -> str:  # an fp32 side's export is the one an unquantized run caches
        return digest({**export_key(key, of), "model": cfg.model.path, "revision": cfg.model.revision})

    doc, info = build_runtime(retriever.doc, rt, root, weights("doc") + "-doc", calibration)
    if retriever.query is retriever.doc:
        query = doc
    elif retriever.query.model is retriever.doc.model:  # same weights, other prefix or length
        query = doc.with_settings(retriever.query.settings) if rt.name != "torch" else retriever.query
    else:
        query, _ = build_runtime(retriever.query, rt, root, weights("query") + "-query", calibration)
    if rt.name == "torch":
        return retriever, info, key
    if scheme(cfg.quant.name).kind == "custom" and info["quantization"] == "none":
        # decode-once left dense layers holding medret's dequantized weights: the graph simulates them
        info.update(quantization="simulated", from_medret_quant=True)
    identity = {k: v for k, v in dataclasses.asdict(rt).items() if k not in ("threads", "provider")}
    if identity["precision"] == "f32":
        del identity["precision"]  # added later: runs at the default keep their cache keys
    return Retriever(query, doc), info, {**key, "runtime": identity}


def encode_only(retriever: Retriever, data, cfg: EvaluateConfig, root: Path, key: dict, run_dir: Path) -> dict:
    """An encode-only array task: fill one shard of the cache and stop."""
    done = encode_one_shard(
        retriever.doc, data, RetrievalSettings.of(cfg).encode, root, {**key, "side": "doc"}, cfg.cache.only_shard
    )
    write_json(run_dir / f"shard-{cfg.cache.only_shard}.json", done)
    state = "encoded" if done["encoded"] else "already cached"
    log.info("shard %d/%d %s -> %s", done["shard"] + 1, done["shards"], state, done["dir"])
    return {"shard": done}


def build_results(
    cfg, resolved, data, out: Retrieval, j: Judgement, quant_info, root, base_file, device, t_start
) -> dict:
    results: dict[str, Any] = {
        "medret_version": medret.__version__,
        "config": resolved,
        "data": {
            "name": data.name,
            "num_docs": data.num_docs,
            "num_passages": out.corpus.num_vectors,
            "num_queries": len(j.qids),
            "num_qrels": sum(len(v) for v in data.qrels.values()),
            "unknown_qrels": data.unknown_qrels,
            "warnings": data.warnings,  # odd but usable input, counted (see the log's warning lines)
            "sources": data.sources,
        },
        "metrics": j.metrics,
        "metrics_ci95": j.ci,
        "by_category": j.by_category,
        "throughput": {**out.timings, "total_s": time.perf_counter() - t_start, **peak_memory(device)},
        "sizes": {
            "model_param_bytes": quant_info["model_bytes"],
            "fp32_model_param_bytes": quant_info["fp32_model_bytes"],
            "embedding_bytes": int(out.corpus.num_vectors * out.corpus.dim * 4),
            "index_bytes": out.index["bytes"],
            "embedding_dim": int(out.corpus.dim),
            "by_part": quant_info["bytes_by_part"],
            "effective_bits_per_param_all": quant_info["effective_bits_per_param_all"],
        },
        "quant": quant_info,
        "index": out.index,
        "cache": {"root": str(root), "corpus_dir": str(out.corpus.store.dir) if out.corpus.store else None},
        "device": device_info(device, out.index["placement"]),
        "versions": versions(),
        "git": git_commit(),
        "baseline_cache": str(base_file),
    }
    if j.fidelity is not None:
        results["fidelity"] = {k: v for k, v in j.fidelity.items() if k not in ("deltas", "verdict", "per_query")}
        results["deltas"] = j.fidelity["deltas"]
        results["verdict"] = j.fidelity["verdict"]
    return results


def run_profiles(cfg: EvaluateConfig, ks: list[int]) -> list[Profile]:
    """The profiles as judged, checked strictly by check_options: a criterion whose k the corpus cut off the
    default k list (or a narrowed list cut off the shipped profiles) is skipped, and says so."""
    return load_profiles(list(cfg.eval.profiles), ks, skip_missing_k=True)


def profile_results(cfg: EvaluateConfig, j: Judgement, base: dict | None, ks: list[int]) -> dict:
    """results.json["slices"] (every run) and ["profiles"] (a run judged against its fp32 baseline)."""
    slices = j.slices or {"all": np.ones(len(j.qids), dtype=bool)}
    out: dict[str, Any] = {"slices": slice_summary(slices)}
    if base is not None:
        ev = cfg.eval
        out["profiles"] = judge_profiles(
            run_profiles(cfg, ks),
            base["per_query"],
            j.per_query,
            slices,
            ev.min_slice_queries,
            ev.bootstrap_resamples,
            cfg.seed,
        )
        for name, p in out["profiles"].items():
            log.info("profile %s: %s%s", name, p["outcome"].upper(), f" ({p['decided_by']})" if p["decided_by"] else "")
    return out


def publish(cfg: EvaluateConfig, run_dir: Path, results: dict, rows: list[dict], data, out: Retrieval) -> None:
    """The run's files first, then W&B (ids and numbers only unless logger.log_text): a tracker that fails
    or waits on its server can never cost the results."""
    texts = dict(zip(data.query_ids, data.query_texts))
    # query text reaches per_query.jsonl only with write_text, and W&B only with logger.log_text
    file_rows = [{**r, "query_text": texts[r["query_id"]]} for r in rows] if cfg.write_text else rows
    ranked = dict(zip(data.query_ids, out.ranked))
    results["wandb"] = {"run_id": None, "dir": None, "mode": None}  # filled in once the tracker has started
    write_run_files(run_dir, results, file_rows, ranked, tag=f"medret-{cfg.model.name}-{cfg.quant.name}")
    tags = [f"scheme:{cfg.quant.name}", f"index:{cfg.index.name}", f"data:{cfg.data.name}"]
    tags.append(f"runtime:{cfg.runtime.name}" + (f"-{cfg.runtime.quantize}" if cfg.runtime.quantize != "none" else ""))
    if cfg.quant.bits is not None:
        tags.append(f"bits:{cfg.quant.bits}")
    if cfg.quant.side != "both":
        tags.append(f"side:{cfg.quant.side}")
    tracker = start_tracker(cfg.logger, run_dir, results["config"], tags=tags)
    if tracker.run is not None:
        results["wandb"] = tracker.describe()
        write_json(run_dir / "results.json", results)
    tracker.log_summary(summary_of(results))
    tracker.log_per_query(rows, texts if cfg.logger.log_text else None)
    tracker.log_table("quant_layers", results["quant"].get("layers", []))
    tracker.finish()


def run_evaluate(cfg: EvaluateConfig | DictConfig, run_dir: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    cfg, run_dir = typed(cfg, EvaluateConfig), Path(run_dir)
    # quant=auto: bits per layer from a sensitivity scan, as plain overrides before any check or model
    model_dir = functools.partial(resolve_model_path, cfg.model.path)  # quant.grid reads the model's shapes
    side = cfg.quant.side  # the run's own choice, not the scan's: kept out of quant=auto's resolution
    cfg.quant, auto = resolve_auto(
        dataclasses.replace(cfg.quant, side="both"), cfg.model.path, cfg.model.revision, None, model_dir
    )
    cfg.quant = dataclasses.replace(cfg.quant, side=side)
    plan = check_options(cfg, auto)
    check_model_folders(cfg.model)
    reference = reference_model(cfg.model)  # a saved quantized model: judged against the fp32 model it came from
    judged = is_variant(cfg) or reference is not None
    if auto:  # written only for a run whose options all passed
        write_choice(plan.config, auto, run_dir)
    data, ks = load_checked_data(cfg)
    check_profile_categories(run_profiles(cfg, ks), set(data.query_categories.values()))
    data = leave_out_dev_queries(data, auto)  # quant=auto tuned on a holdout of this split: not reported on
    root = cache_root(cfg.cache.dir)
    ensure_writable(root)
    check_gpu_limits(cfg.index, ks[-1], choose_placement(cfg.index))

    retriever = load_retriever(cfg.model)
    factory_string(cfg.index, retriever.doc.dim)  # index.m must divide the dim: known once the model loads
    identity = model_identity(retriever)
    check_scanned_weights(auto, identity)
    calibration = None
    if plan.needs_calibration:  # unlabelled corpus texts: Fisher weights, GPTQ's Hessians, refinement's targets
        calibration = calibration_corpus(data.doc_texts, plan.config)
        check_quant_memory(retriever, plan, calibration)  # a run that cannot fit says so before the fp32 pass
    if reference is None:
        base_file, base = fp32_baseline(retriever, data, cfg, ks, root, identity, judged)
    else:
        base_file, base, ref_info = reference_baseline(reference, data, cfg, ks, root)
    quant_info, qkey = quantize_stage(retriever, cfg, plan, calibration, identity)
    if reference is not None:  # the fp32 side of the size comparison is the source's
        quant_info.update(ref_info)
    if auto:  # the choice, its budget, and the bits/param the real quantization reached
        achieved = "effective_bits_per_param_all" if auto.get("budget_over") == "model" else "effective_bits_per_param"
        quant_info["auto"] = {**auto, "achieved_bits_per_param": quant_info.get(achieved)}
    key = run_key(identity, qkey, cfg.quant.side)
    if cfg.cache.only_shard is not None:
        return encode_only(retriever, data, cfg, root, key, run_dir)

    retriever, runtime_info, key = runtime_stage(retriever, data, cfg, root, key)
    out = retrieve(retriever, data, RetrievalSettings.of(cfg), ks[-1], root, key)
    j = judge(out, data, ks, base if judged else None, cfg.eval, cfg.seed)
    if not judged and base is None:
        save_fp32_baseline(base_file, out, j)
    device = retriever.doc.device
    results = build_results(cfg, dataclasses.asdict(cfg), data, out, j, quant_info, root, base_file, device, t_start)
    results["runtime"] = runtime_info
    results.update(profile_results(cfg, j, base if judged else None, ks))
    publish(cfg, run_dir, results, per_query_rows(j, data, base), data, out)
    log.info(
        "%s  (%d queries)%s -> %s",
        headline(j.metrics, ks),
        len(j.qids),
        "" if j.fidelity is None else f"  verdict {j.fidelity['verdict']['outcome'].upper()}",
        run_dir / "results.json",
    )
    return results
