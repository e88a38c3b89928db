"""quant.granularity=rows: one group (codebook, scale, offset) shared by ``quant.group_size`` whole consecutive rows,
the grid between one per row (channel) and one per matrix (tensor). And a k-means codebook fitted for a whole matrix
is tuned by refinement and distillation as per-row ones are."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from medret.config import QuantConfig
from medret.errors import InputError
from medret.quant import quantize_retriever, scheme, validate
from medret.quant.embedding import decode_rows
from medret.quant.gptq import gptq_quantize
from medret.quant.linear import QuantLinear
from medret.quant.refine import _Refining
from medret.quant.select import group_size_for
from medret.quant.state import dequantize, fitted_codebook
from medret.quant.ste import SteQuantLinear
from tests.test_gptq import NOTES, layer_inputs, output_error, tiny_retriever
from tests.test_refine import packed

OUT, IN, ROWS = 64, 96, 4
SPECS = [
    QuantConfig(name="kmeans", bits=2, granularity="rows", group_size=ROWS, kmeans_iters=10),
    QuantConfig(name="nf", bits=2, granularity="rows", group_size=ROWS),
    QuantConfig(name="uniform", bits=2, granularity="rows", group_size=ROWS, symmetric=False),
]


def weight(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(OUT, IN, generator=g) * torch.linspace(0.3, 3.0, OUT)[:, None]  # rows of unlike size


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_each_run_of_rows_shares_one_group_and_pays_for_one(spec):
    w = weight()
    gs = group_size_for(w, spec, "layer")
    assert gs == ROWS * IN
    state = scheme(spec.name).quantize(w, spec, gs, None)
    decoded = dequantize(state).view(OUT // ROWS, ROWS * IN)
    for block in decoded:  # every row of a block decodes to the same 2**bits levels
        assert block.unique().numel() <= 2**spec.bits
    assert decoded[0].unique().numel() > 1 and not torch.equal(decoded[0].unique(), decoded[-1].unique())
    # what is stored: the codes plus one group's floats per ROWS rows (fp16 each)
    floats = sum(t.numel() for t in (state.codebook, state.scale, state.offset) if t is not None)
    if spec.name == "kmeans":
        assert state.codebook.shape == (OUT // ROWS, 2**spec.bits) and state.scale is None
    else:  # a fixed grid: one shared codebook, a scale (and offset) per group
        assert state.codebook.shape[0] == 1 and state.scale.shape == (OUT // ROWS,)
    assert state.effective_bits() == pytest.approx(spec.bits + 16 * floats / w.numel())
    # between one group per row and one per matrix, in size and in error
    per_row = scheme(spec.name).quantize(w, replace(spec, granularity="channel"), IN, None)
    per_matrix = scheme(spec.name).quantize(w, replace(spec, granularity="tensor"), w.numel(), None)
    assert per_matrix.effective_bits() < state.effective_bits() < per_row.effective_bits()
    mse = lambda s: (dequantize(s) - w).pow(2).mean().item()  # noqa: E731
    assert mse(per_row) < mse(state) < mse(per_matrix)
    # a table's lookup decodes the rows it is asked for, as the whole decode does
    rows = torch.tensor([0, 3, 5, 17, 63])
    torch.testing.assert_close(decode_rows(state, rows), dequantize(state)[rows], rtol=0, atol=0)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_gptq_on_row_groups_beats_round_to_nearest_on_the_same_grid(spec):
    x = layer_inputs(d_in=IN)
    w, h = weight(), 2 * x.T @ x / len(x)
    rtn = scheme(spec.name).quantize(w, spec, ROWS * IN, None)
    state = gptq_quantize(w, h, spec, ROWS * IN, act_order=True)
    assert state.effective_bits() == rtn.effective_bits()
    for t in ("codebook", "scale", "offset"):  # the grid is fitted on the original weights, as round-to-nearest's
        a, b = getattr(state, t), getattr(rtn, t)
        assert (a is None and b is None) or torch.equal(a, b)
    assert output_error(x, w, dequantize(state)) < 0.95 * output_error(x, w, dequantize(rtn))


def test_a_model_on_row_groups_is_smaller_than_per_row_and_saves_and_loads(tiny_bert, tmp_path):
    from medret.models.saving import save_quantized

    cfg = QuantConfig(
        name="kmeans", bits=2, granularity="rows", group_size=ROWS, method="gptq", act_order=True, calibration_texts=16
    )
    r, per_row = tiny_retriever(tiny_bert), tiny_retriever(tiny_bert)
    info = quantize_retriever(r, cfg, calibration=NOTES)
    info_row = quantize_retriever(per_row, replace(cfg, granularity="channel"), calibration=NOTES)
    assert len(info["layers"]) == 12
    for layer in info["layers"]:
        lin = r.doc.model.get_submodule(layer["name"])
        assert layer["group_size"] == ROWS * lin.in_features
        assert layer["effective_bits"] == pytest.approx(2 + 4 * 16 / (ROWS * lin.in_features))
    assert info["model_bytes"] < info_row["model_bytes"]
    loaded = tiny_retriever(save_quantized(r, tmp_path / "saved", info))
    mine, theirs = packed(r), packed(loaded)
    assert set(mine) == set(theirs) and len(mine) == 12
    for n, m in mine.items():
        assert torch.equal(dequantize(m.state()), dequantize(theirs[n].state())), n
    torch.testing.assert_close(torch.as_tensor(loaded.doc.encode(NOTES, 8)), torch.as_tensor(r.doc.encode(NOTES, 8)))


def test_rows_that_do_not_divide_a_layer_or_a_bad_count_are_one_line(tiny_bert):
    w = torch.zeros(64, 32)
    with pytest.raises(InputError, match=r"quant.group_size=5 \(rows per group\) does not divide the 64 rows of enc.q"):
        group_size_for(w, QuantConfig(name="kmeans", granularity="rows", group_size=5), "enc.q")
    for bad in (0, -2, 1.5):
        with pytest.raises(InputError, match="under granularity=rows, the rows per group"):
            validate(QuantConfig(name="kmeans", bits=2, granularity="rows", group_size=bad))
    with pytest.raises(InputError, match="quant.granularity='row': expected tensor, channel, group or rows"):
        validate(QuantConfig(name="kmeans", bits=2, granularity="row"))
    # a whole model: the first layer whose rows the count does not divide (tiny BERT's are 32 and 64 wide)
    with pytest.raises(InputError, match="rows per group"):
        quantize_retriever(tiny_retriever(tiny_bert), QuantConfig(name="nf", bits=2, granularity="rows", group_size=3))
    # the table's rows (152 tokens) are checked before any linear is rounded: 16 divides every linear, not the table
    r = tiny_retriever(tiny_bert)
    table = QuantConfig(name="kmeans", bits=2, granularity="rows", group_size=16, embeddings=True)
    with pytest.raises(InputError, match="does not divide the 152 rows of embeddings.word_embeddings"):
        quantize_retriever(r, table)
    assert not packed(r)  # nothing was rounded
    for bad in ({"embedding_bits": [4, 2]}, {"embedding_bits": [4]}):  # frequency tiers need groups within a row
        with pytest.raises(InputError, match="tiers need groups within a row .*, not rows"):
            validate(replace(table, group_size=2, **bad))


def test_a_table_on_row_groups_looks_up_saves_and_loads(tiny_bert, tmp_path):
    from medret.models.saving import save_quantized
    from medret.quant.embedding import QuantEmbedding

    cfg = QuantConfig(name="kmeans", bits=2, granularity="rows", group_size=2, embeddings=True, kmeans_iters=5)
    r = tiny_retriever(tiny_bert)
    info = quantize_retriever(r, cfg)
    (emb,) = [m for m in r.doc.model.modules() if isinstance(m, QuantEmbedding)]
    assert emb.codebook.shape == (152 // 2, 4)
    ids = torch.tensor([[3, 7, 8, 151], [0, 1, 2, 3]])
    torch.testing.assert_close(emb(ids), dequantize(emb.state())[ids], rtol=0, atol=0)
    loaded = tiny_retriever(save_quantized(r, tmp_path / "saved", info))
    torch.testing.assert_close(torch.as_tensor(loaded.doc.encode(NOTES, 8)), torch.as_tensor(r.doc.encode(NOTES, 8)))


@pytest.mark.parametrize("granularity", ["tensor", "rows"])
def test_a_fitted_codebook_is_tuned_by_refinement_and_distillation_fixed_levels_are_not(tiny_bert, granularity):
    km = QuantConfig(name="kmeans", bits=2, granularity=granularity, group_size=ROWS, kmeans_iters=5)
    nf = replace(km, name="nf")
    for cfg, fitted in ((km, True), (nf, False)):
        r = tiny_retriever(tiny_bert)
        quantize_retriever(r, cfg)
        lin = next(iter(packed(r).values()))
        assert fitted_codebook(lin.state()) is fitted
        assert ("codebook" in _Refining(lin).tuned) is fitted
        assert ("codebook" in SteQuantLinear(lin).tuned) is fitted


def test_distillation_writes_back_a_tuned_whole_matrix_codebook(tiny_bert):
    r = tiny_retriever(tiny_bert)
    quantize_retriever(r, QuantConfig(name="kmeans", bits=2, granularity="tensor", kmeans_iters=5))
    lin = next(iter(packed(r).values()))
    before = lin.codebook.clone()
    ste = SteQuantLinear(lin)
    x = torch.randn(8, lin.in_features, generator=torch.Generator().manual_seed(0))
    ste(x).pow(2).sum().backward()
    assert ste.tuned["codebook"].grad.abs().sum() > 0
    with torch.no_grad():
        ste.tuned["codebook"] -= 0.01 * ste.tuned["codebook"].grad.sign()
    written, _ = ste.write_back()
    assert written.codebook.shape == (1, 4) and not torch.equal(written.codebook, before)
    assert torch.equal(written.codebook, ste.tuned["codebook"].detach().to(torch.float16))


def test_refinement_moves_a_whole_matrix_codebook(tiny_bert):
    cfg = QuantConfig(name="kmeans", bits=2, granularity="tensor", kmeans_iters=5, calibration_texts=16)
    plain, refined = tiny_retriever(tiny_bert), tiny_retriever(tiny_bert)
    quantize_retriever(plain, cfg, calibration=NOTES)
    info = quantize_retriever(refined, replace(cfg, refine_steps=20, refine_lr=1e-3), calibration=NOTES)
    assert info["refine"][0]["loss_after"] < info["refine"][0]["loss_before"]
    mine, theirs = packed(refined), packed(plain)
    assert all(isinstance(m, QuantLinear) and m.codebook.shape[0] == 1 for m in mine.values())
    assert all(torch.equal(m.planes, theirs[n].planes) for n, m in mine.items())  # codes held
    assert sum(not torch.equal(m.codebook, theirs[n].codebook) for n, m in mine.items()) == len(mine)


def test_refined_whole_matrix_grids_get_new_cache_keys():
    """Refinement tunes a whole matrix's k-means codebook since it stopped holding it: those runs' weights changed, so
    their identity (cache keys, adapter checks) does; every other run's identity is as before."""
    from medret.quant import quant_identity

    tensor = QuantConfig(name="kmeans", bits=2, granularity="tensor", refine_steps=5)
    assert quant_identity(tensor)["refine_tensor_codebook"] is True
    over = replace(tensor, granularity="channel", overrides={"*.query": {"granularity": "tensor"}})
    assert quant_identity(over)["refine_tensor_codebook"] is True
    for same in (replace(tensor, refine_steps=0), replace(tensor, granularity="channel"), SPECS[0]):
        assert "refine_tensor_codebook" not in quant_identity(same)
