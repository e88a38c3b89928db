"""train=distill: the quantized student trained through its grid against the fp32 teacher on corpus texts.

Tiny random encoders (initialised wide enough that 2-bit rounding moves their outputs): the codes move and the loss
falls; the packed folder evaluate loads gives exactly the embeddings training scored; a killed run resumes with the
same loss curve; the texts are corpus texts, never queries, the held-out ones never trained on; bad options are one
line before any model loads; every architecture and custom grid trains and saves.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from medret.config import ModelConfig, TrainRootConfig, typed
from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.models import load_retriever
from medret.quant import calibration_corpus
from medret.results import OUTCOMES, RunResult
from medret.training import kinds, run_train
from medret.training.distill_kind import dev_inputs, embed, fidelity, split_texts, step_inputs, step_texts
from tests import test_sensitivity as sens
from tests.conftest import WORDS, build_tiny_bert
from tests.test_evaluate import ROOT, compose_cfg
from tests.test_train import SMALL_EVAL, train_cfg
from tests.tiny_models import ARCHITECTURES, build_tiny_encoder

KMEANS2 = (
    "quant=kmeans",
    "quant.bits=2",
    "quant.granularity=channel",
    "quant.method=gptq",
    "quant.calibration_texts=32",
)
DISTILL = (
    "train=distill",
    "train.batch_size=8",
    "train.distill_texts=160",
    "train.distill_dev_texts=40",
    "train.dev_every=10",
    "train.checkpoint_every=10",
)


@pytest.fixture(scope="module")
def wide_bert(tmp_path_factory) -> Path:
    """The tiny BERT re-initialised with initializer_range 0.3: its layers, not the embeddings, shape the output,
    so 2-bit rounding costs real fidelity (the default 0.02 keeps embedding cosine at 0.99999)."""
    path = build_tiny_bert(tmp_path_factory.mktemp("wide_bert"))
    config = AutoConfig.from_pretrained(path)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    AutoModel.from_config(config).eval().save_pretrained(path)
    return path


def _run(path: Path, out: Path, *extra: str) -> dict:
    return run_train(train_cfg(path, *DISTILL, *KMEANS2, *extra), out)


def test_distill_moves_codes_lowers_the_loss_and_saves_what_evaluate_loads(wide_bert, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medret.training.trainer"):
        res = _run(wide_bert, tmp_path, "train.max_steps=30", "train.distill_latent_lr=0.02", "train.lr=1e-3")
    dev_lines = [m for m in (r.getMessage() for r in caplog.records) if m.startswith("step ") and "dev cosine" in m]
    assert len(dev_lines) == 3 and dev_lines[-1].startswith("step 30: loss ")  # each dev evaluation, in the log
    d = res["quant"]["distill"]
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 30 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    assert d["layers"] == 12 and d["codes"] == 16384 and 0 < d["codes_moved"] < d["codes"]  # the codes moved
    assert res["train_texts"] == 160 and res["dev_texts"] == 40 and "train_pairs" not in res
    assert [h["step"] for h in res["history"] if "dev_cosine" in h] == [10, 20, 30]
    assert res["best_dev_cosine"] > d["start_dev_cosine"] and not d["reverted"]
    assert res["best_step"] == d["best_step"]

    best = Path(res["best_model"])
    manifest = json.loads((best / "medret_quant.json").read_text())
    assert manifest["quant"]["scheme"] == "kmeans" and len(manifest["modules"]) == 12
    assert manifest["quant"]["distill"]["codes_moved"] == d["codes_moved"]
    # the folder's embeddings of the held-out texts are the ones the best step was scored by
    cfg = typed(train_cfg(wide_bert, *DISTILL, *KMEANS2), TrainRootConfig)
    from medret.data import load_dataset

    data = load_dataset(cfg.data)
    dev = [data.doc_texts[i] for i in split_texts(data.num_docs, cfg).dev]
    teacher = load_retriever(ModelConfig(name="t", path=str(wide_bert))).doc
    student = load_retriever(ModelConfig(name="s", path=str(best))).doc
    target = embed(teacher.model, teacher, dev, 16)
    assert fidelity(embed(student.model, student, dev, 16), target)["cosine"] == pytest.approx(
        res["best_dev_cosine"], abs=1e-6
    )
    # evaluate's own encode path reads the same numbers
    np.testing.assert_allclose(student.encode(dev, 16), embed(student.model, student, dev, 16).numpy(), atol=1e-5)

    assert manifest["source"]["path"] == str(wide_bert)  # the teacher: what evaluate judges the folder against
    ev = run_evaluate(compose_cfg(*SMALL_EVAL, f"model.path={best}"), tmp_path / "eval")
    assert ev["quant"]["loaded_packed"]
    assert ev["quant"]["reference"]["path"] == str(wide_bert) and ev["verdict"]["outcome"] in OUTCOMES
    fp32 = run_evaluate(compose_cfg(*SMALL_EVAL, f"model.path={wide_bert}"), tmp_path / "eval-fp32")
    assert ev["deltas"]["ndcg@10"]["fp32"] == pytest.approx(fp32["metrics"]["ndcg@10"])
    assert RunResult.of(ev).scheme_label == "kmeans+distill"
    assert ev["quant"]["effective_bits_per_param"] == pytest.approx(res["quant"]["effective_bits_per_param"])
    assert 3.5 < res["quant"]["effective_bits_per_param"] < 4.0  # 2-bit codes + a 4-entry fp16 codebook per 32-64 row


def test_with_the_codes_held_the_floats_still_train_and_a_worse_fit_is_reverted(wide_bert, tmp_path):
    held = _run(wide_bert, tmp_path / "held", "train.max_steps=10", "train.distill_latent_lr=0", "train.lr=1e-3")
    assert held["quant"]["distill"]["codes_moved"] == 0
    assert held["best_dev_cosine"] > held["quant"]["distill"]["start_dev_cosine"]
    # a learning rate that wrecks the student: no dev score beats the rounding, whose state is written back
    wrecked = _run(
        wide_bert, tmp_path / "wrecked", "train.max_steps=10", "train.lr=100.0", "train.distill_latent_lr=0.5"
    )
    d = wrecked["quant"]["distill"]
    assert d["reverted"] and d["codes_moved"] == 0 and d["best_dev_cosine"] <= d["start_dev_cosine"]


def test_texts_are_corpus_texts_never_queries_and_the_held_out_ones_are_never_trained_on(tiny_bert, tmp_path):
    from tests.test_data import write_beir

    corpus = [{"_id": f"d{i}", "text": f"record {i} patient with diabetes and cough"} for i in range(120)]
    queries = [{"_id": f"q{i}", "text": f"query {i} which patients have diabetes"} for i in range(30)]
    write_beir(tmp_path / "beir", corpus, queries, [(f"q{i}", f"d{i}", 1) for i in range(30)])
    extra = ("data=beir", f"data.path={tmp_path / 'beir'}", "data.split=test", "train.distill_texts=60")
    cfg = typed(train_cfg(tiny_bert, *DISTILL, *extra, "train.max_steps=12"), TrainRootConfig)
    data, split, _ = kinds.train_kind("distill").load(cfg)
    assert not set(split.train) & set(split.dev) and len(split.train) == 60 and len(split.dev) == 40
    seen = {i for step in range(cfg.train.max_steps) for i in step_texts(split, step, cfg.train.batch_size, cfg.seed)}
    assert seen <= set(split.train) and len(seen) == 60  # every training text, and no other, over the epochs
    texts = {data.doc_texts[i] for i in seen} | set(
        calibration_corpus([data.doc_texts[i] for i in split.train], cfg.quant)
    )
    assert texts <= {c["text"] for c in corpus} and not texts & {q["text"] for q in queries}
    assert not texts & {data.doc_texts[i] for i in split.dev}
    # the same split for every quant config: held-out texts are a function of the corpus size and seed alone
    other = typed(train_cfg(tiny_bert, *DISTILL, *extra, *KMEANS2), TrainRootConfig)
    assert split_texts(data.num_docs, other) == split
    res = run_train(train_cfg(tiny_bert, *DISTILL, *extra, *KMEANS2, "train.max_steps=2"), tmp_path / "run")
    assert res["train_texts"] == 60 and res["quant"]["calibration_texts_used"] == 32


def test_cropped_inputs_are_word_spans_of_the_step_s_own_texts_the_same_on_resume(tiny_bert, tmp_path):
    texts = [" ".join(f"w{i}x{j}" for j in range(40)) for i in range(8)] + ["too short"]
    picked = step_inputs(texts, 7, 0.5, 12, seed=0)
    assert picked == step_inputs(texts, 7, 0.5, 12, seed=0) != step_inputs(texts, 8, 0.5, 12, seed=0)
    assert picked[4:] == texts[4:] and step_inputs(texts, 7, 0.0, 12, seed=0) == texts
    for span, whole in zip(picked[:4], texts[:4]):
        assert 4 <= len(span.split()) <= 12 and f" {span} " in f" {whole} "  # contiguous words of its own text
    assert step_inputs(["too short"], 0, 1.0, 12, seed=0) == ["too short"]
    dev = dev_inputs(texts, 0.5, 12, seed=0)
    assert dev[: len(texts)] == texts and len(dev) == 2 * len(texts) and dev_inputs(texts, 0, 12, 0) == texts
    assert all(f" {span} " in f" {whole} " for span, whole in zip(dev[len(texts) :], texts))
    # a run with cropping trains and scores the held-out texts whole and cropped
    res = _run(tiny_bert, tmp_path, "train.max_steps=4", "train.dev_every=2", "train.distill_crop=0.5")
    assert res["dev_texts"] == 40 and res["quant"]["distill"]["dev_texts"] == 80 and len(res["history"]) == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["quant=none"], r"^quant=none: train=distill trains the codes of a custom scheme \(.*kmeans.*\)$"),
        (["quant=bnb_nf4"], r"^quant=bnb_nf4: train=distill trains the codes of a custom scheme"),
        (
            [*KMEANS2, "train.hard_negatives=2"],
            r"^train.hard_negatives=2: train=distill learns from corpus texts alone",
        ),
        ([*KMEANS2, "train.distill_token_weight=-1"], r"^train.distill_token_weight=-1.0: expected a finite number"),
        (
            [*KMEANS2, "train.distill_token_weight=0", "train.distill_similarity_weight=0"],
            r"^train.distill_token_weight=0 and train.distill_similarity_weight=0: no loss to train on",
        ),
        ([*KMEANS2, "train.distill_latent_lr=nan"], r"^train.distill_latent_lr=nan: expected a finite number >= 0"),
        ([*KMEANS2, "train.distill_crop=1.5"], r"^train.distill_crop=1.5: expected a share of the batch in \[0, 1\]$"),
        ([*KMEANS2, "train.distill_crop_words=0"], r"^train.distill_crop_words=0: expected a positive number of words"),
        ([*KMEANS2, "train.distill_texts=0"], r"^train.distill_texts=0: expected a positive number of corpus texts"),
        ([*KMEANS2, "train.distill_dev_texts=-1"], r"^train.distill_dev_texts=-1: expected 0 or more"),
        ([*KMEANS2, "quant.bits=9"], r"^quant.bits=9: scheme kmeans needs an integer width in 2..8"),
        ([*KMEANS2, "train.distill_dev_texts=300"], r"^train.distill_dev_texts=300: the corpus has 300 records"),
        ([*KMEANS2, "train.distill_texts=4"], r"^train.batch_size=8: only 4 corpus texts to train on"),
    ],
)
def test_bad_options_are_one_line_before_any_model_loads(tmp_path, extra, message):
    cfg = train_cfg(Path("/nonexistent/model"), "train=distill", "train.batch_size=8", *extra)
    if "records" in message or "corpus texts to train" in message:  # known once the corpus is read: a real model
        cfg = train_cfg(build_tiny_bert(tmp_path / "m"), "train=distill", "train.batch_size=8", *extra)
    with pytest.raises(InputError, match=message) as err:
        run_train(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def _cli(model: Path, out: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        str(ROOT / "train.py"),
        f"model.path={model}",
        "logger=none",
        "data.num_records=200",
        "data.num_queries=20",
        *DISTILL,
        *KMEANS2,
        "train.max_steps=12",
        "train.checkpoint_every=2",
        "train.dev_every=6",
        "train.distill_latent_lr=0.02",
        "train.lr=1e-3",
        f"hydra.run.dir={out}",
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint_with_the_same_loss_curve(wide_bert, tmp_path):
    straight = _cli(wide_bert, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]
    killed = _cli(wide_bert, tmp_path / "killed")
    first = tmp_path / "killed" / "checkpoints" / "step-4" / "trainer_state.json"
    deadline = time.time() + 300
    while not first.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert killed.poll() is None, "training finished before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "train_results.json").exists()
    resumed = _cli(wide_bert, tmp_path / "killed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    a = json.loads((tmp_path / "straight" / "train_results.json").read_text())
    b = json.loads((tmp_path / "killed" / "train_results.json").read_text())
    assert [h["loss"] for h in b["history"]] == [h["loss"] for h in a["history"]]
    assert b["best_dev_cosine"] == a["best_dev_cosine"] and b["best_step"] == a["best_step"]
    assert b["quant"]["distill"]["codes_moved"] == a["quant"]["distill"]["codes_moved"] > 0
    assert (tmp_path / "killed" / "best_model" / "model.safetensors").read_bytes() == (
        tmp_path / "straight" / "best_model" / "model.safetensors"
    ).read_bytes()


GRIDS = {
    "nf-g16-gptq": ("quant=nf", "quant.bits=3", "quant.group_size=16", "quant.method=gptq"),
    "uniform-asym": ("quant=uniform", "quant.bits=2", "quant.group_size=16", "quant.symmetric=false"),
    "outliers-kmeans": ("quant=outliers", "quant.base=kmeans", "quant.bits=2", "quant.outlier_fraction=0.01"),
    "kmeans-rotated": ("quant=kmeans", "quant.bits=2", "quant.group_size=16", "quant.rotate=hadamard"),
    "kmeans-rows2": ("quant=kmeans", "quant.bits=2", "quant.granularity=rows", "quant.group_size=2"),
}
ARCH_GRID = dict(  # each grid on one or two architectures
    zip(
        ARCHITECTURES,
        (
            "nf-g16-gptq",
            "uniform-asym",
            "outliers-kmeans",
            "kmeans-rotated",
            "kmeans-rows2",
            "uniform-asym",
        ),
    )
)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_trains_through_its_grid_and_saves(tmp_path, arch):
    grid = ARCH_GRID[arch]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz0123456789.,:;%-/()"]
    path = build_tiny_encoder(tmp_path / arch, arch, vocab)
    res = run_train(
        train_cfg(
            path,
            *DISTILL,
            *GRIDS[grid],
            "model.max_length=32",
            "data.num_records=80",
            "train.max_steps=2",
            "train.distill_dev_texts=0",  # no held-out texts: the last step is written (no revert)
            "train.distill_latent_lr=0.5",  # up to half a gap per step: some codes move in two steps
            "quant.calibration_texts=16",
        ),
        tmp_path / "run",
    )
    d = res["quant"]["distill"]
    assert all(np.isfinite(h["loss"]) for h in res["history"]) and d["codes_moved"] > 0, (grid, d)
    manifest = json.loads((Path(res["best_model"]) / "medret_quant.json").read_text())
    assert ("rotations" in manifest) == (grid == "kmeans-rotated")  # the rotation wraps the trained layer, kept
    student = load_retriever(ModelConfig(name="s", path=res["best_model"], max_length=32)).doc
    assert np.isfinite(student.encode(["patient with diabetes", "cough"], 2)).all()


def test_quant_auto_is_resolved_into_its_per_layer_widths_then_trained(tiny_bert, tmp_path):
    scan_dir = tmp_path / "scan"  # test_sensitivity's scan: widths 2 and 8 on groups of 16
    sens.run_sensitivity(
        sens.compose_scan(
            f"model.path={tiny_bert}",
            *sens.TINY,
            sens.GROUP,
            *sens.SCAN,
            "scan.fidelity_texts=8",
            f"scan.bits={sens.SCAN_BITS}",
        ),
        scan_dir,
    )
    report = json.loads((scan_dir / "sensitivity.json").read_text())
    n = sum(layer["params"] for layer in report["layers"])
    cheapest = sum(min(c["effective_bits"] for c in x["curve"].values()) * x["params"] for x in report["layers"])
    res = run_train(
        train_cfg(
            tiny_bert,
            *DISTILL,
            "quant=auto",
            f"quant.target_bits={1.5 * cheapest / n}",
            f"quant.sensitivity={scan_dir / 'sensitivity.json'}",
            "quant.method=gptq",
            "quant.calibration_texts=16",
            "train.max_steps=2",
            # the table is the run's own under the linears' budget: stored in frequency tiers beside the mix
            "quant.embeddings=true",
            "quant.embedding_bits=[4,2]",
            "quant.embedding_tiers=[0.2]",
        ),
        tmp_path / "run",
    )
    assert res["config"]["quant"]["name"] != "auto" and res["config"]["quant"]["overrides"]
    modules = json.loads((Path(res["best_model"]) / "medret_quant.json").read_text())["modules"]
    linears = {n: m for n, m in modules.items() if m["kind"] == "linear"}
    assert len(linears) == 12 and {m["bits"] for m in linears.values()} == set(sens.SCAN_BITS)  # mixed widths, kept
    assert [m["kind"] for n, m in modules.items() if n not in linears] == ["tiered_embedding"]
