"""The fp32 model a saved quantized model is judged against.

A folder written packed (``quant.save_dir``, ``train=qat`` / ``train=distill``'s ``best_model``) records in its
manifest the fp32 model it was made from (``source``: path as configured, revision, weights digest). Evaluated
with ``model.path=FOLDER`` it is a variant like any quantized run: the deltas, verdict and profiles are against
that source's fp32 baseline (encoded once and cached, as every run's is), and its fp32 bytes are the source's.
``model.reference_path`` names the source instead (a folder saved before sources were recorded, or moved
weights); a manifest whose digest no longer matches its source's weights is one ``error:`` line, not a
comparison against the wrong model.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from medret.config import ModelConfig
from medret.errors import InputError
from medret.evaluation.baseline import fp32_baseline
from medret.models import load_retriever
from medret.models.encoder import check_model_source, resolve_model_path
from medret.quant import state_bytes
from medret.quant.persist import is_quantized_dir, saved_manifest
from medret.retrieval import model_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    model: ModelConfig  # the fp32 model(s) to load for the baseline
    expected: dict[str, str]  # side -> the weights digest a manifest recorded (checked after loading)
    origin: str  # "manifest" | "model.reference_path"
    saved_quant: dict  # the saved folder's own quant record (scheme, bits, distill/qat summary)


def _saved(path: str | None) -> dict | None:
    if path is None:
        return None
    folder = resolve_model_path(path)
    return saved_manifest(folder) if is_quantized_dir(folder) else None


def reference_model(model: ModelConfig) -> Reference | None:
    """The reference of a saved quantized ``model.path`` (and/or ``model.query_path``), or None for any other
    model. Reads manifests only: cheap, before any data or weights load."""
    doc, query = _saved(model.path), _saved(model.query_path)
    if doc is None and query is None:
        if model.reference_path:
            raise InputError(
                f"model.reference_path={model.reference_path}: only a saved quantized model (a folder with "
                f"medret_quant.json, from quant.save_dir or train.py) is judged against a reference; "
                f"model.path={model.path} is not one"
            )
        return None
    sources = {side: (m or {}).get("source") for side, m in (("doc", doc), ("query", query))}
    if model.reference_path:
        ref_doc, origin, expected = model.reference_path, "model.reference_path", {}
    elif doc is not None and sources["doc"] is None:
        log.warning(
            "model.path=%s: saved without the fp32 model it came from (an older medret); reported unjudged: set "
            "model.reference_path to that model to judge it",
            model.path,
        )
        return None
    else:
        ref_doc, origin = (sources["doc"]["path"] if doc is not None else model.path), "manifest"
        expected = {side: s["weights"] for side, s in sources.items() if s}
    ref_query = model.query_path
    if query is not None:
        if sources["query"] is None:
            raise InputError(
                f"model.query_path={model.query_path}: saved without the fp32 model it came from; "
                "evaluate the pair with an fp32 query_path, or re-save it with this medret"
            )
        ref_query = sources["query"]["path"]
    revision = (sources["doc"] or sources["query"] or {}).get("revision", model.revision)
    ref = dataclasses.replace(
        model, path=ref_doc, query_path=ref_query, revision=revision, adapter=None, reference_path=None
    )
    # a moved or missing source: one line now, not after the data loads, naming where the path came from
    where = "model.reference_path" if model.reference_path else f"model.path={model.path}: its manifest's source.path"
    check_model_source(where, ref.path, ref.revision)
    if query is not None:
        check_model_source(f"model.query_path={model.query_path}: its manifest's source.path", ref_query, ref.revision)
    return Reference(ref, expected, origin, (doc or query)["quant"])


def reference_baseline(ref: Reference, data, cfg, ks, root: Path) -> tuple[Path, dict | None, dict]:
    """Load the source only for its fp32 baseline (cached like any) and its sizes; the run's quant block gets
    ``reference`` (what was compared against) and the source's fp32 bytes."""
    retriever = load_retriever(ref.model)
    identity = model_identity(retriever)
    for side, want in ref.expected.items():
        if identity[side] != want:
            option, source = (
                ("model.path", ref.model.path) if side == "doc" else ("model.query_path", ref.model.query_path)
            )
            raise InputError(
                f"{option}: the saved model's manifest records its fp32 source {source} with weights {want[:12]}, "
                f"which now loads weights {identity[side][:12]}; set model.reference_path to the model it was made from"
            )
    base_file, base = fp32_baseline(retriever, data, cfg, ks, root, identity, judged=True)
    info = {
        "reference": {
            "path": ref.model.path,
            **({"query_path": ref.model.query_path} if ref.model.query_path else {}),
            "from": ref.origin,
            "weights": identity,
        },
        "fp32_model_bytes": sum(state_bytes(e.model) for e in retriever.encoders()),
        "saved_quant": ref.saved_quant,
    }
    return base_file, base, info
