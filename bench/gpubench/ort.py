"""ONNX Runtime rows: the random-weight encoder exported once (TorchScript exporter, opset 17) and timed
through the encoder loop with host-side numpy inputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gpubench.encode import time_encoder
from gpubench.inputs import load_fp32_model
from gpubench.variants import ORT_GPU_NOTE


def export_onnx(wd: Path, path: Path) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    class Pooled(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)

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


def ort_inputs(name: str, wd: Path, cfg: dict) -> Path:
    """A folder holding this row's texts (ort_cpu: a subset) and the fp32 embeddings, for time_encoder."""
    import numpy as np

    ids = np.load(wd / "ids.npy")
    mask = np.load(wd / "mask.npy")
    if name == "ort_cpu":
        ids, mask = ids[: cfg["ort_cpu_texts"]], mask[: cfg["ort_cpu_texts"]]
    wd2 = wd / f"ort_{name}"
    wd2.mkdir(exist_ok=True)
    np.save(wd2 / "ids.npy", ids)
    np.save(wd2 / "mask.npy", mask)
    if (wd / "emb_fp32.npy").is_file():
        shutil.copy(wd / "emb_fp32.npy", wd2 / "emb_fp32.npy")
    return wd2


def run_ort(name: str, wd: Path, cfg: dict, dev) -> dict:
    import onnxruntime as ort
    import torch

    provs = ort.get_available_providers()
    want = "CUDAExecutionProvider" if name == "ort_cuda" else "CPUExecutionProvider"
    if want not in provs:
        return {
            "status": "skipped",
            "reason": f"onnxruntime {ort.__version__} has no {want} (providers: {', '.join(provs)}); {ORT_GPU_NOTE}",
        }
    path = wd / "minilm_arch_random.onnx"
    if not path.is_file():
        export_onnx(wd, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    providers = [want] if want == "CPUExecutionProvider" else [(want, {"device_id": 0}), "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=providers)
    if sess.get_providers()[0] != want:
        return {"status": "failed", "reason": f"session fell back to {sess.get_providers()}"}

    def encode(i, m):
        feed = {"input_ids": i.cpu().numpy(), "attention_mask": m.cpu().numpy()}
        return torch.from_numpy(sess.run(["emb"], feed)[0])

    # the generic timing loop, on host tensors: ORT copies its inputs itself
    r = time_encoder(
        name,
        encode,
        ort_inputs(name, wd, cfg),
        cfg,
        torch.device("cpu"),
        path.stat().st_size,
        0,
        f"onnxruntime {ort.__version__}, {sess.get_providers()[0]}, "
        f"TorchScript exporter opset 17; weights_MB = .onnx file size",
    )
    r["linear_MB"] = None
    if name == "ort_cuda":
        r["note"] += "; host numpy in/out per batch"
    return r
