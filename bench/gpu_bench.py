"""GPU speed/size benchmark of the quantization variants and the index back ends, in one bounded run.

    bash bench/gpu.sh                                   # on the GPU machine (installs carried .whl/ first)
    .venv/bin/python bench/gpu_bench.py --device cpu --smoke   # here: tiny sizes, catches bugs

Needs torch, transformers, numpy and, per variant, optional libraries (bitsandbytes, torchao, onnxruntime,
faiss). It imports medret from this repository (no install needed) for what it measures of medret itself:
the bitsandbytes layers (medret.quant.bnb), their byte count (medret.quant.sizes) and the medret_* variants;
medret's quant package imports hydra-core and omegaconf, which bench/gpu.sh carries in .whl/. The cast,
torchao, ONNX Runtime and index rows never import medret.

Encoder: a BERT with all-MiniLM-L6-v2's exact architecture and tokenizer (bench/minilm_arch/, no
weights: the 91 MB weights cannot travel), RANDOM weights with a fixed seed. Speed does not depend on
weight values; the cosine against fp32 on the same random model measures the numeric fidelity of each
variant's kernels, not retrieval quality. Index: 1M x 384 synthetic unit vectors made on the device.

Every variant runs in its own subprocess with a hard timeout (a crash, a hang or a poisoned CUDA
context costs one row, reported as "failed: <reason>"), and the run as a whole has a time budget:
variants run most-important first, and whatever no longer fits is reported as skipped. The Markdown
table and the JSON are rewritten after every variant, so a run cut short still leaves its rows.
The work is done by the gpubench package beside this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from gpubench.environment import environment
from gpubench.inputs import prepare
from gpubench.output import write_outputs
from gpubench.variants import NAMES, SPEC, sizes
from gpubench.workers import run_all, worker

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to test the script")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results" / "gpu"))
    ap.add_argument("--total-budget", type=float, help="seconds for all variants together (420; 1200 with --smoke)")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--no-cuda-skip", action="store_true", help=argparse.SUPPRESS)  # test failure rows on CPU
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    return ap.parse_args()


def selected(only: str) -> list[str]:
    if not only:
        return list(NAMES)
    want = [s.strip() for s in only.split(",") if s.strip()]
    bad = [s for s in want if s not in SPEC]
    if bad:
        sys.exit(f"unknown variants {bad}; known: {NAMES}")
    return [n for n in NAMES if n in want]


def main() -> None:
    args = parse_args()
    sys.path.insert(1, str(HERE.parent))  # medret from the repo root: the device machine has no medret install
    if args.worker:
        worker(args.worker, Path(args.workdir))
        return
    t_start = time.perf_counter()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but torch.cuda.is_available() is False (use --device cpu --smoke to test here)")
    env = environment(args.device)
    print("== environment\n" + json.dumps(env, indent=1, default=str), flush=True)
    budget = args.total_budget if args.total_budget is not None else (1200.0 if args.smoke else 420.0)
    cfg = {**sizes(args.smoke), "device": args.device, "smoke": args.smoke, "no_cuda_skip": args.no_cuda_skip}
    wd = Path(tempfile.mkdtemp(prefix="medret-gpubench-"))
    (wd / "config.json").write_text(json.dumps(cfg))
    prep = prepare(wd, cfg)
    print("== prepared " + json.dumps(prep), flush=True)
    out = Path(args.out)
    names = selected(args.only)
    rows: dict = {}

    def write(done: bool) -> None:
        write_outputs(out, env, prep, cfg, rows, time.perf_counter() - t_start, done=done)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # outer `timeout`: keep the rows done so far
    try:
        run_all(names, rows, wd, t_start + budget, budget, write)
    except SystemExit:
        write(done=False)
        print(f"interrupted; partial results in {out}", flush=True)
        raise
    write(done=True)
    if not args.keep_workdir:
        shutil.rmtree(wd, ignore_errors=True)
    else:
        print(f"workdir kept: {wd}")
    print("\n" + (out / "gpu_bench.md").read_text())
    print(f"wrote {out / 'gpu_bench.md'} and {out / 'gpu_bench.json'}")


if __name__ == "__main__":
    main()
