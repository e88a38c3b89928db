"""A sensitivity scan narrowed to some of its widths, for quant=auto to choose among those only.

    python bench/scan_widths.py SCAN.json OUT.json 3,4

e.g. a 3.25-bit budget over 3/4 bits without the 2-bit widths the scan also measured (GPTQ recovers much less at
2 bits than the scan's round-to-nearest drops predict). The file keeps the scan's format, model and dev set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medret.storage import write_atomic


def narrowed(scan: dict, widths: list[int]) -> dict:
    missing = sorted(set(widths) - {int(b) for b in scan["bits"]})
    if missing:
        raise SystemExit(f"error: the scan measured widths {scan['bits']}, not {missing}")
    keep = [str(b) for b in widths]
    layers = [{**layer, "curve": {b: layer["curve"][b] for b in keep}} for layer in scan["layers"]]
    return {**scan, "bits": widths, "layers": layers}


if __name__ == "__main__":
    src, out, widths = sys.argv[1], sys.argv[2], [int(b) for b in sys.argv[3].split(",")]
    write_atomic(Path(out), [json.dumps(narrowed(json.loads(Path(src).read_text()), widths), indent=1)])
