"""A saved quantized model evaluated by its folder is judged against the fp32 model it was made from."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.results import RunResult
from tests.test_evaluate import compose_cfg, tiny_overrides

NF4 = ("quant=nf", "quant.bits=4", "quant.group_size=16")


@pytest.fixture(scope="module")
def saved(tiny_bert, tmp_path_factory):
    """One quantized run that saves its packed model, and the folder it wrote."""
    root = tmp_path_factory.mktemp("reference")
    over = tiny_overrides(tiny_bert, "logger=none", f"cache.dir={root / 'c'}", *NF4, f"quant.save_dir={root / 'q'}")
    return run_evaluate(compose_cfg(*over), root / "run"), root / "q", root / "c"


def _copy_editing(folder: Path, dest: Path, edit) -> Path:
    """A copy of the saved folder whose manifest ``edit(manifest)`` changed in place."""
    shutil.copytree(folder, dest)
    manifest = json.loads((dest / "medret_quant.json").read_text())
    edit(manifest)
    (dest / "medret_quant.json").write_text(json.dumps(manifest))
    return dest


def _eval(tiny_bert, tmp_path, cache, *extra) -> dict:
    over = tiny_overrides(tiny_bert, "logger=none", f"cache.dir={cache}", *extra)
    return run_evaluate(compose_cfg(*over), tmp_path / "run")


def test_the_saved_folder_is_judged_against_its_source_as_the_quantizing_run_was(tiny_bert, saved, tmp_path):
    first, folder, cache = saved
    source = json.loads((folder / "medret_quant.json").read_text())["source"]
    assert source["path"] == str(tiny_bert) and len(source["weights"]) == 64
    again = _eval(tiny_bert, tmp_path, cache, f"model.path={folder}")
    assert again["quant"]["reference"]["from"] == "manifest" and again["quant"]["reference"]["path"] == str(tiny_bert)
    assert again["baseline_cache"] == first["baseline_cache"]  # the source's fp32 baseline, reused from the cache
    for metric, d in first["deltas"].items():
        assert again["deltas"][metric]["delta"] == pytest.approx(d["delta"], abs=1e-9)
        assert again["deltas"][metric]["fp32"] == pytest.approx(d["fp32"])
    assert again["verdict"]["outcome"] == first["verdict"]["outcome"]
    assert set(again["profiles"]) == set(first["profiles"])
    assert again["sizes"]["fp32_model_param_bytes"] == first["sizes"]["fp32_model_param_bytes"]
    assert again["quant"]["saved_quant"]["scheme"] == "nf" and again["quant"]["saved_quant"]["bits"] == 4
    row = RunResult.of(again)  # tables name the saved model's scheme and width, not "none"
    assert (row.scheme_label, row.bits) == ("nf", 4)


def test_a_folder_saved_without_its_source_is_unjudged_unless_the_reference_is_named(
    tiny_bert, saved, tmp_path, caplog
):
    first, folder, cache = saved
    old = _copy_editing(folder, tmp_path / "old", lambda m: m.pop("source"))  # as saved before sources were recorded
    with caplog.at_level(logging.WARNING):
        plain = _eval(tiny_bert, tmp_path / "a", cache, f"model.path={old}")
    assert "verdict" not in plain and "saved without the fp32 model it came from" in caplog.text
    named = _eval(tiny_bert, tmp_path / "b", cache, f"model.path={old}", f"model.reference_path={tiny_bert}")
    assert named["quant"]["reference"]["from"] == "model.reference_path"
    assert named["deltas"]["ndcg@10"]["delta"] == pytest.approx(first["deltas"]["ndcg@10"]["delta"], abs=1e-9)


def test_a_source_whose_weights_changed_or_a_reference_for_an_fp32_model_is_one_error_line(
    tiny_bert, tiny_bert_query, saved, tmp_path
):
    _, folder, cache = saved
    # another model now sits where the source was
    moved = _copy_editing(folder, tmp_path / "moved", lambda m: m["source"].update(path=str(tiny_bert_query)))
    with pytest.raises(
        InputError,
        match=r"model.path: the saved model's manifest records its fp32 source .*"
        r"set model.reference_path",
    ):
        _eval(tiny_bert, tmp_path / "a", cache, f"model.path={moved}")
    with pytest.raises(InputError, match=r"model.reference_path=.*only a saved quantized model"):
        _eval(tiny_bert, tmp_path / "b", cache, f"model.reference_path={tiny_bert_query}")
    gone = _copy_editing(folder, tmp_path / "gone-source", lambda m: m["source"].update(path=str(tmp_path / "gone")))
    with pytest.raises(InputError, match=r"^model.path=.*gone-source: its manifest's source.path=.*: no such model"):
        _eval(tiny_bert, tmp_path / "d", cache, f"model.path={gone}")
    with pytest.raises(InputError, match=r"^model.reference_path=.*gone: no such model folder$"):
        _eval(tiny_bert, tmp_path / "c", cache, f"model.path={folder}", f"model.reference_path={tmp_path / 'gone'}")
