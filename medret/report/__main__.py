"""python -m medret.report SWEEP_DIR... [--out DIR]: the trade-off table, the decision matrix and PNGs, per data set."""

import argparse
import sys
from pathlib import Path

from medret.errors import InputError
from medret.report import write_report


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m medret.report", description=__doc__)
    ap.add_argument("folders", nargs="*", type=Path, help="sweep or run folders holding results.json files")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: the first folder)")
    ap.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT/GROUP", help="read the runs from W&B (online)")
    args = ap.parse_args()
    if not args.folders and not args.wandb:
        ap.error("give sweep folders or --wandb ENTITY/PROJECT/GROUP")
    try:
        rep, files = write_report(args.folders, args.out, args.wandb)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(rep.by_dataset())
    sets = f"{n} data set" + ("s" if n != 1 else "")  # several: one table section and PNG set each
    print(f"{len(rep.rows)} complete runs over {sets}, {len(rep.partial)} partial; wrote " + ", ".join(map(str, files)))
    for p in rep.partial:
        print(f"partial: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
