"""Frequency tiers and quant=auto over the whole model through evaluate (needs the apply/checks/persist/
layers/pipeline hooks of the tiered word-embedding table): options checked before the model loads, sizes,
the packed folder reloaded, the budget met in bytes."""

from __future__ import annotations

import pytest

from medret.errors import InputError
from medret.evaluation import run_evaluate
from tests.test_embedding_budget import TIERS, table_scan  # noqa: F401 (the module's scan fixture)
from tests.test_evaluate import compose_cfg
from tests.test_sensitivity import eval_overrides

TIERED = ("quant=nf", "quant.bits=3", "quant.group_size=16", "quant.embeddings=true")


def test_evaluate_stores_the_tiers_and_reloads_them(tiny_bert, tmp_path):
    tiers = ("quant.embedding_bits=[4,3,2]", f"quant.embedding_tiers={TIERS}")
    over = (*TIERED, *tiers, f"quant.save_dir={tmp_path / 'q'}")
    res = run_evaluate(compose_cfg(*eval_overrides(tiny_bert), *over), tmp_path / "run")
    [table] = [x for x in res["quant"]["layers"] if x["name"] == "embeddings.word_embeddings"]
    assert table["bits"] == [4, 3, 2] and table["index_bits"] == 2 and table["tiers"][0]["rows"] > 0
    assert res["sizes"]["by_part"]["embeddings"] * 8 == pytest.approx(table["effective_bits"] * table["params"])
    again = run_evaluate(
        compose_cfg(*eval_overrides(tiny_bert), f"model.path={tmp_path / 'q'}"),
        tmp_path / "again",
    )
    assert again["quant"]["loaded_packed"] is True
    assert again["metrics"]["ndcg@10"] == pytest.approx(res["metrics"]["ndcg@10"], abs=1e-6)
    assert again["sizes"]["by_part"]["embeddings"] == res["sizes"]["by_part"]["embeddings"]
    with pytest.raises(
        InputError,
        match=r"^quant.embedding_bits=\[4, 2\]: sets the word-embedding table's widths",
    ):
        run_evaluate(
            compose_cfg(
                *eval_overrides(tiny_bert),
                "quant=nf",
                "quant.bits=3",
                "quant.embedding_bits=[4,2]",
            ),
            tmp_path / "bad",
        )


def test_evaluate_auto_over_the_model_reaches_its_budget(table_scan, tiny_bert, tmp_path):  # noqa: F811
    scan_dir, report = table_scan
    emb, size = report["embedding"], report["model_size"]
    items = [*report["layers"], *emb["groups"]]
    cheapest = sum(min(c["effective_bits"] for c in x["curve"].values()) * x["params"] for x in items)
    target = (cheapest + 8 * (size["fixed_bytes"] + emb["index_bytes"])) / size["params_all"] + 0.4
    over = (
        "quant=auto",
        f"quant.target_bits={target}",
        f"quant.sensitivity={scan_dir / 'sensitivity.json'}",
    )
    res = run_evaluate(
        compose_cfg(*eval_overrides(tiny_bert), *over, "quant.budget_over=model"),
        tmp_path / "a",
    )
    auto = res["quant"]["auto"]
    assert auto["achieved_bits_per_param"] == res["quant"]["effective_bits_per_param_all"] <= target
    assert auto["achieved_bits_per_param"] == pytest.approx(auto["predicted_bits_per_param"], rel=1e-12)
    assert res["config"]["quant"]["embedding_bits"] == auto["embedding_bits"]
