"""GPU speed/size benchmark of the quantization variants and the index back ends, in one bounded run.

    bash bench/gpu.sh                                   # on the GPU machine (installs carried .whl/ first)
    .venv/bin/python bench/gpu_bench.py --device cpu --smoke   # here: tiny sizes, catches bugs

Standalone on purpose: imports only torch, transformers, numpy and optional libraries (bitsandbytes,
torchao, onnxruntime, faiss); never medret, so it runs where hydra/omegaconf/wandb are missing.

Encoder: a BERT with all-MiniLM-L6-v2's exact architecture and tokenizer (bench/minilm_arch/, no
weights: the 91 MB weights cannot travel), RANDOM weights with a fixed seed. Speed does not depend on
weight values; the cosine against fp32 on the same random model measures the numeric fidelity of each
variant's kernels, not retrieval quality. Index: 1M x 384 synthetic unit vectors made on the device.

Every variant runs in its own subprocess with a hard timeout (a crash, a hang or a poisoned CUDA
context costs one row, reported as "failed: <reason>"), and the run as a whole has a time budget:
variants run most-important first, and whatever no longer fits is reported as skipped. The Markdown
table and the JSON are rewritten after every variant, so a run cut short still leaves its rows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCH = HERE / "minilm_arch"
MiB = 2**20

# carried-wheel facts, checked on PyPI when this script was written (shown in the table notes)
ORT_GPU_NOTE = (
    "onnxruntime-gpu 1.31.1 cp312 manylinux wheel is 243.7 MiB (> 64 MiB carry limit), so it cannot be carried"
)
FAISS_GPU_NOTE = (
    "faiss-gpu-cu12 1.14.1.post1 cp312 wheel is 46.2 MiB but links libcublas.so.12/libcudart.so.12 "
    "(nvidia-cublas-cu12 wheel 554 MiB); the device has CUDA 13 only, and no faiss-gpu-cu13 exists on PyPI"
)

# name, section, label, needs CUDA, hard timeout (s); listed in run order (most important first)
VARIANTS = [
    ("fp32", "enc", "fp32 (reference)", False, 120),
    ("fp16", "enc", "fp16 cast (whole model)", False, 90),
    ("bf16", "enc", "bf16 cast (whole model)", False, 90),
    ("fp32_autocast16", "enc", "fp32 weights + fp16 autocast (medret's GPU default)", False, 90),
    ("bnb_int8", "enc", "bnb int8 Linear8bitLt (threshold 6.0), rest fp16", False, 120),
    ("bnb_nf4_fp16", "enc", "bnb nf4 Linear4bit (blocksize 64), compute fp16, rest fp16", False, 100),
    ("bnb_nf4_bf16", "enc", "bnb nf4 Linear4bit (blocksize 64), compute bf16, rest bf16", False, 100),
    ("ao_int8wo", "enc", "torchao int8 weight-only (bf16 activations), eager", False, 100),
    ("ao_int4wo", "enc", "torchao int4 weight-only g128 tile_packed_to_4d (bf16 act.), eager", True, 100),
    ("ort_cuda", "enc", "ONNX Runtime CUDA EP (fp32 graph)", True, 120),
    ("idx_torch_fp32", "idx", "torch exact fp32 (matmul + topk)", False, 90),
    ("idx_faiss_gpu_flat", "idx", "faiss-gpu Flat (IP)", True, 90),
    ("idx_faiss_gpu_ivfpq", "idx", "faiss-gpu IVF-PQ", True, 120),
    ("idx_torch_fp16", "idx", "torch exact fp16 (matmul + topk)", False, 90),
    ("idx_faiss_cpu_ivfpq", "idx", "faiss-cpu IVF-PQ (all CPU cores; CPU reference)", False, 150),
    ("bnb_int8_fp32rest", "enc", "bnb int8 (threshold 6.0), rest fp32 (= medret conf quant/bnb_int8)", False, 120),
    ("bnb_nf4_fp32", "enc", "bnb nf4, compute fp32, rest fp32 (= medret conf quant/bnb_nf4)", False, 120),
    ("fp32_tf32", "enc", "fp32 with TF32 matmuls allowed", True, 90),
    ("ao_int8wo_compile", "enc", "torchao int8 weight-only (bf16 act.) + torch.compile", True, 150),
    ("fp16_compile", "enc", "fp16 cast + torch.compile", True, 150),
    ("ort_cpu", "enc", "ONNX Runtime CPU EP (fp32, all cores, subset of texts)", False, 120),
    # medret's own quantization code on the device (medret.quant.apply), fp16 autocast as evaluate runs it on CUDA
    (
        "medret_nf4_once",
        "enc",
        "medret nf 4-bit g64, linears + word embeddings, decoded once, fp16 autocast",
        False,
        120,
    ),
    (
        "medret_nf4_per_forward",
        "enc",
        "medret nf 4-bit g64, linears + word embeddings, decoded per forward, fp16 autocast",
        False,
        120,
    ),
    (
        "medret_gptq_nf3",
        "enc",
        "medret GPTQ over nf 3-bit g64 (256 calibration texts), decoded once, fp16 autocast",
        False,
        180,
    ),
]
SPEC = {v[0]: v for v in VARIANTS}


def sizes(smoke: bool) -> dict:
    if smoke:
        return dict(
            n_texts=96,
            batch=16,
            max_length=64,
            words=(36, 61),
            n_cos=16,
            ort_cpu_texts=48,
            n_vec=20_000,
            n_q=200,
            k=100,
            nlist=32,
            pq_m=48,
            nprobe=16,
            n_train=5_000,
            n_centres=200,
            q_batch=100,
            soft_s=6.0,
        )
    return dict(
        n_texts=20_480,
        batch=256,
        max_length=256,
        words=(150, 251),
        n_cos=512,
        ort_cpu_texts=1024,
        n_vec=1_000_000,
        n_q=10_000,
        k=100,
        nlist=4096,
        pq_m=48,
        nprobe=16,
        n_train=100_000,
        n_centres=10_000,
        q_batch=1024,
        soft_s=25.0,
    )


def one_line(e: BaseException | str, limit: int = 220) -> str:
    s = str(e) if isinstance(e, str) else f"{type(e).__name__}: {e}"
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------- env
def dist_version(*names: str) -> str | None:
    for n in names:
        with contextlib.suppress(md.PackageNotFoundError):
            return f"{n} {md.version(n)}"
    return None


def environment(device: str) -> dict:
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
    opt = {}
    for mod, dists in [
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
    ]:
        v = dist_version(*dists)
        if v is None and importlib.util.find_spec(mod) is None:
            opt[mod] = "absent"
            continue
        opt[mod] = v or "importable (no dist metadata)"
    env["optional"] = opt
    # runtime probes that the table's skip reasons rely on
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
    env["gcc"] = shutil.which("gcc") or shutil.which("cc")
    env["HF_HOME cache with MiniLM"] = (
        any("MiniLM" in p.name for p in (Path.home() / ".cache/huggingface/hub").glob("models--*"))
        if (Path.home() / ".cache/huggingface/hub").is_dir()
        else False
    )
    return env


# ------------------------------------------------------------------------------------ shared inputs
def prepare(wd: Path, cfg: dict) -> dict:
    """Seeded random MiniLM-architecture weights + pre-tokenized synthetic texts, written once to wd."""
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig.from_pretrained(ARCH), add_pooling_layer=False).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(wd / "model.safetensors"))

    tok = AutoTokenizer.from_pretrained(ARCH)
    vocab = [w for w in tok.get_vocab() if w.isalpha() and w.isascii() and len(w) > 1]
    rng = np.random.default_rng(0)
    n = cfg["n_texts"]
    lens = rng.integers(*cfg["words"], size=n)  # one token per word, + [CLS] [SEP]: ~200 of max_length 256
    words = np.array(vocab)
    texts = [" ".join(words[rng.integers(0, len(words), size=int(L))]) for L in lens]
    t0 = time.perf_counter()
    enc = tok(texts, padding="max_length", truncation=True, max_length=cfg["max_length"], return_tensors="np")
    tok_s = time.perf_counter() - t0
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    np.save(wd / "ids.npy", ids)
    np.save(wd / "mask.npy", mask)
    (wd / "calibration.json").write_text(json.dumps(texts[:256]))  # medret_gptq_nf3's calibration texts
    return {
        "tokenizer_docs_per_s": round(n / tok_s, 1),
        "mean_tokens": round(float(mask.sum(1).mean()), 1),
        "max_tokens": int(mask.sum(1).max()),
        "fp32_param_MB": round(sum(p.numel() * 4 for p in model.parameters()) / MiB, 2),
    }


# --------------------------------------------------------------------------------------- helpers
def tensor_bytes(t) -> int:
    """Storage bytes of a (possibly quantized / tensor-subclass) tensor, including its scales."""
    import torch

    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names if isinstance(getattr(t, n), torch.Tensor))
    b = t.numel() * t.element_size()
    qs = getattr(t, "quant_state", None)  # bitsandbytes Params4bit: absmax (+ nested stats), code
    if qs is not None:
        with contextlib.suppress(Exception):
            b += sum(v.numel() * v.element_size() for v in qs.as_dict(packed=True).values() if torch.is_tensor(v))
    scb = getattr(t, "SCB", None)  # bitsandbytes Int8Params: per-row scales
    if torch.is_tensor(scb):
        b += scb.numel() * scb.element_size()
    return b


def model_bytes(model) -> tuple[int, int]:
    """(all parameters, parameters of the encoder's Linear-like layers)."""
    total = sum(tensor_bytes(p) for p in model.parameters())
    lin = 0
    for name, mod in model.named_modules():
        if name.startswith("encoder.") and hasattr(mod, "weight") and hasattr(mod, "in_features"):
            lin += sum(tensor_bytes(p) for p in mod.parameters(recurse=False))
    return total, lin


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def load_fp32_model(wd: Path, attn: str = "sdpa"):
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    cfg = BertConfig.from_pretrained(ARCH)
    with contextlib.suppress(Exception):
        cfg._attn_implementation = attn
    model = BertModel(cfg, add_pooling_layer=False).eval()
    model.load_state_dict(load_file(str(wd / "model.safetensors")), strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def bnb_swap(model, kind: str, compute_dtype, rest_dtype, dev):
    """Replace the encoder's nn.Linear layers by bitsandbytes layers (as medret.quant.bnb does)."""
    import bitsandbytes as bnb
    from torch import nn

    fp32 = {
        n: (m.weight.detach().float().clone(), None if m.bias is None else m.bias.detach().float().clone())
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    }
    model.to(rest_dtype)
    for name, (w, b) in fp32.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        if kind == "int8":
            new = bnb.nn.Linear8bitLt(
                old.in_features, old.out_features, bias=b is not None, has_fp16_weights=False, threshold=6.0
            )
            new.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(
                old.in_features,
                old.out_features,
                bias=b is not None,
                compute_dtype=compute_dtype,
                quant_type="nf4",
                compress_statistics=False,
            )
            new.weight = bnb.nn.Params4bit(
                w, requires_grad=False, quant_type="nf4", blocksize=64, compress_statistics=False
            )
        if b is not None:
            new.bias = nn.Parameter(b.to(rest_dtype), requires_grad=False)
        setattr(parent, child, new.to(dev))  # the move to the device is what quantizes in bitsandbytes
    return model.to(dev)


def torchao_quantize(model, bits: int):
    import torchao
    from torchao.quantization import quantize_

    if bits == 8:
        try:
            from torchao.quantization import Int8WeightOnlyConfig
        except ImportError:  # torchao < 0.10
            from torchao.quantization import int8_weight_only as Int8WeightOnlyConfig
        try:
            cfg = Int8WeightOnlyConfig(version=2)
        except TypeError:
            cfg = Int8WeightOnlyConfig()
    else:
        from torchao.quantization import Int4WeightOnlyConfig

        try:
            from torchao.quantization import Int4PackingFormat

            fmt = Int4PackingFormat.TILE_PACKED_TO_4D
        except ImportError:
            fmt = "tile_packed_to_4d"
        try:  # torch's own tinygemm kernel; the default "plain" format needs the mslk/fbgemm package
            cfg = Int4WeightOnlyConfig(group_size=128, int4_packing_format=fmt)
        except TypeError:
            cfg = Int4WeightOnlyConfig(group_size=128)
    quantize_(model, cfg)
    return f"torchao {torchao.__version__}, {type(cfg).__name__}"


def medret_quantize(name: str, model, wd: Path, cfg: dict, dev):
    """medret's own path (quantize_model, then decode once unless per_forward): returns the model, the packed
    whole-model and Linear bytes (what a saved model holds; decoded-once weights are resident in fp32), a note."""
    sys.path.insert(0, str(HERE.parent))
    from transformers import AutoTokenizer

    from medret.config import QuantConfig
    from medret.quant.apply import decode_once, quantize_model
    from medret.quant.sizes import bytes_by_part

    tok = AutoTokenizer.from_pretrained(ARCH)
    if name == "medret_gptq_nf3":
        q = QuantConfig(name="nf", bits=3, group_size=64, method="gptq", calibration_texts=256)
        calibration = json.loads((wd / "calibration.json").read_text())
    else:
        q = QuantConfig(name="nf", bits=4, group_size=64, embeddings=True)
        calibration = None
    model.to(dev)
    sync(dev)
    t0 = time.perf_counter()
    rep = quantize_model(model, tok, q, calibration, "mean", cfg["max_length"])
    sync(dev)
    quant_s = time.perf_counter() - t0
    parts = bytes_by_part(model)
    n = 0 if name.endswith("per_forward") else decode_once(model)
    resident = sum(bytes_by_part(model).values())
    note = (
        f"medret quantize {quant_s:.1f} s on {dev.type}, {rep['effective_bits_per_param']:.2f} bits/param; "
        f"{n} modules decoded once, resident {resident / MiB:.1f} MB"
    )
    return model, sum(parts.values()), parts["linear"], note


# ------------------------------------------------------------------------------------- encoder work
def run_encoder(name: str, wd: Path, cfg: dict, dev) -> dict:
    import torch
    import torch.nn.functional as F

    note = ""
    autocast = None
    model = load_fp32_model(wd)
    if name == "fp32":
        model.to(dev)
    elif name == "fp32_tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        model.to(dev)
    elif name in ("fp16", "fp16_compile"):
        model.to(dev, torch.float16)
    elif name == "bf16":
        model.to(dev, torch.bfloat16)
    elif name == "fp32_autocast16":
        model.to(dev)
        autocast = torch.float16
    elif name in ("bnb_int8", "bnb_int8_fp32rest"):
        import bitsandbytes as bnb

        rest = torch.float16 if name == "bnb_int8" else torch.float32
        model = bnb_swap(model, "int8", None, rest, dev)
        note = f"bitsandbytes {bnb.__version__}"
    elif name.startswith("bnb_nf4"):
        import bitsandbytes as bnb

        dt_ = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name.rsplit("_", 1)[1]]
        model = bnb_swap(model, "nf4", dt_, dt_, dev)
        note = f"bitsandbytes {bnb.__version__}"
    elif name.startswith("ao_int"):
        model.to(dev, torch.bfloat16)
        note = torchao_quantize(model, 8 if name.startswith("ao_int8") else 4)
    elif name.startswith("medret_"):
        model, total_b, lin_b, note = medret_quantize(name, model, wd, cfg, dev)
        autocast = torch.float16 if dev.type == "cuda" else None
    else:
        raise ValueError(name)
    if not name.startswith("medret_"):
        total_b, lin_b = model_bytes(model)
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    note = f"attn {attn}" + (f"; {note}" if note else "")
    if name.endswith("_compile"):
        model = torch.compile(model, dynamic=False)
        note = (note + "; " if note else "") + "torch.compile(dynamic=False), compile time in warm-up"

    def encode(ids, mask):
        ctx = torch.autocast(dev.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(torch.float32)
        return F.normalize((h.float() * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)

    return time_encoder(name, encode, wd, cfg, dev, total_b, lin_b, note)


def time_encoder(name, encode, wd, cfg, dev, total_b, lin_b, note) -> dict:
    import numpy as np
    import torch

    ids = torch.from_numpy(np.load(wd / "ids.npy")).to(dev)
    mask = torch.from_numpy(np.load(wd / "mask.npy")).to(dev)
    bs, n_all = cfg["batch"], ids.shape[0]
    t_start = time.perf_counter()
    # warm-up: first batch (lazy init, compile, bnb state), then a timed second batch for the estimate
    encode(ids[:bs], mask[:bs])
    sync(dev)
    t0 = time.perf_counter()
    encode(ids[bs : 2 * bs], mask[bs : 2 * bs])
    sync(dev)
    t_batch = time.perf_counter() - t0
    # the fidelity subset (first n_cos texts), compared with the fp32 worker's embeddings
    n_cos = min(cfg["n_cos"], n_all)
    emb = torch.cat([encode(ids[s : s + bs], mask[s : s + bs]) for s in range(0, n_cos, bs)])[:n_cos].cpu().numpy()
    np.save(wd / f"emb_{name}.npy", emb)
    fid = fidelity(wd, emb)
    # how many texts fit: at most all of them; fewer when one pass would not fit in a third of the soft budget
    n_batches = n_all // bs
    fit = max(1, int(cfg["soft_s"] / 3 / max(t_batch, 1e-6)))
    n_batches = min(n_batches, fit)
    n = n_batches * bs
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    t_loop = time.perf_counter()
    for _ in range(3):
        sync(dev)
        t0 = time.perf_counter()
        for i in range(n_batches):
            encode(ids[i * bs : (i + 1) * bs], mask[i * bs : (i + 1) * bs])
        sync(dev)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_loop + times[-1] > cfg["soft_s"] * 1.5:
            break  # a further pass would blow this variant's budget: report fewer repeats
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / MiB if dev.type == "cuda" else None
    return {
        "status": "ok",
        "docs_per_s": round(n / med, 1),
        "n_texts": n,
        "repeats": len(times),
        "times_s": [round(t, 4) for t in times],
        "weights_MB": round(total_b / MiB, 2),
        "linear_MB": round(lin_b / MiB, 2),
        "peak_gpu_MB": None if peak is None else round(peak, 1),
        "warmup_s": round(t_loop - t_start, 2),
        "note": note,
        **fid,
    }


def fidelity(wd: Path, emb) -> dict:
    import numpy as np

    ref_p = wd / "emb_fp32.npy"
    if not ref_p.is_file():
        return {}
    ref = np.load(ref_p).astype(np.float64)
    e = emb.astype(np.float64)
    cos = (ref * e).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(e, axis=1))
    mu = ref.mean(0)  # random-weight embeddings share a large common direction: centred cosine removes it
    rc, ec = ref - mu, e - mu
    ccos = (rc * ec).sum(1) / (np.linalg.norm(rc, axis=1) * np.linalg.norm(ec, axis=1))
    return {
        "cos_mean": round(float(cos.mean()), 6),
        "cos_min": round(float(cos.min()), 6),
        "cos_centred_mean": round(float(ccos.mean()), 5),
    }


def run_ort(name: str, wd: Path, cfg: dict, dev) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    provs = ort.get_available_providers()
    want = "CUDAExecutionProvider" if name == "ort_cuda" else "CPUExecutionProvider"
    if want not in provs:
        return {
            "status": "skipped",
            "reason": f"onnxruntime {ort.__version__} has no {want} (providers: {', '.join(provs)}); {ORT_GPU_NOTE}",
        }

    class Pooled(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)

    path = wd / "minilm_arch_random.onnx"
    if not path.is_file():
        ids = torch.from_numpy(np.load(wd / "ids.npy")[:2])
        mask = torch.from_numpy(np.load(wd / "mask.npy")[:2])
        model = Pooled(load_fp32_model(wd, attn="eager")).eval()
        kw = dict(
            input_names=["input_ids", "attention_mask"],
            output_names=["emb"],
            opset_version=17,
            dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, "emb": {0: "b"}},
        )
        try:
            torch.onnx.export(model, (ids, mask), str(path), dynamo=False, **kw)
        except TypeError:  # torch without the dynamo argument
            torch.onnx.export(model, (ids, mask), str(path), **kw)
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    providers = [want] if want == "CPUExecutionProvider" else [(want, {"device_id": 0}), "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=providers)
    if sess.get_providers()[0] != want:
        return {"status": "failed", "reason": f"session fell back to {sess.get_providers()}"}

    ids = np.load(wd / "ids.npy")
    mask = np.load(wd / "mask.npy")
    if name == "ort_cpu":
        ids, mask = ids[: cfg["ort_cpu_texts"]], mask[: cfg["ort_cpu_texts"]]

    def encode(i, m):
        return sess.run(
            ["emb"],
            {
                "input_ids": i.cpu().numpy() if torch.is_tensor(i) else i,
                "attention_mask": m.cpu().numpy() if torch.is_tensor(m) else m,
            },
        )[0]

    # reuse the generic timing loop with numpy inputs via a tiny adapter (inputs stay host-side: ORT copies them)
    wd2 = wd / f"ort_{name}"
    wd2.mkdir(exist_ok=True)
    np.save(wd2 / "ids.npy", ids)
    np.save(wd2 / "mask.npy", mask)
    for f in ("emb_fp32.npy",):
        if (wd / f).is_file():
            shutil.copy(wd / f, wd2 / f)
    cpu = torch.device("cpu")
    r = time_encoder(
        name,
        lambda i, m: torch.from_numpy(encode(i, m)),
        wd2,
        cfg,
        cpu,
        path.stat().st_size,
        0,
        f"onnxruntime {ort.__version__}, {sess.get_providers()[0]}, "
        f"TorchScript exporter opset 17; weights_MB = .onnx file size",
    )
    r["linear_MB"] = None
    if name == "ort_cuda":
        r["note"] += "; host numpy in/out per batch"
    return r


# --------------------------------------------------------------------------------------- index work
def make_vectors(cfg: dict, dev):
    """Clustered synthetic unit vectors (database and queries from the same mixture), seeded, on dev."""
    import torch

    g = torch.Generator(device=dev).manual_seed(1234)
    d, n, nq, nc = 384, cfg["n_vec"], cfg["n_q"], cfg["n_centres"]
    centres = torch.randn(nc, d, generator=g, device=dev)

    def draw(m):
        out = torch.empty(m, d, device=dev)
        for s in range(0, m, 262_144):
            e = min(m, s + 262_144)
            c = torch.randint(0, nc, (e - s,), generator=g, device=dev)
            out[s:e] = torch.nn.functional.normalize(centres[c] + torch.randn(e - s, d, generator=g, device=dev), dim=1)
        return out

    return draw(n), draw(nq)


def torch_topk(x, q, k: int, qb: int):
    import torch

    vals, idx = [], []
    for s in range(0, q.shape[0], qb):
        v, i = (q[s : s + qb] @ x.T).topk(k, dim=1)
        vals.append(v)
        idx.append(i)
    return torch.cat(vals), torch.cat(idx)


def recall(gt, found, k: int) -> float:
    import numpy as np

    gt, found = np.asarray(gt)[:, :k], np.asarray(found)[:, :k]
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(gt, found))
    return round(hits / (k * len(gt)), 4)


def run_index(name: str, wd: Path, cfg: dict, dev) -> dict:
    import numpy as np
    import torch

    k, qb = cfg["k"], cfg["q_batch"]
    if name.startswith("idx_faiss"):
        try:
            import faiss
        except ImportError as e:
            return {"status": "skipped", "reason": f"faiss not importable ({one_line(e)}); {FAISS_GPU_NOTE}"}
        if "gpu" in name and (not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0):
            return {
                "status": "skipped",
                "reason": f"installed faiss {faiss.__version__} has no GPU support; {FAISS_GPU_NOTE}",
            }
    x, q = make_vectors(cfg, dev)
    sync(dev)
    _, gt = torch_topk(x, q, k, qb)  # fp32 exact ground truth, on dev
    gt = gt.cpu().numpy()
    xh, qh = x.cpu().numpy(), q.cpu().numpy()
    del x
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out: dict = {"status": "ok", "n_vectors": xh.shape[0], "n_queries": qh.shape[0], "k": k}

    def timed_search(fn):
        fn()  # warm-up
        ts = []
        for _ in range(3):
            sync(dev)
            t0 = time.perf_counter()
            res = fn()
            sync(dev)
            ts.append(time.perf_counter() - t0)
        return res, statistics.median(ts)

    if name.startswith("idx_torch"):
        half = name.endswith("fp16")
        sync(dev)
        t0 = time.perf_counter()
        xd = torch.from_numpy(xh).to(dev)
        if half:
            xd = xd.half()
        sync(dev)
        out["build_s"] = round(time.perf_counter() - t0, 3)
        qd = torch.from_numpy(qh).to(dev)
        qd = qd.half() if half else qd
        (_, found), t = timed_search(lambda: torch_topk(xd, qd, k, qb))
        found = found.cpu().numpy()
        out["index_MB"] = round(xd.numel() * xd.element_size() / MiB, 1)
        out["note"] = f"query batch {qb}; build = host->device copy" + (" + fp16 cast" if half else "")
    else:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        d = xh.shape[1]
        gpu = "gpu" in name
        if name.endswith("flat"):
            index = faiss.IndexFlatIP(d)
            desc = "Flat"
        else:
            desc = f"IVF{cfg['nlist']},PQ{cfg['pq_m']}"
            index = faiss.index_factory(d, desc, faiss.METRIC_INNER_PRODUCT)
        if gpu:
            res = faiss.StandardGpuResources()
            co = faiss.GpuClonerOptions()
            co.useFloat16 = not name.endswith("flat")  # IVF-PQ: fp16 lookup tables; Flat stays exact fp32
            index = faiss.index_cpu_to_gpu(res, 0, index, co)
        t0 = time.perf_counter()
        if not index.is_trained:
            index.train(np.ascontiguousarray(xh[: cfg["n_train"]]))
        index.add(xh)
        sync(dev)
        out["build_s"] = round(time.perf_counter() - t0, 3)
        if "ivf" in name:
            if gpu:
                faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", cfg["nprobe"])
            else:
                faiss.extract_index_ivf(index).nprobe = cfg["nprobe"]
            desc += f", nprobe {cfg['nprobe']}, trained on {min(cfg['n_train'], len(xh)):,}"
        (_, found), t = timed_search(lambda: index.search(qh, k))
        with contextlib.suppress(Exception):
            cpu_index = faiss.index_gpu_to_cpu(index) if gpu else index
            out["index_MB"] = round(len(faiss.serialize_index(cpu_index)) / MiB, 1)
        out["note"] = f"faiss {faiss.__version__} {desc}" + (
            f", {faiss.omp_get_max_threads()} threads" if not gpu else ""
        )
    out["search_s"] = round(t, 4)
    out["qps"] = round(qh.shape[0] / t, 1)
    out["recall@10"] = recall(gt, found, 10)
    out["recall@100"] = recall(gt, found, min(100, k))
    if dev.type == "cuda":
        out["peak_gpu_MB"] = round(torch.cuda.max_memory_allocated() / MiB, 1)
    return out


# --------------------------------------------------------------------------------------- worker/main
def worker(name: str, wd: Path) -> None:
    cfg = json.loads((wd / "config.json").read_text())
    res_p = wd / f"result_{name}.json"
    try:
        import torch

        dev = torch.device(cfg["device"])
        _, section, _, cuda_only, _ = SPEC[name]
        if dev.type != "cuda" and cuda_only and not cfg.get("no_cuda_skip"):
            res = {"status": "skipped", "reason": "needs CUDA"}
        elif section == "idx":
            res = run_index(name, wd, cfg, dev)
        elif name.startswith("ort_"):
            res = run_ort(name, wd, cfg, dev)
        else:
            res = run_encoder(name, wd, cfg, dev)
    except ModuleNotFoundError as e:
        traceback.print_exc()
        res = {"status": "skipped", "reason": f"not installed: {e.name}"}
    except BaseException as e:  # noqa: BLE001 - every failure becomes a row
        traceback.print_exc()
        res = {"status": "failed", "reason": one_line(e)}
    res_p.write_text(json.dumps(res))


def run_worker(name: str, wd: Path, timeout: float) -> dict:
    log = wd / f"log_{name}.txt"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--workdir", str(wd)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also on SIGTERM from an outer timeout: never leave a worker holding the GPU
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    wall = time.perf_counter() - t0
    res_p = wd / f"result_{name}.json"
    if res_p.is_file():
        res = json.loads(res_p.read_text())
    elif p.returncode in (-9, -signal.SIGKILL) and wall >= timeout - 1:
        res = {"status": "failed", "reason": f"timeout after {timeout:.0f} s (killed)"}
    else:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        res = {"status": "failed", "reason": one_line(f"exit code {p.returncode}: {tail[-1] if tail else 'no output'}")}
    res["worker_s"] = round(wall, 1)
    text = log.read_text(errors="replace")
    warn = sorted({ln.strip()[:200] for ln in text.splitlines() if "Failed to load" in ln or "fell back" in ln})
    if warn:
        res["log_warnings"] = warn[:4]
    if res["status"] == "failed":
        lines = log.read_text(errors="replace").splitlines()
        res["log_tail"] = lines[-25:]
    return res


def fmt(v, nd=None) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float) and nd is not None:
        return f"{v:,.{nd}f}"
    if isinstance(v, (int, float)):
        return f"{v:,}"
    return str(v)


def write_outputs(out: Path, env: dict, prep: dict, cfg: dict, rows: dict, t_total: float, done: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ref = rows.get("fp32", {})
    ref_dps = ref.get("docs_per_s") if ref.get("status") == "ok" else None
    ref_mb = ref.get("weights_MB") if ref.get("status") == "ok" else None
    ref_lin = ref.get("linear_MB") if ref.get("status") == "ok" else None
    for name, r in rows.items():
        if r.get("status") == "ok" and SPEC[name][1] == "enc":
            r["speedup_vs_fp32"] = round(r["docs_per_s"] / ref_dps, 3) if ref_dps else None
            r["size_vs_fp32"] = round(r["weights_MB"] / ref_mb, 3) if ref_mb else None
            r["linear_size_vs_fp32"] = round(r["linear_MB"] / ref_lin, 3) if ref_lin and r.get("linear_MB") else None
    faiss_gpu = isinstance(env.get("faiss_num_gpus"), int) and env["faiss_num_gpus"] > 0
    lines = [
        f"# medret GPU benchmark ({dt.datetime.now().isoformat(timespec='seconds')}, "
        f"{'complete' if done else 'PARTIAL'}, {t_total:.0f} s)",
        "",
        f"- device: `{cfg['device']}`; GPU: {env.get('gpu', 'none')}; torch {env['torch']} (CUDA {env['torch_cuda']}, "
        f"cuDNN {env['cudnn']}); transformers {env['transformers']}; numpy {env['numpy']}; Python {env['python']}; "
        f"{env['cpu_count']} CPU cores",
        "- optional libraries: " + "; ".join(f"{k}: {v}" for k, v in env["optional"].items()),
        f"- onnxruntime providers: {env.get('onnxruntime_providers')}; faiss GPUs: {env.get('faiss_num_gpus')}; "
        f"C compiler (for torch.compile): {env.get('gcc')}",
        f"- sizes: {cfg['n_texts']:,} synthetic texts (mean {prep['mean_tokens']} tokens, max {prep['max_tokens']}), "
        f"batch {cfg['batch']}, padded to max_length {cfg['max_length']}; fidelity subset {cfg['n_cos']}; "
        f"index {cfg['n_vec']:,} x 384, {cfg['n_q']:,} queries, k={cfg['k']}"
        + (" (SMOKE sizes)" if cfg["smoke"] else ""),
        f"- tokenizer (fast, MiniLM vocab): {prep['tokenizer_docs_per_s']:,} docs/s on the CPU, NOT included in docs/s "
        "below (token ids are pre-loaded on the device)",
        "",
        "## Encoder throughput: MiniLM-L6 architecture (all-MiniLM-L6-v2 config + tokenizer), RANDOM weights (seed 0)",
        "",
        "Speed does not depend on weight values, so docs/s and sizes hold for the real model; `cos` compares each "
        "variant's mean-pooled, normalized embeddings with fp32 ones of the same random model (numeric fidelity of the "
        "kernels, not retrieval quality). `centred cos` subtracts the fp32 mean embedding first (random-weight "
        "embeddings share a large common direction that inflates plain cosine). docs/s = median of the timed passes "
        "after warm-up, `torch.cuda.synchronize` around each pass. Weights MB counts all parameters incl. quantization "
        "scales; the 30522 x 384 word-embedding table (44.7 MB fp32) is never quantized by bnb/torchao.",
        "",
        "| variant | status | docs/s | speedup vs fp32 | weights MB | size vs fp32 | Linear MB | Linear size vs fp32 "
        "| cos mean | cos min | centred cos | peak GPU MB | texts x passes | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    order = [v[0] for v in VARIANTS]
    enc = [n for n in order if SPEC[n][1] == "enc"]
    idx = [n for n in order if SPEC[n][1] == "idx"]
    for n in enc:
        r = rows.get(n, {"status": "not run"})
        st = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        if r["status"] != "ok":
            lines.append(f"| {SPEC[n][2]} | {st} |" + " |" * 12)
            continue
        lines.append(
            f"| {SPEC[n][2]} | ok | {fmt(r['docs_per_s'], 0)} | {fmt(r.get('speedup_vs_fp32'))} "
            f"| {fmt(r['weights_MB'])} "
            f"| {fmt(r.get('size_vs_fp32'))} | {fmt(r.get('linear_MB'))} | {fmt(r.get('linear_size_vs_fp32'))} "
            f"| {fmt(r.get('cos_mean'))} | {fmt(r.get('cos_min'))} | {fmt(r.get('cos_centred_mean'))} "
            f"| {fmt(r.get('peak_gpu_MB'))} | {r['n_texts']:,} x {r['repeats']} | {r.get('note', '')} |"
        )
    flat_label = "torch exact fp32 (matmul + topk)" + ("" if faiss_gpu else " (faiss-gpu not available)")
    lines += [
        "",
        f"## Index: {cfg['n_vec']:,} x 384 synthetic unit vectors (clustered around {cfg['n_centres']:,} random "
        f"centres, seed 1234), {cfg['n_q']:,} queries, k={cfg['k']}",
        "",
        "recall@k = overlap of the top-k ids with fp32 exact search (torch matmul + topk). QPS = queries / median "
        "time of 3 full searches after a warm-up search. Build = from a host float32 array to a searchable index "
        "(IVF-PQ: train + add).",
        "",
        "| index | status | build s | search s | QPS | recall@10 | recall@100 | index MB | peak GPU MB | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in idx:
        r = rows.get(n, {"status": "not run"})
        label = flat_label if n == "idx_torch_fp32" else SPEC[n][2]
        if r["status"] != "ok":
            st = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
            lines.append(f"| {label} | {st} |" + " |" * 8)
            continue
        lines.append(
            f"| {label} | ok | {fmt(r.get('build_s'))} | {fmt(r.get('search_s'))} | {fmt(r['qps'], 0)} "
            f"| {fmt(r['recall@10'])} | {fmt(r['recall@100'])} | {fmt(r.get('index_MB'))} "
            f"| {fmt(r.get('peak_gpu_MB'))} "
            f"| {r.get('note', '')} |"
        )
    lines += ["", "Worker wall times (s): " + ", ".join(f"{n} {r.get('worker_s')}" for n, r in rows.items()), ""]
    (out / "gpu_bench.md").write_text("\n".join(lines))
    (out / "gpu_bench.json").write_text(
        json.dumps(
            {"env": env, "prepared": prep, "config": cfg, "rows": rows, "total_s": round(t_total, 1), "complete": done},
            indent=1,
            default=str,
        )
    )


def main() -> None:
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
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, Path(args.workdir))
        return

    t_start = time.perf_counter()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but torch.cuda.is_available() is False (use --device cpu --smoke to test here)")
    env = environment(args.device)
    print("== environment\n" + json.dumps(env, indent=1, default=str), flush=True)
    if args.total_budget is None:
        args.total_budget = 1200.0 if args.smoke else 420.0
    cfg = {**sizes(args.smoke), "device": args.device, "smoke": args.smoke, "no_cuda_skip": args.no_cuda_skip}
    wd = Path(tempfile.mkdtemp(prefix="medret-gpubench-"))
    (wd / "config.json").write_text(json.dumps(cfg))
    prep = prepare(wd, cfg)
    print("== prepared " + json.dumps(prep), flush=True)
    out = Path(args.out)
    names = [v[0] for v in VARIANTS]
    if args.only:
        want = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [s for s in want if s not in SPEC]
        if bad:
            sys.exit(f"unknown variants {bad}; known: {names}")
        names = [n for n in names if n in want]
    rows: dict = {}
    deadline = t_start + args.total_budget
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # outer `timeout`: keep the rows done so far
    try:
        run_all(names, rows, wd, deadline, args, out, env, prep, cfg, t_start)
    except SystemExit:
        write_outputs(out, env, prep, cfg, rows, time.perf_counter() - t_start, done=False)
        print(f"interrupted; partial results in {out}", flush=True)
        raise
    write_outputs(out, env, prep, cfg, rows, time.perf_counter() - t_start, done=True)
    if not args.keep_workdir:
        shutil.rmtree(wd, ignore_errors=True)
    else:
        print(f"workdir kept: {wd}")
    print("\n" + (out / "gpu_bench.md").read_text())
    print(f"wrote {out / 'gpu_bench.md'} and {out / 'gpu_bench.json'}")


def run_all(names, rows, wd, deadline, args, out, env, prep, cfg, t_start) -> None:
    for name in names:
        left = deadline - time.perf_counter()
        hard = SPEC[name][4]
        if left < 20:
            rows[name] = {"status": "skipped", "reason": f"total time budget ({args.total_budget:.0f} s) used up"}
        else:
            print(f"== {name}: {SPEC[name][2]} (timeout {min(hard, left):.0f} s)", flush=True)
            rows[name] = run_worker(name, wd, min(hard, left))
        r = rows[name]
        print(f"   -> {json.dumps({k: v for k, v in r.items() if k != 'log_tail'})}", flush=True)
        if r["status"] == "failed" and r.get("log_tail"):
            print("   log tail:\n      " + "\n      ".join(r["log_tail"]), flush=True)
        write_outputs(out, env, prep, cfg, rows, time.perf_counter() - t_start, done=False)


if __name__ == "__main__":
    main()
