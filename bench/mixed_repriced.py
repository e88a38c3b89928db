"""Mixed precision on another grid than the scan's: keep a sensitivity scan's per-layer drops (its ranking of
layers) but price each width by what the target grid stores, solve the same knapsack as quant=auto, and write
a quant group file to evaluate with ``hydra.searchpath=[file://OUT_DIR] quant=<name>``.

Why: a scan is measured on one grid (say nf g64, 2.25 bits at 2 bits); per-channel k-means stores 2 bits in
2.04-2.17, so at a 2.5 budget it can afford more 3-bit layers than the scan's own grid. The drops are the
scan's, not the target grid's: an approximation, checked by evaluating the result.

    python bench/mixed_repriced.py SCAN.json 2.5 OUT_DIR NAME [--widths 2,3] quant=kmeans quant.granularity=channel ...
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from hydra import compose, initialize_config_dir

from medret.config import register_configs
from medret.quant.apply import as_config, quant_identity
from medret.quant.auto import MEASURES, choose_bits
from medret.quant.registry import scheme

ROOT = Path(__file__).resolve().parents[1]


def repriced(scan: dict, cfg, widths: list[int]) -> dict:
    """The scan with each layer's width priced by the target grid (quantizing a random weight of its shape)."""
    out = dict(scan, bits=widths, layers=[])
    for layer in scan["layers"]:
        n_out, n_in = _shape(layer)
        curve = {}
        for b in widths:
            spec = replace(cfg, bits=b)
            gs = n_in if cfg.granularity == "channel" else cfg.group_size
            state = scheme(cfg.name).quantize(torch.randn(n_out, n_in), spec, gs, None)
            curve[str(b)] = {**layer["curve"][str(b)], "effective_bits": state.effective_bits()}
        out["layers"].append({**layer, "curve": curve})
    return out


def _shape(layer: dict) -> tuple[int, int]:
    # MiniLM-L6: 384 hidden, 1536 intermediate; the scan stores params and type, not the shape
    if layer["type"] == "intermediate.dense":
        return 1536, 384
    if layer["type"] == "output.dense":
        return 384, 1536
    return 384, 384


def main(scan_path: str, target: float, out_dir: str, name: str, widths: list[int], overrides: list[str]) -> None:
    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = as_config(compose("evaluate", overrides).quant)
    scan = json.loads(Path(scan_path).read_text())
    choice = choose_bits(repriced(scan, cfg, widths), target, "fidelity", scan_path)
    counts = {b: list(choice["bits_per_layer"].values()).count(b) for b in widths}
    top = max(counts, key=counts.get)
    layers = {n: {"bits": b} for n, b in choice["bits_per_layer"].items() if b != top}
    concrete = replace(cfg, bits=top, overrides=layers)
    head = (
        f"# bench/mixed_repriced.py: {scan_path} ({MEASURES['fidelity']}) repriced for {cfg.name} "
        f"{cfg.granularity}, target {target}; predicted {choice['predicted_bits_per_param']:.4f} bits/param,"
        f" widths {counts}\n"
    )
    path = Path(out_dir) / "quant" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + yaml.safe_dump(quant_identity(concrete), sort_keys=False))
    print(path, choice["predicted_bits_per_param"], counts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scan")
    parser.add_argument("target_bits", type=float)
    parser.add_argument("out_dir")
    parser.add_argument("name")
    parser.add_argument("--widths", default="2,3,4", help="scanned widths to choose from (default 2,3,4)")
    args, overrides = parser.parse_known_args()
    widths = [int(b) for b in args.widths.split(",")]
    main(args.scan, args.target_bits, args.out_dir, args.name, widths, overrides)
