"""A run's outputs, and the one mapping between results.json and the W&B summary.

``summary_of`` flattens results.json into W&B summary keys; ``results_of`` reads a W&B run back into
the shape of results.json (what the report needs), so the two can never drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medret.storage import write_atomic, write_json, write_jsonl


def write_trec_run(path: Path, run: dict[str, list[tuple[str, float]]], tag: str) -> None:
    """TREC run format: qid Q0 docid rank score tag."""
    write_atomic(
        path,
        (f"{q} Q0 {d} {i} {float(s)!r} {tag}\n" for q, hits in run.items() for i, (d, s) in enumerate(hits, 1)),
    )


def write_run_files(run_dir: Path, results: dict, rows: list[dict], ranked: dict, tag: str) -> None:
    """run.trec, per_query.jsonl, then results.json last: its presence means the run is complete. When one
    fails (a full disk), none of the three is left: no file of this run beside another run's results."""
    files = (run_dir / "results.json", run_dir / "run.trec", run_dir / "per_query.jsonl")
    files[0].unlink(missing_ok=True)  # a rerun in the same folder: the old results no longer describe it
    try:
        write_trec_run(files[1], ranked, tag=tag)
        write_jsonl(files[2], rows)
        write_json(files[0], results)
    except BaseException:
        for f in files[1:]:
            f.unlink(missing_ok=True)
        raise


def _flat(prefix: str, d: dict) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(f"{prefix}/{k}", v) if isinstance(v, dict) else {f"{prefix}/{k}": v})
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        *parents, leaf = k.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def summary_of(results: dict[str, Any]) -> dict[str, Any]:
    """results.json -> flat W&B summary keys (numbers and the data set name only: never text)."""
    q = results.get("quant", {})
    out: dict[str, Any] = {
        **results["metrics"],
        **{f"throughput/{k}": v for k, v in results["throughput"].items() if v is not None},
        **_flat("size", results["sizes"]),
        **{f"index/{k}": v for k, v in results["index"].items() if isinstance(v, (int, float))},
        **{f"ci95_low/{m}": v[0] for m, v in results["metrics_ci95"].items()},
        **{f"ci95_high/{m}": v[1] for m, v in results["metrics_ci95"].items()},
        "data/name": results["data"]["name"],
    }
    for key in ("model_bytes", "effective_bits_per_param"):
        if q.get(key) is not None:
            out[f"quant/{key}"] = q[key]
    rt = results.get("runtime", {})
    out.update({f"runtime/{k}": v for k, v in rt.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out.update({f"runtime/{k}": rt[k] for k in ("name", "quantize", "quantization") if k in rt})
    for c, vals in results.get("by_category", {}).items():
        out.update({f"category/{c}/{m}": v for m, v in vals.items()})
    # each acceptance profile's outcome (accept / reject / inconclusive): a word, never record or query text
    out.update({f"profile/{name}": p["outcome"] for name, p in results.get("profiles", {}).items()})
    if "deltas" in results:
        deltas, fid = results["deltas"], results["fidelity"]
        out.update({f"delta/{m}": d["delta"] for m, d in deltas.items()})
        out.update({f"delta_ci_low/{m}": d["ci95"][0] for m, d in deltas.items()})
        out.update({f"delta_ci_high/{m}": d["ci95"][1] for m, d in deltas.items()})
        out["fidelity/embedding_cosine_mean"] = fid["embedding_cosine"]["mean"]
        out["fidelity/embedding_cosine_min"] = fid["embedding_cosine"]["min"]
        out["fidelity/top10_overlap"] = fid["ranking"]["top10_overlap"]
        out["fidelity/rbo"] = fid["ranking"]["rbo_p0.9"]
        v = results["verdict"]
        out["verdict/accept"] = int(v["accept"])
        out["verdict/outcome"] = v.get("outcome", "accept" if v["accept"] else "reject")
        if v.get("queries_to_decide") is not None:
            out["verdict/queries_to_decide"] = v["queries_to_decide"]
    return out


def results_of(config: dict, summary: dict) -> dict:
    """A W&B run's config and summary, shaped like results.json (the inverse of ``summary_of``)."""

    def pair(lo_prefix: str, hi_prefix: str, m: str) -> list[float] | None:
        lo, hi = summary.get(f"{lo_prefix}/{m}"), summary.get(f"{hi_prefix}/{m}")
        return None if lo is None or hi is None else [lo, hi]

    metrics = {k: v for k, v in summary.items() if "@" in k and "/" not in k}
    prefixed = lambda prefix: {k.removeprefix(prefix): v for k, v in summary.items() if k.startswith(prefix)}  # noqa: E731
    res: dict[str, Any] = {
        "config": config,
        "metrics": metrics,
        "metrics_ci95": {m: pair("ci95_low", "ci95_high", m) for m in metrics if pair("ci95_low", "ci95_high", m)},
        "quant": {
            "scheme": config["quant"]["name"],
            "effective_bits_per_param": summary.get("quant/effective_bits_per_param"),
            "model_bytes": summary.get("quant/model_bytes", summary.get("size/model_param_bytes", 0)),
        },
        "sizes": {"model_param_bytes": 0, **_nest(prefixed("size/"))},
        "throughput": {"encode_docs_per_s": None, "search_qps": None, **prefixed("throughput/")},
        "index": prefixed("index/"),
        "runtime": {"name": "torch", **prefixed("runtime/")},
        "data": {"name": summary.get("data/name", config["data"].get("name"))},
        "by_category": {},
    }
    for key, v in summary.items():
        if key.startswith("category/"):
            _, cat, m = key.split("/", 2)
            res["by_category"].setdefault(cat, {})[m] = v
    profiles = {k.removeprefix("profile/"): v for k, v in summary.items() if k.startswith("profile/")}
    if profiles:
        res["profiles"] = {name: {"outcome": outcome} for name, outcome in profiles.items()}
    if "delta/ndcg@10" in summary:
        res["deltas"] = {
            m: {"delta": v, "ci95": pair("delta_ci_low", "delta_ci_high", m)} for m, v in prefixed("delta/").items()
        }
        accept = bool(summary.get("verdict/accept"))
        res["verdict"] = {"accept": accept, "outcome": summary.get("verdict/outcome", "accept" if accept else "reject")}
        if "verdict/queries_to_decide" in summary:
            res["verdict"]["queries_to_decide"] = summary["verdict/queries_to_decide"]
    return res
