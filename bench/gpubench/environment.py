"""The environment a run reports: versions, the GPU, the optional libraries and the probes its skip
reasons rely on (ONNX Runtime providers, faiss GPUs, the bitsandbytes native library)."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from gpubench.variants import one_line

# import name -> distributions that provide it, first match wins
OPTIONAL = [
    ("bitsandbytes", ["bitsandbytes"]),
    ("torchao", ["torchao"]),
    ("onnxruntime", ["onnxruntime-gpu", "onnxruntime"]),
    ("onnx", ["onnx"]),
    ("onnxscript", ["onnxscript"]),
    ("faiss", ["faiss-gpu-cu12", "faiss-gpu", "faiss-cpu"]),
    ("cupy", ["cupy-cuda13x", "cupy-cuda12x", "cupy"]),
    ("triton", ["triton"]),
    ("sentence_transformers", ["sentence-transformers"]),
    ("accelerate", ["accelerate"]),
    ("peft", ["peft"]),
    ("scipy", ["scipy"]),
    ("safetensors", ["safetensors"]),
    ("tokenizers", ["tokenizers"]),
]


def dist_version(*names: str) -> str | None:
    for n in names:
        with contextlib.suppress(md.PackageNotFoundError):
            return f"{n} {md.version(n)}"
    return None


def core_versions(device: str) -> dict:
    import numpy as np
    import torch
    import transformers

    env: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = f"{p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}"
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    with contextlib.suppress(Exception):
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if r.returncode == 0:
            env["nvidia_smi"] = r.stdout.strip()
    return env


def optional_libraries() -> dict:
    opt = {}
    for mod, dists in OPTIONAL:
        v = dist_version(*dists)
        if v is None and importlib.util.find_spec(mod) is None:
            opt[mod] = "absent"
            continue
        opt[mod] = v or "importable (no dist metadata)"
    return opt


def runtime_probes() -> dict:
    """What the table's skip reasons rely on; an import that fails is reported, not raised."""
    env: dict = {}
    try:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    except Exception as e:
        env["onnxruntime_providers"] = f"import failed: {one_line(e)}"
    try:
        import faiss

        env["faiss_num_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception as e:
        env["faiss_num_gpus"] = f"import failed: {one_line(e)}"
    try:
        import bitsandbytes.cextension as bce

        env["bitsandbytes_native_lib"] = Path(getattr(getattr(bce.lib, "_lib", None), "_name", "?")).name
    except Exception as e:
        env["bitsandbytes_native_lib"] = f"import failed: {one_line(e)}"
    return env


def environment(device: str) -> dict:
    env = core_versions(device)
    env["optional"] = optional_libraries()
    env.update(runtime_probes())
    env["gcc"] = shutil.which("gcc") or shutil.which("cc")
    hub = Path.home() / ".cache/huggingface/hub"
    env["HF_HOME cache with MiniLM"] = any("MiniLM" in p.name for p in hub.glob("models--*")) if hub.is_dir() else False
    return env
