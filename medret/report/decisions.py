"""The decision matrix: runs x acceptance profiles, each cell the profile's outcome and the criterion that
decided it ("reject: ndcg@10 on negation"), as Markdown and CSV beside the report's table.

A run without profiles (the fp32 baseline, a run from before profiles, an fp32 export with nothing to compare
against) has empty cells. Outcomes come from results.json["profiles"] through ``medret.results``."""

from __future__ import annotations

from medret.report.collect import Report
from medret.results import RunResult, csv_table, markdown_table

RUN_COLUMNS = ["run", "scheme", "bits", "runtime"]
LEGEND = (
    "Each cell: the profile's outcome on that run; a reject or an inconclusive names the criterion that "
    "decided it (metric on slice; an inconclusive one with about how many queries would decide it). "
    "Empty: the run has no profiles (the fp32 baseline, or a run from before profiles)."
)


def profile_names(results: list[RunResult]) -> list[str]:
    """Every profile any run was judged by, in first-seen order."""
    return list(dict.fromkeys(name for r in results for name in r.profiles))


def matrix_rows(rep: Report) -> list[dict[str, str]]:
    """One row per run: what ran, then one cell per profile ('' where the run has none)."""
    names = profile_names(rep.results)
    rows = []
    for row, res in zip(rep.rows, rep.results):
        cells = {n: p.label() for n, p in res.profiles.items()}
        head = {c: row.get(c, "") for c in RUN_COLUMNS}
        rows.append({**head, **{n: cells.get(n, "") for n in names}, "dataset": res.dataset})
    return rows


def _counts(rows: list[dict[str, str]], names: list[str]) -> list[str]:
    """Per profile: how many runs it accepts, rejects, leaves inconclusive."""
    out = []
    for n in names:
        outcomes = [r[n].split(":")[0] for r in rows if r[n]]
        tally = ", ".join(f"{outcomes.count(o)} {o}" for o in ("accept", "reject", "inconclusive") if o in outcomes)
        out.append(f"- {n}: {tally or 'no run judged'}")
    return out


def decision_markdown(rep: Report) -> str:
    groups = rep.by_dataset()
    lines = [f"# Decision matrix: {rep.dataset or 'no complete runs'}", "", LEGEND]
    if not groups:
        lines += ["", *markdown_table(RUN_COLUMNS, [])]
    for name, g in groups.items():
        names = profile_names(g.results)
        rows = matrix_rows(g)
        if len(groups) > 1:
            lines += ["", f"## {name}"]
        lines += ["", *markdown_table([*RUN_COLUMNS, *names], rows)]
        if names:
            lines += ["", *_counts(rows, names)]
        else:
            lines += ["", "No run of this data set was judged by a profile (no fp32 baseline to compare against)."]
    return "\n".join(lines) + "\n"


def decision_csv(rep: Report) -> str:
    names = profile_names(rep.results)
    return csv_table([*RUN_COLUMNS, *names, "dataset"], matrix_rows(rep))
