"""``quant=auto``: bits per layer chosen from a sensitivity scan (``python -m medret.sensitivity``) under an
average-bits budget, turned into the ordinary ``quant.overrides`` before anything is quantized.

The budget is effective bits per parameter over the scanned (quantized) linears, each width priced by the
storage the scan measured for it (codes + codebooks + scales of the scan's scheme). With
``quant.budget_over=model`` (a scan with ``scan.embeddings=true``) it is over every parameter of the model:
the word-embedding table's frequency tiers are items of the knapsack beside the linears (each tier's width
priced by its bytes and its measured drop), and what no choice changes (biases, norms, position embeddings,
the row -> tier map) is counted as stored, so the budget is the whole model's bits per parameter. The loss minimised is
the sum of the single-layer drops the scan measured (``quant.sensitivity_measure``): additivity across
layers is an assumption, checked by evaluating the choice. Solver: ``medret.quant.budget`` (exact DP).
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medret.config import QuantConfig
from medret.errors import InputError
from medret.quant.budget import DEFAULT_STEPS, choose_options
from medret.quant.checks import validate
from medret.quant.layers import quantize_weight
from medret.quant.options import TABLE, as_config, grid_keys, quant_identity, run_fields
from medret.quant.registry import Scheme, names, register, scheme
from medret.quant.select import group_size_for
from medret.storage import write_atomic

SCAN_FORMAT = "medret-sensitivity/1"
MEASURES = {"fidelity": "fidelity_drop", "ndcg": "ndcg_drop"}  # quant.sensitivity_measure -> scan curve key
CHOICE_FILE = Path("quant") / "auto_choice.yaml"  # in the run dir: a quant group file (hydra.searchpath)
BUDGETS = {"linears": "the scanned linears", "model": "every parameter of the model"}  # quant.budget_over


def _unresolved(cfg: QuantConfig) -> None:
    raise InputError(
        "quant=auto: only evaluate.py turns a sensitivity scan into bits per layer; pass the YAML it wrote "
        "(quant/auto_choice.yaml in its run dir) instead"
    )


# its options are the request: resolved into a concrete per-layer config, they reach no identity
AUTO = register(
    Scheme(
        "auto",
        "auto",
        check=_unresolved,
        qat=False,
        options=("target_bits", "sensitivity", "sensitivity_measure", "grid", "budget_over"),
        rounds_to_grid=False,
    )
)


def _check_scan_decides(cfg: QuantConfig) -> None:
    """The scheme's options are the scan's (or quant.grid's): one the run sets would be silently replaced. The
    word-embedding table is the run's while the budget is over the linears alone (budget_over=model prices it)."""
    default = QuantConfig()
    own = {*run_fields(), "name", *AUTO.options, *(TABLE if cfg.budget_over == "linears" else ())}
    for key in QuantConfig.__dataclass_fields__:
        if key not in own and getattr(cfg, key) != getattr(default, key):
            raise InputError(
                f"quant.{key}={getattr(cfg, key)!r}: quant=auto takes the scheme and its options from the scan; "
                "set them when scanning (or round on another grid with quant.grid)"
            )


def read_scan(cfg: QuantConfig, model_path: str, revision: str | None) -> dict[str, Any]:
    """The scan JSON named by quant.sensitivity, checked against the run (before any model loads)."""
    _check_scan_decides(cfg)
    if cfg.target_bits is None or not math.isfinite(cfg.target_bits) or cfg.target_bits <= 0:
        raise InputError(f"quant.target_bits={cfg.target_bits}: quant=auto needs a budget in bits/param (e.g. 3.0)")
    if cfg.sensitivity_measure not in MEASURES:
        raise InputError(f"quant.sensitivity_measure={cfg.sensitivity_measure!r}: expected {' or '.join(MEASURES)}")
    if cfg.budget_over not in BUDGETS:
        raise InputError(f"quant.budget_over={cfg.budget_over!r}: expected linears or model (every parameter)")
    if not cfg.sensitivity:
        raise InputError("quant.sensitivity: quant=auto needs the sensitivity.json a scan wrote (medret.sensitivity)")
    path = Path(cfg.sensitivity)
    if not path.is_file():
        raise InputError(f"quant.sensitivity={path}: no such file (expected a medret.sensitivity scan's JSON)")
    try:
        scan = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (expected a medret.sensitivity scan's JSON)") from None
    if not isinstance(scan, dict) or scan.get("format") != SCAN_FORMAT or not scan.get("layers"):
        raise InputError(f"{path}: not a medret sensitivity scan (expected format {SCAN_FORMAT!r} with layers)")
    scanned = scan.get("model") if isinstance(scan.get("model"), dict) else {}  # absent: refused as another model
    if (scanned.get("path"), scanned.get("revision")) != (model_path, revision):
        raise InputError(
            f"quant.sensitivity={path}: scanned model.path={scanned.get('path')} (revision {scanned.get('revision')}),"
            f" this run's is {model_path} (revision {revision}); scan this model first"
        )
    if cfg.sensitivity_measure == "ndcg" and scan.get("ndcg", {}).get("measured") is False:
        raise InputError(
            f"quant.sensitivity_measure=ndcg: {path} measured fidelity only (scan.ndcg=false); use "
            "quant.sensitivity_measure=fidelity or scan with scan.ndcg=true"
        )
    if cfg.budget_over == "model" and not (scan.get("embedding") and scan.get("model_size")):
        raise InputError(
            f"quant.budget_over=model: {path} has no word-embedding table points; scan with scan.embeddings=true"
        )
    return scan


def items(scan: dict, over: str) -> list[dict]:
    """The knapsack's items: the scanned linears, then (budget over the model) the table's frequency tiers."""
    return scan["layers"] + (scan["embedding"]["groups"] if over == "model" else [])


def fixed_cost(scan: dict, over: str) -> tuple[float, float]:
    """(bits every choice stores alike, the parameters the budget averages over)."""
    if over == "linears":
        return 0.0, float(sum(layer["params"] for layer in scan["layers"]))
    fixed = scan["model_size"]["fixed_bytes"] + scan["embedding"]["index_bytes"]
    return 8.0 * fixed, float(scan["model_size"]["params_all"])


def _curves(
    scan: dict, measure: str, over: str = "linears"
) -> tuple[list[str], list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(item names, widths, costs in stored bits, losses, params) as [items, widths] arrays."""
    bits = [int(b) for b in scan["bits"]]
    its = items(scan, over)
    names = [layer["name"] for layer in its]
    params = np.array([layer["params"] for layer in its], np.float64)
    curve = [[layer["curve"][str(b)] for b in bits] for layer in its]
    costs = np.array([[c["effective_bits"] for c in row] for row in curve]) * params[:, None]
    losses = np.array([[c[MEASURES[measure]] for c in row] for row in curve], np.float64)
    return names, bits, costs, losses, params


def regrid(
    scan: dict,
    grid: Any,
    model_path: str,
    revision: str | None,
    model_dir: Callable[[], str],
    over: str = "linears",
) -> dict[str, Any]:
    """The scan with its scheme replaced by ``quant.grid`` and every (layer, width) priced by what that grid
    stores for the layer's shape (a seeded random weight quantized at that width; storage depends on the
    shape, not the values); the table's tiers too when the budget is over the model. The drops stay the scan's."""
    if not isinstance(grid, dict):
        raise InputError(f"quant.grid={grid!r}: expected a mapping of scheme options, e.g. {{name:kmeans}}")
    keys = grid_keys()
    unknown = sorted(set(grid) - set(keys))
    if unknown:
        raise InputError(f"quant.grid: unknown option {unknown[0]!r} (expected some of {', '.join(keys)})")
    fields = {k: v for k, v in scan["quant"].items() if k in QuantConfig.__dataclass_fields__}
    base = replace(QuantConfig(**fields), **grid, method="rtn", overrides={})
    if scheme(base.name).kind != "custom":
        raise InputError(f"quant.grid: name={base.name!r} is not a custom scheme ({', '.join(names('custom'))})")
    for b in scan["bits"]:
        validate(replace(base, bits=int(b)))
    if over == "model" and base.granularity in ("tensor", "rows"):
        raise InputError(
            f"quant.grid: granularity={base.granularity} cannot store the table's tiers (groups within a row needed)"
        )
    shapes = layer_shapes([layer["name"] for layer in scan["layers"]], model_path, revision, model_dir)
    priced: dict[tuple, float] = {}  # (shape, width) -> effective bits: a model has few distinct shapes
    layers = []
    for layer in scan["layers"]:
        shape, curve = shapes[layer["name"]], {}
        for b, point in layer["curve"].items():
            if (shape, b) not in priced:
                w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
                spec = replace(base, bits=int(b), kmeans_iters=1)  # the fit's quality does not change its size
                priced[shape, b] = quantize_weight(w, spec, group_size_for(w, spec, layer["name"])).effective_bits()
            curve[b] = {**point, "effective_bits": priced[shape, b]}
        layers.append({**layer, "curve": curve})
    out = {**scan, "quant": {**scan["quant"], **grid}, "layers": layers}
    if over == "model":
        out["embedding"] = _regrid_table(scan["embedding"], base)
    return out


def _regrid_table(emb: dict, base: QuantConfig) -> dict:
    """Each tier of the table priced by what ``base`` stores for that many rows at each width."""
    groups = []
    for g in emb["groups"]:
        curve = {}
        for b, point in g["curve"].items():
            if g["rows"]:
                w = torch.randn(g["rows"], emb["dim"], generator=torch.Generator().manual_seed(0))
                spec = replace(base, bits=int(b), kmeans_iters=1)
                point = {
                    **point,
                    "effective_bits": quantize_weight(w, spec, group_size_for(w, spec, emb["name"])).effective_bits(),
                }
            curve[b] = point
        groups.append({**g, "curve": curve})
    return {**emb, "groups": groups}


def layer_shapes(
    layer_names: list[str], model_path: str, revision: str | None, model_dir: Callable[[], str]
) -> dict[str, tuple[int, ...]]:
    """Each scanned linear's weight shape, from the model's config on the meta device (no weights read).
    ``model_dir`` resolves model.path to a folder or hub id (pkg:// paths: medret.models knows them)."""
    from transformers import AutoConfig, AutoModel  # only quant.grid needs them; keeps this module light

    try:
        config = AutoConfig.from_pretrained(model_dir(), revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise InputError(f"quant.grid: cannot read model.path={model_path}'s config ({type(err).__name__})") from None
    with torch.device("meta"):
        modules = dict(AutoModel.from_config(config).named_modules())
    missing = [n for n in layer_names if not isinstance(modules.get(n), torch.nn.Linear)]
    if missing:
        raise InputError(f"quant.grid: scanned layer {missing[0]} is not a linear layer of {model_path}")
    return {n: tuple(modules[n].weight.shape) for n in layer_names}


def choose_bits(scan: dict, target_bits: float, measure: str, where: str, over: str = "linears") -> dict[str, Any]:
    """Bits per layer (and per tier of the table, budget over the model) for the budget; the predicted
    bits/param and drop of the choice."""
    names, bits, costs, losses, params = _curves(scan, measure, over)
    fixed, total = fixed_cost(scan, over)
    low, high = (costs.min(axis=1).sum() + fixed) / total, (costs.max(axis=1).sum() + fixed) / total
    if not low <= target_bits <= high:
        raise InputError(
            f"quant.target_bits={target_bits}: out of range for {where}: its widths {bits} give "
            f"{low:.4f} to {high:.4f} effective bits/param over {BUDGETS[over]}"
        )
    picks = choose_options(costs, losses, target_bits * total - fixed)
    rows = range(len(names))
    n_linears = len(scan["layers"])
    out = {
        "budget_over": over,
        "bits_per_layer": {n: bits[j] for n, j in zip(names[:n_linears], picks)},
        "predicted_bits_per_param": float((sum(costs[i, j] for i, j in zip(rows, picks)) + fixed) / total),
        "predicted_drop": float(sum(losses[i, j] for i, j in zip(rows, picks))),
        "bits_range": [float(low), float(high)],
    }
    if over == "model":  # the table's widths, most frequent tier first; what no choice changes
        out["embedding_bits"] = [bits[j] for j in picks[n_linears:]]
        out["embedding_tiers"] = list(scan["embedding"]["tiers"])
        out["fixed_bits_per_param"] = float(fixed / total)
        out["predicted_model_bytes"] = int(round((sum(costs[i, j] for i, j in zip(rows, picks)) + fixed) / 8))
    return out


def choice_config(
    scan: dict, bits_per_layer: dict[str, int], run: QuantConfig, embedding_bits: list[int] | None = None
) -> QuantConfig:
    """The scan's scheme with the chosen widths: the commonest width on top, the others as exact-name overrides;
    with ``embedding_bits`` the table in the scan's frequency tiers at those widths, else the run's own table
    options (quant.embeddings, quant.embedding_bits / embedding_tiers)."""
    counts = collections.Counter(bits_per_layer.values())
    top = max(sorted(counts), key=lambda b: counts[b])  # ties: the lowest width
    fields = {k: v for k, v in scan["quant"].items() if k in QuantConfig.__dataclass_fields__}
    overrides = {name: {"bits": b} for name, b in bits_per_layer.items() if b != top}
    table = {k: getattr(run, k) for k in TABLE}  # budget over the linears: the table as the run set it
    if embedding_bits is not None:
        tiers = list(scan["embedding"]["tiers"])
        table = {"embeddings": True, "embedding_bits": list(embedding_bits), "embedding_tiers": tiers or None}
    # the scan measured round-to-nearest; how the chosen widths are rounded and refined is the run's
    return replace(
        QuantConfig(**fields),
        bits=top,
        overrides=overrides,
        **{k: getattr(run, k) for k in run_fields()},
        target_bits=None,
        sensitivity=None,
        grid=None,
        budget_over="linears",
        **table,
    )


def choice_yaml(cfg: QuantConfig, info: dict, run_dir: Path) -> str:
    header = (
        f"# quant=auto: bits per layer for {info['target_bits']} bits/param over {BUDGETS[info['budget_over']]}"
        f" from {info['sensitivity']}\n"
        f"# (measure {info['measure']}{'; grid ' + str(info['grid']) if info.get('grid') else ''};"
        f" predicted {info['predicted_bits_per_param']:.4f} bits/param).\n"
        f"# The same weights again: evaluate.py hydra.searchpath=[file://{Path(run_dir).resolve()}] quant=auto_choice\n"
    )
    return header + yaml.safe_dump(quant_identity(cfg), sort_keys=False)


def resolve_auto(
    cfg: Any, model_path: str, revision: str | None, run_dir: Path | None, model_dir: Callable[[], str]
) -> tuple[QuantConfig, dict[str, Any] | None]:
    """quant=auto -> the concrete per-layer config (and what was chosen, for results.json); any other
    quant config comes back unchanged with None. Writes ``quant/auto_choice.yaml`` into ``run_dir``.
    ``model_dir()`` resolves model.path to a loadable folder or hub id (called only for ``quant.grid``)."""
    cfg = as_config(cfg)
    if cfg.name != "auto":
        return cfg, None
    scan = read_scan(cfg, model_path, revision)
    if cfg.grid:
        scan = regrid(scan, cfg.grid, model_path, revision, model_dir, cfg.budget_over)
    info = {
        "target_bits": cfg.target_bits,
        "sensitivity": str(cfg.sensitivity),
        "measure": cfg.sensitivity_measure,
        **({"grid": dict(cfg.grid), "priced_by": "quant.grid's storage per layer shape"} if cfg.grid else {}),
        "solver": f"multiple-choice knapsack: DP over {DEFAULT_STEPS} units of the headroom; drops assumed additive",
        **choose_bits(scan, cfg.target_bits, cfg.sensitivity_measure, str(cfg.sensitivity), cfg.budget_over),
        "scan_rounding": scan.get("rounding", {}).get("method", "rtn"),  # the points' rounding; the run's is its own
        "scanned_weights": scan["model"].get("weights"),
        # scan.dev=holdout drew its dev queries from a split: a report on that split leaves those ids out
        "scan_dev": {k: scan.get("dev", {}).get(k) for k in ("mode", "data", "queries", "query_ids")},
    }
    if info["scan_dev"]["mode"] != "holdout":
        info["scan_dev"].pop("query_ids")
    concrete = choice_config(scan, info["bits_per_layer"], cfg, info.get("embedding_bits"))
    if run_dir is not None:
        write_choice(concrete, info, Path(run_dir))
    return concrete, info


def write_choice(concrete: QuantConfig, info: dict[str, Any], run_dir: Path) -> None:
    """The reproducing quant group file; evaluate writes it once the run's options have all been checked."""
    info["overrides_yaml"] = str(run_dir / CHOICE_FILE)
    write_atomic(run_dir / CHOICE_FILE, [choice_yaml(concrete, info, run_dir)])


def check_scanned_weights(info: dict[str, Any] | None, identity: dict[str, str]) -> None:
    """Once the model is loaded: the scan must have measured these very weights, not just the same path."""
    if info and info.get("scanned_weights") and info["scanned_weights"] != identity:
        raise InputError(
            f"quant.sensitivity={info['sensitivity']}: scanned other weights than this run's model "
            "(same model.path, different files); scan this model again"
        )


def leave_out_dev_queries(data: Any, info: dict[str, Any] | None) -> Any:
    """A scan with ``scan.dev=holdout`` tuned the choice on some queries of this very split: they are not
    reported on (counted in ``dev_queries_left_out``). Any other data set comes back unchanged."""
    dev = (info or {}).get("scan_dev") or {}
    if dev.get("mode") != "holdout" or dev.get("data") != data.name:
        return data
    held = set(dev["query_ids"])
    keep = [i for i, q in enumerate(data.query_ids) if q not in held]
    info["dev_queries_left_out"] = len(data.query_ids) - len(keep)
    if len(keep) == len(data.query_ids):
        return data
    if not keep:
        raise InputError(f"quant.sensitivity={info['sensitivity']}: every query of {data.name} was a scan dev query")
    return data.with_queries(keep)
