"""Train kinds are classes in a registry (prepare / keep best / finish); training checks the options
evaluate checks before anything heavy; an unknown kind is one error line."""

from __future__ import annotations

from pathlib import Path

import pytest

from medret.errors import InputError
from medret.training import kinds, run_train
from medret.training.kinds import TrainKind, register
from tests.test_train import train_cfg


def test_the_shipped_kinds_are_registered():
    assert kinds.names() == ("contrastive", "qat", "qlora", "distill")  # distill registers from its own module
    assert all(isinstance(kinds.train_kind(n), TrainKind) for n in kinds.names())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["train.name=bogus"], r"^train=bogus: expected contrastive, qat, qlora, distill$"),
        (["index.nlist=0"], r"index.nlist=0: expected a positive integer"),
        (["index.factory=Bogus99"], r"index.factory='Bogus99'"),
        (["cache.shard_size=0"], r"cache.shard_size=0: expected a positive number of records"),
        (["cache.dtype=int8"], r"cache.dtype='int8'"),
        (["seed=-1"], r"seed=-1: expected an integer >= 0"),
        (["train=qat", "quant=nf", "quant.bits=4", "quant.rotate=hadamard"], r"^quant.rotate=hadamard: train=qat"),
        (["quant.side=query"], r"^quant.side=query: train.py quantizes both encoders; use quant.side=both$"),
    ],
)
def test_bad_options_are_one_line_before_any_model_loads(tmp_path, extra, message):
    cfg = train_cfg(Path("/nonexistent/model"), "train.max_steps=2", *extra)
    with pytest.raises(InputError, match=message) as err:
        run_train(cfg, tmp_path)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written


class CountingKind(TrainKind):
    """Contrastive training that records which steps the loop called: registered from this file alone."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def prepare(self, retriever, data, cfg):
        self.calls.append(("prepare", None))
        return {"prepared": True}

    def keep_best(self, s, run_dir, step):
        assert s.kind_meta == {"prepared": True}
        self.calls.append(("keep_best", step))
        super().keep_best(s, run_dir, step)

    def finish(self, s, run_dir, state):
        self.calls.append(("finish", state["best_step"]))
        super().finish(s, run_dir, state)
        return {"kind": self.name}


@pytest.fixture
def counting():
    kind = register(CountingKind())
    yield kind
    kinds._KINDS.pop(kind.name)


def test_a_kind_registered_from_a_test_drives_the_loop(counting, tiny_bert, tmp_path):
    res = run_train(train_cfg(tiny_bert, "train.name=counting", "train.max_steps=4", "train.dev_every=2"), tmp_path)
    assert res["steps"] == 4 and res["quant"] == {"kind": "counting"}
    names = [c[0] for c in counting.calls]
    assert names[0] == "prepare" and names[-1] == "finish" and names.count("finish") == 1
    assert all(step in (2, 4) for n, step in counting.calls if n == "keep_best")
    assert (Path(res["best_model"]) / "config.json").is_file()
