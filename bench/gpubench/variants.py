"""What the benchmark runs: the variants in run order, the sizes of a full and a smoke run, and the
carried-wheel facts its skip reasons quote."""

from __future__ import annotations

from pathlib import Path

ARCH = Path(__file__).resolve().parent.parent / "minilm_arch"  # all-MiniLM-L6-v2's config + tokenizer, no weights
MiB = 2**20

# carried-wheel facts, checked on PyPI when the benchmark was written (shown in the table notes)
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
NAMES = [v[0] for v in VARIANTS]

SMOKE_SIZES = dict(
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
FULL_SIZES = dict(
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


def sizes(smoke: bool) -> dict:
    return dict(SMOKE_SIZES if smoke else FULL_SIZES)


def one_line(e: BaseException | str, limit: int = 220) -> str:
    s = str(e) if isinstance(e, str) else f"{type(e).__name__}: {e}"
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
