"""The one reader of an evaluate run's ``results.json`` and the one table writer (Markdown, CSV, plain text).

``RunResult`` is a typed view of one run: every key an older run may lack (``runtime``, ``device``,
``effective_bits_per_param_all``, ``deltas[...]["fp32"]``, the verdict's ``outcome``, ``profiles``,
``slices``) is read here, with its fallback, and nowhere else. ``per_query.jsonl`` is read only when asked for.

Verdicts have one vocabulary: ``accept`` | ``reject`` | ``inconclusive``. Runs from before the third outcome
stored only an ``accept`` bool; they are judged again from their own CI of the delta, exactly as evaluate
judges now (their stored ``accept`` agrees: accept iff even the CI's worst drop is within the gate).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from medret.storage import write_atomic
from medret.tracking.outputs import results_of

RESULTS_FILE = "results.json"
PER_QUERY_FILE = "per_query.jsonl"
METRIC = "ndcg@10"  # the gate's metric when a run does not name one
OUTCOMES = ("accept", "reject", "inconclusive")


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    """d[k1][k2]... or default when any level is missing, None or not a mapping."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


@dataclass(frozen=True)
class Delta:
    """A paired change against fp32 for one metric."""

    delta: float
    ci95: tuple[float, float] | None
    fp32: float | None  # None: older runs and W&B rows (fp32 = score - delta then)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # one of OUTCOMES
    queries_to_decide: int | None = None  # inconclusive: about how many queries a CI would need
    metric: str = METRIC  # the gate's metric

    def label(self) -> str:
        n = self.queries_to_decide
        return f"inconclusive (~{n} queries to decide)" if self.outcome == "inconclusive" and n else self.outcome


def verdict_label(v: Verdict | None) -> str:
    """A table cell: the verdict, or ``baseline`` for a run with nothing to compare against."""
    return "baseline" if v is None else v.label()


class Criterion(NamedTuple):
    """One criterion x slice row of a profile: the paired delta against fp32 and its family-wise CI."""

    metric: str
    slice: str
    outcome: str  # OUTCOMES or "too_small"
    max_drop: float | None = None
    n: int | None = None
    fp32: float | None = None
    delta: float | None = None
    ci95: tuple[float, float] | None = None
    queries_to_decide: int | None = None


@dataclass(frozen=True)
class ProfileResult:
    """An acceptance profile's outcome on one run; a W&B run carries the outcome only."""

    name: str
    outcome: str  # one of OUTCOMES
    decided_by: str | None = None  # "<metric> on <slice>"
    criteria: tuple[Criterion, ...] = ()

    letter = property(lambda self: {"accept": "A", "reject": "R", "inconclusive": "I"}.get(self.outcome, "?"))

    def label(self) -> str:
        """A matrix cell: 'accept', 'reject: ndcg@10 on negation', 'inconclusive: ... (~512 queries to decide)'."""
        if not self.decided_by or self.outcome == "accept":
            return self.outcome
        n = next((c.queries_to_decide for c in self.criteria if f"{c.metric} on {c.slice}" == self.decided_by), 0)
        more = f" (~{n} queries to decide)" if n and self.outcome == "inconclusive" else ""
        return f"{self.outcome}: {self.decided_by}{more}"


class SliceInfo(NamedTuple):
    num_queries: int
    critical: bool  # one of the automatic ("critical") slices


def _deltas(raw: dict) -> dict[str, Delta]:
    out = {}
    for m, d in (raw.get("deltas") or {}).items():
        if d:
            ci = d.get("ci95")
            out[m] = Delta(d.get("delta"), (ci[0], ci[1]) if ci else None, d.get("fp32"))
    return out


@dataclass
class RunResult:
    """A typed view of one results.json (or a W&B run shaped like it); ``raw`` keeps the file as read."""

    raw: dict
    run_dir: Path | None = None
    deltas: dict[str, Delta] = field(default_factory=dict)
    verdict: Verdict | None = None

    @classmethod
    def of(cls, raw: dict, run_dir: Path | None = None) -> RunResult:
        """KeyError/TypeError when it is not an evaluate result (no metrics): the caller lists it as unreadable."""
        if not isinstance(raw, dict) or not isinstance(raw["metrics"], dict):
            raise TypeError(f"not an evaluate result: {type(raw).__name__}")
        run = cls(raw, run_dir, _deltas(raw))
        run.verdict = run._read_verdict()
        return run

    def __getitem__(self, key: str) -> Any:
        """A raw key no property models (what older callers index by hand)."""
        return self.raw[key]

    # --- the verdict ---

    def _read_verdict(self) -> Verdict | None:
        v = self.raw.get("verdict")
        if not v:
            return None
        metric = v.get("metric") or METRIC
        if v.get("outcome") in OUTCOMES:
            return Verdict(v["outcome"], v.get("queries_to_decide"), metric)
        d = self.deltas.get(metric)
        if d is None or d.ci95 is None or v.get("max_drop") is None:
            return Verdict("accept" if v.get("accept") else "reject", None, metric)
        return self._rejudge(d, metric, v["max_drop"])

    def _rejudge(self, d: Delta, metric: str, max_drop: float) -> Verdict:
        """A run from before the three-outcome verdict, judged by evaluate's own rule; the queries an
        inconclusive one would need come from its per-query deltas when per_query.jsonl is at hand."""
        import numpy as np

        from medret.evaluation.fidelity import verdict  # lazily: it pulls in the evaluation package

        rows = self.per_query()
        per_query = np.array([r[f"delta_{metric}"] for r in rows], dtype=float)
        j = verdict({"delta": d.delta, "ci95": list(d.ci95)}, per_query, metric, max_drop)
        return Verdict(j["outcome"], j["queries_to_decide"] if rows else None, metric)

    def per_query(self) -> list[dict]:
        """The run's per-query rows ([] when it has no folder or no per_query.jsonl)."""
        path = self.run_dir / PER_QUERY_FILE if self.run_dir else None
        if path is None or not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # --- what ran ---

    @property
    def dataset(self) -> str:
        return str(_get(self.raw, "data", "name", default="unknown"))

    @property
    def model(self) -> str:
        return _get(self.raw, "config", "model", "name", default="")

    @property
    def saved_quant(self) -> dict:
        """A saved quantized model's own quant record (evaluated by its folder: model.path=...), else {}."""
        return _get(self.raw, "quant", "saved_quant", default={})

    @property
    def scheme(self) -> str:
        saved = self.saved_quant.get("scheme")
        return str(
            saved or _get(self.raw, "quant", "scheme") or _get(self.raw, "config", "quant", "name", default="none")
        )

    @property
    def side(self) -> str:
        """Which encoder was quantized: both | query | doc (runs from before quant.side: both)."""
        return str(_get(self.raw, "quant", "side") or _get(self.raw, "config", "quant", "side", default="both"))

    @property
    def scheme_label(self) -> str:
        """The scheme as a table names it: 'nf', 'nf (query only)' for a run that quantized one side, 'kmeans+distill'
        for a saved train=distill model."""
        name = self.scheme + ("+distill" if "distill" in self.saved_quant else "")
        return name if self.side == "both" else f"{name} ({self.side} only)"

    @property
    def bits(self) -> int | None:
        """The width asked for (config quant.bits, or a saved model's); None for fixed-width schemes."""
        return _get(self.raw, "config", "quant", "bits") or self.saved_quant.get("bits")

    @property
    def quant_bits(self) -> int | None:
        """The width the quantizer reports (a fixed-width scheme's own, e.g. bnb_nf4's 4)."""
        return _get(self.raw, "quant", "bits")

    @property
    def index_name(self) -> str:
        return _get(self.raw, "config", "index", "name", default="")

    @property
    def index(self) -> dict:
        return self.raw.get("index") or {}

    @property
    def runtime_name(self) -> str:
        return str(_get(self.raw, "runtime", "name", default="torch"))

    @property
    def runtime_quantize(self) -> str:
        return str(_get(self.raw, "runtime", "quantize", default="none"))

    @property
    def runtime_label(self) -> str:
        """'torch', or 'NAME/MODE' for an exported runtime (its mode is a quantization of its own), with what
        else changes the deployed model: '+float_down_proj', '+sq=ALPHA', '@bf16' float ops."""
        name = self.runtime_name
        if name == "torch":
            return name
        conv = _get(self.raw, "runtime", "conversion", default=None) or {}
        label = f"{name}/{self.runtime_quantize}"
        if conv.get("fp32_matmuls_kept") and self.runtime_quantize != "static_int8":  # static int8 always keeps them
            label += "+float_down_proj"
        if isinstance(conv.get("smooth_quant"), (int, float)):
            label += f"+sq={conv['smooth_quant']}"
        precision = _get(self.raw, "runtime", "inference_precision", default="f32")
        return label if precision in ("f32", "fp32") else f"{label}@{precision}"

    # --- sizes and bits ---

    @property
    def torch_bytes(self) -> int:
        """The PyTorch model's parameter bytes after medret's quantization."""
        q = self.raw.get("quant") or {}
        if q.get("model_bytes") is not None:
            return q["model_bytes"]
        return _get(self.raw, "sizes", "model_param_bytes", default=0)

    @property
    def param_bytes(self) -> int | None:
        """The evaluated model's parameter bytes as the size report measured them."""
        return _get(self.raw, "sizes", "model_param_bytes")

    @property
    def disk_bytes(self) -> int | None:
        """What an exported runtime's model files take on disk; None for torch (nothing exported)."""
        return None if self.runtime_name == "torch" else _get(self.raw, "runtime", "bytes_on_disk")

    @property
    def deploy_bytes(self) -> int:
        """The bytes of the model that would be deployed: the runtime's files, else the torch parameters."""
        return self.disk_bytes or self.torch_bytes

    @property
    def eff_bits(self) -> float | None:
        """Bits per quantized parameter (scales included)."""
        return _get(self.raw, "quant", "effective_bits_per_param")

    @property
    def eff_bits_all(self) -> float | None:
        """Bits per parameter over all parameters (embeddings included); None for older runs."""
        return _get(self.raw, "quant", "effective_bits_per_param_all")

    @property
    def deployed_bits(self) -> float | None:
        """Bits per parameter over all parameters when known, else over quantized ones.

        A runtime that quantized on its own (onnx dynamic_int8, openvino int4_weights...) stores fewer bits than
        torch's quant info says (32 for quant=none): its bits are its files' bits per fp32 parameter."""
        disk = self.disk_bytes
        fp32_bytes = _get(self.raw, "sizes", "fp32_model_param_bytes") or _get(self.raw, "quant", "fp32_model_bytes")
        if disk and fp32_bytes and self.runtime_quantize != "none":
            return 8 * disk / (fp32_bytes / 4)
        return self.eff_bits_all if self.eff_bits_all is not None else self.eff_bits

    @property
    def quantize_s(self) -> float | None:
        return _get(self.raw, "quant", "quantize_s")

    # --- quality ---

    @property
    def metrics(self) -> dict[str, float]:
        return self.raw["metrics"]

    def score(self, metric: str = METRIC) -> float:
        return self.metrics[metric]

    def ci_err(self, metric: str = METRIC) -> tuple[float, float]:
        """(below, above) the score: its 95% CI as error-bar lengths; (0, 0) when the run has none."""
        s, ci = self.score(metric), _get(self.raw, "metrics_ci95", metric)
        return (0.0, 0.0) if not ci else (max(0.0, s - ci[0]), max(0.0, ci[1] - s))

    def fp32_score(self, metric: str = METRIC) -> float | None:
        """The fp32 run's score: stored in deltas, else score - delta (the mean delta is exactly new - fp32)."""
        d = self.deltas.get(metric)
        if d is None:
            return None
        return d.fp32 if d.fp32 is not None else (self.score(metric) - d.delta if d.delta is not None else None)

    @property
    def profiles(self) -> dict[str, ProfileResult]:
        """Acceptance profile outcomes by name; {} for older runs and runs with no fp32 to compare against."""
        out = {}
        for name, p in (self.raw.get("profiles") or {}).items():
            p = {"outcome": p} if isinstance(p, str) else p  # W&B summary: profile/<name> = outcome
            rows = [{**c, "ci95": tuple(c["ci95"]) if c.get("ci95") else None} for c in p.get("criteria") or ()]
            crit = tuple(Criterion(**{f: c.get(f) for f in Criterion._fields}) for c in rows)
            out[name] = ProfileResult(name, p["outcome"], p.get("decided_by"), crit)
        return out

    @property
    def slices(self) -> dict[str, SliceInfo]:
        """Query slices by name ("all", auto tags, "category:<value>"); {} for older runs."""
        raw = self.raw.get("slices") or {}
        return {k: SliceInfo(int(v.get("num_queries") or 0), bool(v.get("critical"))) for k, v in raw.items()}

    @property
    def by_category(self) -> dict[str, dict[str, float]]:
        return self.raw.get("by_category") or {}

    @property
    def emb_cos_mean(self) -> float | None:
        return _get(self.raw, "fidelity", "embedding_cosine", "mean")

    @property
    def top10_overlap(self) -> float | None:
        return _get(self.raw, "fidelity", "ranking", "top10_overlap")

    # --- speed and where it ran ---

    @property
    def encode_rate(self) -> float | None:
        """Docs/s of the doc encode; None when the embeddings came from the cache (nothing was timed)."""
        return _get(self.raw, "throughput", "encode_docs_per_s")

    @property
    def throughput(self) -> dict[str, Any]:
        return self.raw.get("throughput") or {}

    @property
    def cpu_threads(self) -> int | None:
        return _get(self.raw, "device", "cpu_threads")

    @property
    def speed_key(self) -> tuple[str, int | None]:
        """(device, threads) the docs were encoded with: timings are comparable only within one key.

        An exported runtime reports what it ran on itself (its threads may differ from torch's)."""
        exported = self.runtime_name != "torch"
        device = (exported and _get(self.raw, "runtime", "device")) or _get(
            self.raw, "device", "encoder", default="unknown"
        )
        threads = (exported and _get(self.raw, "runtime", "threads")) or self.cpu_threads
        return str(device).split(":")[0], threads  # cuda:0 and cuda name the same device kind


def is_complete(run_dir: Path) -> bool:
    """results.json is written last: its presence means the run finished."""
    return (run_dir / RESULTS_FILE).is_file()


def read_run(run_dir: Path) -> RunResult | None:
    """The run in ``run_dir``; None when it has not finished. Raises on an unreadable file
    (json.JSONDecodeError, KeyError, TypeError)."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return None
    return RunResult.of(json.loads(path.read_text()), run_dir)


def from_wandb(config: dict, summary: dict) -> RunResult:
    """A W&B run's config + summary, read as the results.json it was logged from (profiles: outcomes only)."""
    return RunResult.of(results_of(config, summary))


# --- the table writer: Markdown, CSV and aligned plain text from one list of row dicts ---


def markdown_table(columns: Sequence[str], rows: Iterable[Mapping], right: Iterable[str] = ()) -> list[str]:
    """A Markdown table's lines; a row's missing cell is empty; columns in ``right`` are right-aligned."""
    right = set(right)
    lines = ["| " + " | ".join(columns) + " |", "|" + "".join("---:|" if c in right else "---|" for c in columns)]
    return lines + ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]


def csv_table(columns: Sequence[str], rows: Iterable[Mapping]) -> str:
    """CSV text: a row's missing cell is empty, keys outside ``columns`` are left out."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, list(columns), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def text_table(rows: list[dict[str, str]]) -> str:
    """Aligned plain text (a terminal's table): columns in first-seen order over all rows."""
    columns = list(dict.fromkeys(c for r in rows for c in r))
    width = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(width[c]) for c in columns)]
    lines += ["  ".join(r.get(c, "").ljust(width[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def write_markdown(path: Path, columns: Sequence[str], rows: list[Mapping], command: str | None = None) -> str:
    """``path`` holds the table (after a ``Command: `...``` line when given); returns the table's text."""
    table = "\n".join(markdown_table(columns, rows))
    write_atomic(path, [f"Command: `{command}`\n\n" if command else "", table, "\n"])
    return table


def write_csv(path: Path, columns: Sequence[str], rows: list[Mapping]) -> None:
    write_atomic(path, [csv_table(columns, rows)])
