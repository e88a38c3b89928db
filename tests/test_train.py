"""train.py: contrastive fine-tuning, identical resume from checkpoints, export that evaluate loads, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.training import run_train
from tests.test_evaluate import ROOT, compose_cfg


def train_cfg(tiny_bert: Path, *extra: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                f"model.path={tiny_bert}",
                "model.name=tiny",
                "logger=none",
                "data.num_records=300",
                "data.num_queries=60",
                "eval.k_values=[1,10,100]",
                "train.batch_size=8",
                "train.lr=5e-4",
                "train.warmup_steps=2",
                "train.dev_every=4",
                "train.checkpoint_every=4",
                "train.dev_fraction=0.2",
                *extra,
            ],
        )


# evaluate a trained model on a small synthetic set
SMALL_EVAL = ("model=minilm", "logger=none", "data.num_records=300", "data.num_queries=40", "eval.k_values=[1,10,100]")


def test_training_lowers_the_loss_and_exports_a_model_evaluate_loads(tiny_bert, tmp_path):
    res = run_train(train_cfg(tiny_bert, "train.max_steps=30", "train.lr=2e-3", "train.dev_every=10"), tmp_path)
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 30 and res["steps"] == 30
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.03
    assert res["dev_queries"] == 12 and res["best_dev_ndcg@10"] is not None
    assert [h["step"] for h in res["history"] if "dev_ndcg@10" in h] == [10, 20, 30]
    best = Path(res["best_model"])
    assert (best / "config.json").is_file() and (best / "modules.json").is_file()
    ev = run_evaluate(compose_cfg(*SMALL_EVAL, f"model.path={best}"), tmp_path / "eval")
    assert 0.0 <= ev["metrics"]["ndcg@10"] <= 1.0


def train_cli(tiny_bert: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        f"model.path={tiny_bert}",
        "logger=none",
        "data.num_records=200",
        "data.num_queries=60",
        "eval.k_values=[1,10,100]",
        "train.batch_size=8",
        "train.lr=1e-3",
        "train.max_steps=16",
        "train.dev_every=8",
        "train.checkpoint_every=2",
        f"hydra.run.dir={out}",
        *extra,
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_with_the_same_loss_curve(tiny_bert, tmp_path):
    straight = train_cli(tiny_bert, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]
    killed = train_cli(tiny_bert, tmp_path / "killed")
    first = tmp_path / "killed" / "checkpoints" / "step-2" / "trainer_state.json"
    deadline = time.time() + 300
    while not first.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert killed.poll() is None, "training finished before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "train_results.json").exists()
    resumed = train_cli(tiny_bert, tmp_path / "killed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    a = json.loads((tmp_path / "straight" / "train_results.json").read_text())
    b = json.loads((tmp_path / "killed" / "train_results.json").read_text())
    assert [h["loss"] for h in b["history"]] == [h["loss"] for h in a["history"]]
    assert b["best_dev_ndcg@10"] == a["best_dev_ndcg@10"] and b["best_step"] == a["best_step"]
    # the same run dir with another config is refused, not silently mixed
    with pytest.raises(InputError, match="checkpoint of another config"):
        run_train(
            train_cfg(tiny_bert, "train.max_steps=20", "train.temperature=0.1", "data.num_records=200"),
            tmp_path / "killed",
        )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.batch_size=1"], "in-batch negatives need at least 2"),
        (["train.dev_fraction=1.5"], "train.dev_fraction=1.5"),
        (["quant=uniform", "quant.bits=4"], "contrastive training fine-tunes fp32 weights"),
    ],
)
def test_bad_training_input(tiny_bert, tmp_path, extra, message):
    with pytest.raises(InputError, match=message):
        run_train(train_cfg(tiny_bert, "train.max_steps=2", *extra), tmp_path)


def test_train_cli_exports_an_hf_dir(tiny_bert, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"model.path={tiny_bert}",
            "logger=none",
            "data.num_records=200",
            "data.num_queries=40",
            "eval.k_values=[1,10,100]",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.dev_every=3",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "best_model" / "config.json").read_text())["model_type"] == "bert"
    assert json.loads((tmp_path / "train_results.json").read_text())["steps"] == 3


def test_qat_trains_through_the_quantizer_and_exports_a_packed_model(tiny_bert, tmp_path):
    res = run_train(
        train_cfg(
            tiny_bert,
            "train=qat",
            "quant=uniform",
            "quant.bits=3",
            "quant.group_size=16",
            "train.max_steps=8",
            "train.lr=1e-3",
        ),
        tmp_path,
    )
    best = Path(res["best_model"])
    manifest = json.loads((best / "medret_quant.json").read_text())
    assert manifest["quant"]["scheme"] == "uniform" and len(manifest["modules"]) == 12
    assert 3.0 < res["quant"]["effective_bits_per_param"] < 4.5
    assert (tmp_path / "best_latent" / "encoder0.pt").is_file()
    ev = run_evaluate(compose_cfg(*SMALL_EVAL, f"model.path={best}"), tmp_path / "eval")
    from medret.config import ModelConfig
    from medret.models import load_retriever

    fp32_bytes = load_retriever(ModelConfig(name="t", path=str(tiny_bert))).param_bytes()
    assert ev["sizes"]["model_param_bytes"] < fp32_bytes  # evaluate ran the packed model, not re-quantized
    assert ev["quant"]["loaded_packed"] and 3.0 < ev["quant"]["effective_bits_per_param"] < 4.5
    with pytest.raises(InputError, match="QAT supports the custom schemes"):
        run_train(train_cfg(tiny_bert, "train=qat", "quant=bnb_nf4", "train.max_steps=2"), tmp_path / "x")


def test_positives_missing_from_the_corpus_and_no_pairs_are_errors(tiny_bert, tmp_path):
    from tests.test_data import write_beir

    corpus = [{"_id": f"d{i}", "text": f"patient {i} with diabetes"} for i in range(6)]
    queries = [{"_id": f"q{i}", "text": f"diabetes {i}"} for i in range(4)]
    write_beir(tmp_path / "b1", corpus, queries, [("q0", "d0", 1), ("q1", "gone", 1), ("q2", "d2", 1)])
    with pytest.raises(InputError, match="1 positives name records missing from the corpus"):
        run_train(
            train_cfg(
                tiny_bert,
                "data=beir",
                f"data.path={tmp_path / 'b1'}",
                "data.split=test",
                "train.max_steps=2",
                "train.batch_size=2",
                "eval.k_values=[1,5]",
            ),
            tmp_path / "r1",
        )
    write_beir(tmp_path / "b2", corpus, queries, [("q0", "d0", 0)])
    with pytest.raises(InputError, match="no query has a relevant judged document"):
        run_train(
            train_cfg(
                tiny_bert,
                "data=beir",
                f"data.path={tmp_path / 'b2'}",
                "data.split=test",
                "train.max_steps=2",
                "train.batch_size=2",
                "eval.k_values=[1,5]",
            ),
            tmp_path / "r2",
        )


def test_qlora_trains_adapters_over_a_custom_quantized_base_and_merges(tiny_bert, tmp_path):
    quant = ["quant=uniform", "quant.bits=2", "quant.group_size=16"]
    res = run_train(
        train_cfg(
            tiny_bert,
            "train=qlora",
            *quant,
            "train.max_steps=12",
            "train.lr=3e-3",
            "train.lora_r=4",
            "train.dev_every=6",
        ),
        tmp_path,
    )
    adapter = Path(res["quant"]["adapter"])
    from safetensors.torch import load_file

    state = load_file(str(adapter / "adapter0.safetensors"))
    assert len(state) == 24 and all(v.abs().max() > 0 for k, v in state.items() if "lora_B" in k)  # B starts at 0
    meta = json.loads((adapter / "medret_adapter.json").read_text())
    assert meta["r"] == 4 and len(meta["targets"][0]) == 12 and meta["quant"]["bits"] == 2
    assert res["quant"]["merged_layers"] == 12
    # checkpoints hold the adapters, optimizer and RNG, not the quantized base
    ckpt = sorted((tmp_path / "checkpoints").glob("step-*"))[-1]
    assert (ckpt / "adapter0.safetensors").is_file() and not list(ckpt.glob("model*.safetensors"))

    plain = run_evaluate(compose_cfg(*SMALL_EVAL, f"model.path={tiny_bert}", *quant), tmp_path / "plain")
    attached = run_evaluate(
        compose_cfg(*SMALL_EVAL, f"model.path={tiny_bert}", *quant, f"model.adapter={adapter}"), tmp_path / "attached"
    )
    merged = run_evaluate(compose_cfg(*SMALL_EVAL, f"model.path={res['best_model']}"), tmp_path / "merged")
    assert attached["quant"]["adapter"]["r"] == 4 and attached["quant"]["adapter"]["params"] > 0
    q = attached["quant"]
    assert q["effective_bits_per_param_with_adapter"] > q["effective_bits_per_param"]
    assert q["model_bytes"] > plain["quant"]["model_bytes"]
    # quantized base + adapters computes what the merged fp32 model (dequantized W + B·A) computes
    assert abs(attached["metrics"]["ndcg@10"] - merged["metrics"]["ndcg@10"]) < 1e-3
    # and the adapter changed the quantized model's ranking (a cached encoding was not reused)
    assert attached["fidelity"]["ranking"]["top10_overlap"] != plain["fidelity"]["ranking"]["top10_overlap"]
    with pytest.raises(InputError, match="trained over quant"):
        run_evaluate(
            compose_cfg(
                *SMALL_EVAL,
                f"model.path={tiny_bert}",
                "quant=uniform",
                "quant.bits=3",
                "quant.group_size=16",
                f"model.adapter={adapter}",
            ),
            tmp_path / "wrong",
        )
    with pytest.raises(InputError, match="QLoRA adapter sits on a quantized base"):
        run_evaluate(compose_cfg(*SMALL_EVAL, f"model.path={tiny_bert}", f"model.adapter={adapter}"), tmp_path / "w2")


def test_qlora_over_bitsandbytes_nf4_resumes_identically(tiny_bert, tmp_path):
    extra = [
        "train=qlora",
        "quant.blocksize=32",
        "train.lr=2e-3",
        "train.lora_r=4",
        "train.dev_every=4",
        "train.checkpoint_every=2",
        "train.lora_dropout=0.1",
    ]
    straight = run_train(
        train_cfg(tiny_bert, *extra, "train.max_steps=6", "train.keep_checkpoints=3"), tmp_path / "straight"
    )
    assert straight["config"]["quant"]["name"] == "bnb_nf4"  # train=qlora's default base
    # as if killed after the step-2 checkpoint: only that checkpoint is left
    shutil.copytree(tmp_path / "straight", tmp_path / "killed")
    for leftover in ("checkpoints/step-4", "checkpoints/step-6", "best_model", "best_adapter", "train_results.json"):
        shutil.rmtree(tmp_path / "killed" / leftover) if (tmp_path / "killed" / leftover).is_dir() else (
            tmp_path / "killed" / leftover
        ).unlink()
    resumed = run_train(
        train_cfg(tiny_bert, *extra, "train.max_steps=6", "train.keep_checkpoints=3"), tmp_path / "killed"
    )
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert (Path(straight["best_model"]) / "config.json").is_file()
    with pytest.raises(InputError, match="qlora trains adapters over a quantized base"):
        run_train(train_cfg(tiny_bert, "train=qlora", "quant=none", "train.max_steps=2"), tmp_path / "x")


@pytest.mark.parametrize("scheme", ["uniform", "bnb_nf4"])
def test_lora_over_a_quantized_base_fits_a_batch(tiny_bert, scheme):
    """The adapters really learn through the frozen quantized base (a real loss, a real optimizer)."""
    import torch
    from omegaconf import OmegaConf

    from medret.config import ModelConfig, QuantConfig
    from medret.losses import info_nce
    from medret.models import load_retriever
    from medret.models.lora import attach_lora, lora_targets
    from medret.quant import quantize_retriever
    from medret.training.loop import _embed

    torch.manual_seed(0)
    r = load_retriever(OmegaConf.structured(ModelConfig(name="t", path=str(tiny_bert))))
    quantize_retriever(
        r,
        OmegaConf.merge(
            OmegaConf.structured(QuantConfig), {"name": scheme, "bits": 2, "group_size": 16, "blocksize": 32}
        ),
    )
    attach_lora(r.doc.model, lora_targets(r.doc.model), 8, 16, 0.0)
    params = [p for p in r.doc.model.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in r.doc.model.named_parameters() if p.requires_grad)
    queries = [f"diabetes patient {i} insulin" if i % 2 else f"fracture {i} cast" for i in range(8)]
    docs = [f"record {i}: {q}" for i, q in enumerate(queries)]
    opt = torch.optim.AdamW(params, lr=5e-3)
    r.doc.model.train()
    losses = []
    for _ in range(30):
        loss = info_nce(_embed(r.query, queries), _embed(r.doc, docs), 0.05, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
