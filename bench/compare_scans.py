"""Do two sensitivity scans of one model choose alike? Rank correlation of their fidelity drops and the
quant=auto choices each makes at some budgets, on the scan's grid and on another (``--grid``).

    python bench/compare_scans.py REFERENCE.json OTHER.json --targets 3.0 2.5 [--grid nf:channel]
"""

from __future__ import annotations

import argparse
import functools
import json

from scipy.stats import spearmanr

from medret.models.encoder import resolve_model_path
from medret.quant.auto import choose_bits, regrid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference")
    ap.add_argument("other")
    ap.add_argument("--targets", type=float, nargs="+", default=[3.0])
    ap.add_argument("--grid", default=None, help="NAME:GRANULARITY, e.g. nf:channel (quant.grid)")
    args = ap.parse_args()
    a, b = (json.load(open(p)) for p in (args.reference, args.other))

    def drops(scan: dict, bits: str | None = None) -> list[float]:
        return [c["fidelity_drop"] for layer in scan["layers"] for k, c in layer["curve"].items() if bits in (None, k)]

    out = {"points": len(drops(a)), "spearman_pooled": float(spearmanr(drops(a), drops(b)).statistic)}
    out["spearman_per_bits"] = {
        str(w): float(spearmanr(drops(a, str(w)), drops(b, str(w))).statistic) for w in a["bits"]
    }
    path, rev = a["model"]["path"], a["model"]["revision"]
    grids = [None]
    if args.grid:
        name, granularity = args.grid.split(":")
        grids.append({"name": name, "granularity": granularity})
    out["choices"] = []
    for grid in grids:
        scans = [regrid(s, grid, path, rev, functools.partial(resolve_model_path, path)) if grid else s for s in (a, b)]
        for t in args.targets:
            ca, cb = (choose_bits(s, t, "fidelity", "scan")["bits_per_layer"] for s in scans)
            differ = {n: [ca[n], cb[n]] for n in ca if ca[n] != cb[n]}
            out["choices"].append(
                {"grid": grid, "target_bits": t, "layers": len(ca), "same": len(ca) - len(differ), "differ": differ}
            )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
