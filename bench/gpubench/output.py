"""The run's outputs, rewritten after every variant so a run cut short still leaves its rows:
gpu_bench.md (tables) and gpu_bench.json (all numbers + environment)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from gpubench.variants import NAMES, SPEC


def fmt(v, nd=None) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float) and nd is not None:
        return f"{v:,.{nd}f}"
    if isinstance(v, (int, float)):
        return f"{v:,}"
    return str(v)


def status_cell(r: dict) -> str:
    return r["status"] + (f": {r['reason']}" if r.get("reason") else "")


def add_ratios(rows: dict) -> None:
    """Each encoder row's speed and sizes relative to the fp32 row (when that one succeeded)."""
    ref = rows.get("fp32", {})
    ok = ref.get("status") == "ok"
    ref_dps, ref_mb, ref_lin = (ref.get(k) if ok else None for k in ("docs_per_s", "weights_MB", "linear_MB"))
    for name, r in rows.items():
        if r.get("status") == "ok" and SPEC[name][1] == "enc":
            r["speedup_vs_fp32"] = round(r["docs_per_s"] / ref_dps, 3) if ref_dps else None
            r["size_vs_fp32"] = round(r["weights_MB"] / ref_mb, 3) if ref_mb else None
            r["linear_size_vs_fp32"] = round(r["linear_MB"] / ref_lin, 3) if ref_lin and r.get("linear_MB") else None


def header(env: dict, prep: dict, cfg: dict, t_total: float, done: bool) -> list[str]:
    return [
        f"# medret GPU benchmark ({dt.datetime.now().isoformat(timespec='seconds')}, "
        f"{'complete' if done else 'PARTIAL'}, {t_total:.0f} s)",
        "",
        f"- device: `{cfg['device']}`; GPU: {env.get('gpu', 'none')}; torch {env['torch']} (CUDA {env['torch_cuda']}, "
        f"cuDNN {env['cudnn']}); transformers {env['transformers']}; numpy {env['numpy']}; Python {env['python']}; "
        f"{env['cpu_count']} CPU cores",
        "- optional libraries: " + "; ".join(f"{k}: {v}" for k, v in env["optional"].items()),
        f"- onnxruntime providers: {env.get('onnxruntime_providers')}; faiss GPUs: {env.get('faiss_num_gpus')}; "
        f"C compiler (for torch.compile): {env.get('gcc')}",
        f"- sizes: {cfg['n_texts']:,} synthetic texts (mean {prep['mean_tokens']} tokens, max {prep['max_tokens']}), "
        f"batch {cfg['batch']}, padded to max_length {cfg['max_length']}; fidelity subset {cfg['n_cos']}; "
        f"index {cfg['n_vec']:,} x 384, {cfg['n_q']:,} queries, k={cfg['k']}"
        + (" (SMOKE sizes)" if cfg["smoke"] else ""),
        f"- tokenizer (fast, MiniLM vocab): {prep['tokenizer_docs_per_s']:,} docs/s on the CPU, NOT included in docs/s "
        "below (token ids are pre-loaded on the device)",
        "",
    ]


def encoder_table(rows: dict) -> list[str]:
    lines = [
        "## Encoder throughput: MiniLM-L6 architecture (all-MiniLM-L6-v2 config + tokenizer), RANDOM weights (seed 0)",
        "",
        "Speed does not depend on weight values, so docs/s and sizes hold for the real model; `cos` compares each "
        "variant's mean-pooled, normalized embeddings with fp32 ones of the same random model (numeric fidelity of the "
        "kernels, not retrieval quality). `centred cos` subtracts the fp32 mean embedding first (random-weight "
        "embeddings share a large common direction that inflates plain cosine). docs/s = median of the timed passes "
        "after warm-up, `torch.cuda.synchronize` around each pass. Weights MB counts all parameters incl. quantization "
        "scales; the 30522 x 384 word-embedding table (44.7 MB fp32) is never quantized by bnb/torchao.",
        "",
        "| variant | status | docs/s | speedup vs fp32 | weights MB | size vs fp32 | Linear MB | Linear size vs fp32 "
        "| cos mean | cos min | centred cos | peak GPU MB | texts x passes | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for n in (n for n in NAMES if SPEC[n][1] == "enc"):
        r = rows.get(n, {"status": "not run"})
        if r["status"] != "ok":
            lines.append(f"| {SPEC[n][2]} | {status_cell(r)} |" + " |" * 12)
            continue
        lines.append(
            f"| {SPEC[n][2]} | ok | {fmt(r['docs_per_s'], 0)} | {fmt(r.get('speedup_vs_fp32'))} "
            f"| {fmt(r['weights_MB'])} "
            f"| {fmt(r.get('size_vs_fp32'))} | {fmt(r.get('linear_MB'))} | {fmt(r.get('linear_size_vs_fp32'))} "
            f"| {fmt(r.get('cos_mean'))} | {fmt(r.get('cos_min'))} | {fmt(r.get('cos_centred_mean'))} "
            f"| {fmt(r.get('peak_gpu_MB'))} | {r['n_texts']:,} x {r['repeats']} | {r.get('note', '')} |"
        )
    return lines


def index_table(rows: dict, env: dict, cfg: dict) -> list[str]:
    faiss_gpu = isinstance(env.get("faiss_num_gpus"), int) and env["faiss_num_gpus"] > 0
    flat_label = "torch exact fp32 (matmul + topk)" + ("" if faiss_gpu else " (faiss-gpu not available)")
    lines = [
        "",
        f"## Index: {cfg['n_vec']:,} x 384 synthetic unit vectors (clustered around {cfg['n_centres']:,} random "
        f"centres, seed 1234), {cfg['n_q']:,} queries, k={cfg['k']}",
        "",
        "recall@k = overlap of the top-k ids with fp32 exact search (torch matmul + topk). QPS = queries / median "
        "time of 3 full searches after a warm-up search. Build = from a host float32 array to a searchable index "
        "(IVF-PQ: train + add).",
        "",
        "| index | status | build s | search s | QPS | recall@10 | recall@100 | index MB | peak GPU MB | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in (n for n in NAMES if SPEC[n][1] == "idx"):
        r = rows.get(n, {"status": "not run"})
        label = flat_label if n == "idx_torch_fp32" else SPEC[n][2]
        if r["status"] != "ok":
            lines.append(f"| {label} | {status_cell(r)} |" + " |" * 8)
            continue
        lines.append(
            f"| {label} | ok | {fmt(r.get('build_s'))} | {fmt(r.get('search_s'))} | {fmt(r['qps'], 0)} "
            f"| {fmt(r['recall@10'])} | {fmt(r['recall@100'])} | {fmt(r.get('index_MB'))} "
            f"| {fmt(r.get('peak_gpu_MB'))} "
            f"| {r.get('note', '')} |"
        )
    return lines


def write_outputs(out: Path, env: dict, prep: dict, cfg: dict, rows: dict, t_total: float, done: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    add_ratios(rows)
    lines = header(env, prep, cfg, t_total, done) + encoder_table(rows) + index_table(rows, env, cfg)
    lines += ["", "Worker wall times (s): " + ", ".join(f"{n} {r.get('worker_s')}" for n, r in rows.items()), ""]
    (out / "gpu_bench.md").write_text("\n".join(lines))
    (out / "gpu_bench.json").write_text(
        json.dumps(
            {"env": env, "prepared": prep, "config": cfg, "rows": rows, "total_s": round(t_total, 1), "complete": done},
            indent=1,
            default=str,
        )
    )
