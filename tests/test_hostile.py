"""Hostile and odd input, table-driven: every bad input is exactly one ``error:`` line naming the file or
option, exit code 2, no traceback and no record text; odd but usable input runs with a warning and a
count in results.json["data"]["warnings"]. Each case builds its files in tmp_path.

Most cases run the real entry (``run_task`` over a Hydra-composed config) in this process, which is
what ``evaluate.py``/``train.py`` call; a few run the scripts as subprocesses for the exit code itself.
"""

# ruff: noqa: E501  (the case table reads best one case per line)
from __future__ import annotations

import bz2
import gzip
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from medret.config import register_configs
from medret.data.files import CSV_FIELD_LIMIT
from medret.launch.task import run_task

ROOT = Path(__file__).resolve().parents[1]
MARK = "zebramarkerword"  # in every record and query: it must never reach the output
register_configs()


def jsonl(rows: list[dict], bom: bool = False) -> bytes:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


def docs(n: int = 12) -> list[dict]:
    return [
        {"_id": f"d{i}", "title": f"{MARK} note", "text": f"{MARK} patient {i} diabetes metformin"} for i in range(n)
    ]


def queries(n: int = 3) -> list[dict]:
    return [{"_id": f"q{i}", "text": f"{MARK} diabetes {i}"} for i in range(n)]


def csv_rows(rows: list[dict]) -> bytes:
    return ("_id,title,text\n" + "".join(f"{r['_id']},{r['title']},{r['text']}\n" for r in rows)).encode()


QRELS = b"query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t2\nq2\td2\t1\n"
GOOD = {"corpus.jsonl": jsonl(docs()), "queries.jsonl": jsonl(queries()), "qrels.tsv": QRELS}
RECORDS = [
    "data=records",
    "data.corpus_file={d}/corpus.jsonl",
    "data.queries_file={d}/queries.jsonl",
    "data.qrels_file={d}/qrels.tsv",
]


def beir(corpus: bytes | None = None) -> dict:
    files = {"b/queries.jsonl": jsonl(queries()), "b/qrels/test.tsv": QRELS}
    if corpus is not None:
        files["b/corpus.jsonl"] = corpus
    return files


def truncated_gzip() -> bytes:
    blob = gzip.compress(jsonl(docs(400)))
    return blob[: len(blob) // 2]


def corrupted_gzip() -> bytes:
    blob = bytearray(gzip.compress(jsonl(docs(400))))
    blob[40:60] = b"\x00" * 20
    return bytes(blob)


def symlink_loop(d: Path) -> None:
    (d / "b" / "corpus.jsonl").symlink_to(d / "b" / "corpus.jsonl")


def dangling_link(d: Path) -> None:
    (d / "b" / "corpus.jsonl").symlink_to(d / "b" / "gone.jsonl")


def model_folder(files: dict[str, bytes]) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / "m").mkdir()
        for name, content in files.items():
            (d / "m" / name).write_bytes(content)

    return make


def broken_weights(bert: Path) -> Callable[[Path], None]:
    """A real tokenizer and config beside a weights file that is not safetensors."""

    def make(d: Path) -> None:
        (d / "m").mkdir()
        for f in bert.iterdir():
            if f.name != "model.safetensors":
                (d / "m" / f.name).write_bytes(f.read_bytes())
        (d / "m" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")

    return make


@dataclass
class Case:
    id: str
    expect: str  # a piece of the one error line
    files: dict[str, bytes] = field(default_factory=lambda: dict(GOOD))
    overrides: list[str] = field(default_factory=lambda: list(RECORDS))
    setup: Callable[[Path], None] | None = None
    entry: str = "evaluate"


def case(id: str, expect: str, *overrides: str, files: dict | None = None, setup=None, entry="evaluate") -> Case:
    """A records-set case: ``overrides`` come after the records defaults, ``files`` replace the good ones."""
    return Case(id, expect, {**GOOD, **(files or {})}, [*RECORDS, *overrides], setup, entry)


BAD = [
    # files that are not UTF-8 text
    case(
        "latin1_corpus",
        "corpus.jsonl:3: not UTF-8",
        files={"corpus.jsonl": jsonl(docs(2)) + b'{"_id": "x", "text": "caf\xe9"}\n'},
    ),
    case(
        "utf16_queries",
        "queries.jsonl: UTF-16",
        files={"queries.jsonl": "\ufeff".encode("utf-16-le") + "x".encode("utf-16-le")},
    ),
    case(
        "utf16_no_bom",
        "queries.jsonl:1: NUL bytes",
        files={"queries.jsonl": json.dumps(queries()[0]).encode("utf-16-le")},
    ),
    case("stray_byte_qrels", "qrels.tsv:3: not UTF-8", files={"qrels.tsv": QRELS.replace(b"q1\td1", b"q1\td\x9f1")}),
    case(
        "latin1_csv",
        "corpus.csv:2: not UTF-8",
        "data.corpus_file={d}/corpus.csv",
        files={"corpus.csv": b"_id,text\nd0,na\xefve\n"},
    ),
    case(
        "nul_in_csv",
        "corpus.csv:2: NUL bytes",
        "data.corpus_file={d}/corpus.csv",
        files={"corpus.csv": b"_id,text\nd0,a\x00b\n"},
    ),
    # compressed, damaged or not text at all
    case(
        "gz_name_plain_text",
        "named .gz but not gzip",
        "data.corpus_file={d}/c.jsonl.gz",
        files={"c.jsonl.gz": jsonl(docs())},
    ),
    case("gzip_truncated", "damaged gzip", "data.corpus_file={d}/c.jsonl.gz", files={"c.jsonl.gz": truncated_gzip()}),
    case("gzip_corrupted", "damaged gzip", "data.corpus_file={d}/c.jsonl.gz", files={"c.jsonl.gz": corrupted_gzip()}),
    case("xlsx_records", "xlsx", "data.corpus_file={d}/notes.xlsx", files={"notes.xlsx": b"PK\x03\x04" + b"\x00" * 64}),
    case(
        "xls_records",
        "old Office document",
        "data.corpus_file={d}/notes.xls",
        files={"notes.xls": b"\xd0\xcf\x11\xe0" + b"\x00" * 64},
    ),
    case("bzip2_as_jsonl", "bzip2-compressed", files={"corpus.jsonl": bz2.compress(jsonl(docs()))}),
    # CSV structure
    case(
        "oversized_csv_field",
        f"corpus.csv:3: CSV field longer than {CSV_FIELD_LIMIT}",
        "data.corpus_file={d}/corpus.csv",
        files={"corpus.csv": b'_id,text\nd0,short\nd1,"' + b"x" * (CSV_FIELD_LIMIT + 10) + b'"\n'},
    ),
    case(
        "unclosed_quote",
        "corpus.csv:3: unclosed quote",
        "data.corpus_file={d}/corpus.csv",
        files={"corpus.csv": f'_id,text\nd0,a\nd1,"{MARK} open\nd2,b\nd3,c\n'.encode()},
    ),
    case(
        "stray_quote",
        "corpus.csv:2: malformed CSV",
        "data.corpus_file={d}/corpus.csv",
        files={"corpus.csv": b'_id,text\nd0,"a"b\n'},
    ),
    case(
        "csv_without_id",
        "corpus.csv:1: CSV header must name an '_id'",
        "data.corpus_file={d}/corpus.csv",
        files={"corpus.csv": b"id,text\n1,a\n"},
    ),
    # where the files are
    case(
        "symlink_loop",
        "corpus.jsonl: symbolic link loop",
        "data=beir",
        "data.path={d}/b",
        files=beir(),
        setup=symlink_loop,
    ),
    case(
        "dangling_symlink",
        "corpus.jsonl: broken symbolic link",
        "data=beir",
        "data.path={d}/b",
        files=beir(),
        setup=dangling_link,
    ),
    case("beir_without_corpus", "no corpus.jsonl", "data=beir", "data.path={d}/b", files=beir()),
    case(
        "corpus_is_directory",
        "is a directory, expected a file",
        "data.corpus_file={d}/sub",
        setup=lambda d: (d / "sub").mkdir(),
    ),
    case("qrels_missing", "nope.tsv: file not found", "data.qrels_file={d}/nope.tsv"),
    case("empty_corpus", "empty corpus", files={"corpus.jsonl": b""}),
    case("empty_queries_file", "queries.jsonl: no queries", files={"queries.jsonl": b"\n"}),
    case("qrels_float_grade", "qrels.tsv:1: score must be an integer", files={"qrels.tsv": b"q0\td0\t1.0\n"}),
    case("qrels_two_columns", "qrels.tsv:2: expected 3", files={"qrels.tsv": b"q0\td0\t1\nq1 d1\n"}),
    case(
        "qrels_grade_beyond_int8",
        "qrels.tsv:2: score 300 is out of range",
        files={"qrels.tsv": b"q0\td0\t1\nq1\td1\t300\n"},
    ),
    # a records TSV given as qrels: its third column is note text, which the message must not echo
    case(
        "qrels_is_a_records_tsv",
        "qrels.tsv:2: score must be an integer, got text",
        files={"qrels.tsv": f"_id\ttitle\ttext\nd0\tnote\t{MARK} patient\n".encode()},
    ),
    case("only_negative_grades", "no query has a relevant judged document", files={"qrels.tsv": b"q0\td0\t-1\n"}),
    # model folders and hub ids
    case(
        "model_missing",
        "model.path=/nonexistent/medret/model: no such model folder",
        "model.path=/nonexistent/medret/model",
    ),
    # the model folder is checked with the options, before any data file is read
    case(
        "model_missing_and_corpus_empty",
        "model.path=/nonexistent/medret/model: no such model folder",
        "model.path=/nonexistent/medret/model",
        files={"corpus.jsonl": b""},
    ),
    case("model_empty_folder", "an empty folder", "model.path={d}/m", setup=model_folder({})),
    case(
        "model_is_text_file",
        "is a file; expected a model folder",
        "model.path={d}/notes.txt",
        files={"notes.txt": b"hello"},
    ),
    case(
        "model_config_no_weights",
        "config.json but no weights",
        "model.path={d}/m",
        setup=model_folder({"config.json": b"{}"}),
    ),
    case(
        "model_config_not_json",
        "config.json is not valid JSON",
        "model.path={d}/m",
        setup=model_folder({"config.json": b"{oops"}),
    ),
    case("model_folder_no_config", "no config.json", "model.path={d}/m", setup=model_folder({"vocab.txt": b"a"})),
    case(
        "model_modules_json_damaged",
        "modules.json: not valid JSON",
        "model.path={d}/m",
        setup=model_folder({"config.json": b"{}", "modules.json": b"[{oops", "model.safetensors": b""}),
    ),
    case(
        "hub_model_not_cached",
        "model 'ncbi/MedCPT-Article-Encoder' is not in the local Hugging Face cache",
        "model=medcpt",
        "model.path=ncbi/MedCPT-Article-Encoder",
    ),
    # model options
    case("batch_size_zero", "model.batch_size=0", "model.batch_size=0"),
    case("max_length_zero", "model.max_length=0", "model.max_length=0"),
    case("max_length_past_positions", "model.max_length=4096: the model", "model.max_length=4096"),
    case("passage_tokens_past_window", "data.passage_tokens=300", "model.max_length=256", "data.passage_tokens=300"),
    case("device_typo", "model.device='gpu'", "model.device=gpu"),
    # eval, index, logger, cache, data options
    case("k_values_empty", "eval.k_values=[]", "eval.k_values=[]"),
    case("k_values_zero", "eval.k_values=[0, 10]", "eval.k_values=[0,10]"),
    case("k_values_negative", "eval.k_values=[-5]", "eval.k_values=[-5]"),
    case("k_beyond_corpus", "eval.k_values: k=100 is larger than the corpus", "eval.k_values=[1,10,100]"),
    case(
        "default_k_tiny_corpus",
        "eval.k_values: the default list clipped to the corpus of corpus (6 documents) is [1, 3, 5]",
        "eval.k_values=[1,3,5,10,100]",
        files={"corpus.jsonl": jsonl(docs(6))},
    ),
    case("bootstrap_zero", "eval.bootstrap_resamples=0", "eval.bootstrap_resamples=0"),
    case("max_queries_zero", "data.max_queries=0", "data.max_queries=0"),
    case("index_nlist_zero", "index.nlist=0", "index=ivf_pq", "index.nlist=0"),
    case("index_factory_garbage", "index.factory='Garbage42'", "index.factory=Garbage42"),
    case("index_nlist_above_corpus", "index.nlist=256: IVF needs that many", "index=ivf_pq", "index.m=8"),
    case(
        "index_m_not_dividing_dim",
        "index.m=7: PQ sub-quantizers must divide the embedding dim 32",
        "index=pq",
        "index.m=7",
    ),
    case("index_device_typo", "index.device='tpu'", "index.device=tpu"),
    case("logger_mode_typo", "logger.mode='onlin'", "logger=wandb", "logger.mode=onlin"),
    case("cache_shard_size_zero", "cache.shard_size=0", "cache.shard_size=0"),
    case(
        "synthetic_too_many_queries",
        "data.num_queries=300: the synthetic generator found only",
        "data=synthetic",
        "data.num_records=1",
        "data.num_queries=300",
    ),
    # training options
    case("train_max_steps_zero", "train.max_steps=0", "train.max_steps=0", entry="train"),
    case("train_lr_nan", "train.lr=nan", "train.lr=nan", entry="train"),
    case("train_batch_zero", "train.batch_size=0", "train.batch_size=0", "train.hard_negatives=1", entry="train"),
    case("train_dev_every_zero", "train.dev_every=0", "train.dev_every=0", entry="train"),
]


def build(c: Case, d: Path) -> list[str]:
    for name, content in c.files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(content)
    if c.setup is not None:
        c.setup(d)
    return [o.format(d=d) for o in c.overrides]


def run_entry(entry: str, overrides: list[str], run_dir: Path) -> dict | None:
    """What evaluate.py / train.py do, in this process: compose, then ``run_task``."""
    from medret.evaluation import run_evaluate
    from medret.training import run_train

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=entry, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    captured: dict = {}

    def task(c, d):
        captured.update(run_evaluate(c, d) if entry == "evaluate" else run_train(c, d))
        return captured

    run_task(task, cfg)
    return captured


def common(bert: Path, d: Path) -> list[str]:
    return [
        f"model.path={bert}",
        "model.name=tiny",
        "logger=none",
        "eval.k_values=[1,5,10]",
        f"cache.dir={d}/cache",
        "eval.bootstrap_resamples=50",
    ]


def test_table_has_at_least_forty_cases():
    assert len(BAD) >= 40 and len({c.id for c in BAD}) == len(BAD)


@pytest.mark.parametrize("c", BAD, ids=[c.id for c in BAD])
def test_bad_input_is_one_error_line(c: Case, tiny_bert, tmp_path, capsys, caplog):
    overrides = [*common(tiny_bert, tmp_path), *build(c, tmp_path)]
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_info:
        run_entry(c.entry, overrides, tmp_path / "run")
    out = capsys.readouterr()
    assert exit_info.value.code == 2
    errors = [ln for ln in out.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out.err
    assert c.expect in errors[0], errors[0]
    assert "Traceback" not in out.err + out.out
    assert MARK not in out.err + out.out + caplog.text
    assert not (tmp_path / "run" / "results.json").exists()


def results_of(tiny_bert: Path, d: Path, files: dict, *overrides: str, caplog) -> dict:
    with caplog.at_level(logging.WARNING):
        return run_entry(
            "evaluate", [*common(tiny_bert, d), *build(Case("", "", files, [*RECORDS, *overrides]), d)], d / "run"
        )


def test_bom_in_jsonl_and_csv_is_accepted(tiny_bert, tmp_path, caplog):
    files = {
        **GOOD,
        "corpus.csv": b"\xef\xbb\xbf" + csv_rows(docs()),
        "queries.jsonl": jsonl(queries(), bom=True),
        "qrels.tsv": b"\xef\xbb\xbf" + QRELS,
    }
    res = results_of(tiny_bert, tmp_path, files, "data.corpus_file={d}/corpus.csv", caplog=caplog)
    assert (res["data"]["num_docs"], res["data"]["num_queries"]) == (12, 3)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["data"]["warnings"] == res["data"]["warnings"]
    assert not any(res["data"]["warnings"].values())


def test_headerless_crlf_qrels_keep_their_first_row(tiny_bert, tmp_path, caplog):
    files = {**GOOD, "qrels.tsv": b"q0\td0\t1\r\nq1\td1\t2\r\nq2\td2\t1\r\n"}
    res = results_of(tiny_bert, tmp_path, files, caplog=caplog)
    assert res["data"]["num_queries"] == 3 and res["data"]["num_qrels"] == 3


def test_conflicting_and_negative_judgements_are_warned_and_counted(tiny_bert, tmp_path, caplog):
    qrels = QRELS + b"q0\td0\t2\nq0\td5\t-1\nq1\td6\t-2\nq2\td2\t1\n"  # one conflict, an identical repeat
    res = results_of(tiny_bert, tmp_path, {**GOOD, "qrels.tsv": qrels}, caplog=caplog)
    w = res["data"]["warnings"]
    assert (w["conflicting_judgements"], w["negative_grades"]) == (1, 2)
    assert (
        "qrels.tsv: 1 pairs judged again with a different grade; the highest is kept (first on line 5)" in caplog.text
    )
    assert "qrels.tsv: 2 negative grades read as 0 (first on line 6)" in caplog.text
    per_query = [json.loads(x) for x in (tmp_path / "run" / "per_query.jsonl").read_text().splitlines()]
    assert {r["query_id"] for r in per_query} == {"q0", "q1", "q2"}


def test_judged_queries_without_relevant_records_are_counted(tiny_bert, tmp_path, caplog):
    qrels = QRELS + b"q3\td3\t0\nq4\td4\t-1\n"
    files = {**GOOD, "queries.jsonl": jsonl(queries(6)), "qrels.tsv": qrels}
    res = results_of(tiny_bert, tmp_path, files, caplog=caplog)
    w = res["data"]["warnings"]
    assert (w["queries_without_relevant"], w["queries_without_judgements"], res["data"]["num_queries"]) == (2, 1, 3)
    assert "2 judged queries have no relevant record; left out" in caplog.text


def test_empty_texts_are_warned_counted_and_empty_queries_left_out(tiny_bert, tmp_path, caplog):
    corpus = docs()
    corpus[4] = {"_id": "d4", "text": "   "}
    qs = queries(4)
    qs[3] = {"_id": "q3", "text": ""}
    files = {**GOOD, "corpus.jsonl": jsonl(corpus), "queries.jsonl": jsonl(qs), "qrels.tsv": QRELS + b"q3\td3\t1\n"}
    res = results_of(tiny_bert, tmp_path, files, caplog=caplog)
    w = res["data"]["warnings"]
    assert (w["empty_documents"], w["empty_queries"], res["data"]["num_queries"], res["data"]["num_docs"]) == (
        1,
        1,
        3,
        12,
    )
    assert "corpus.jsonl: 1 records have no text; they are kept (first is record 5)" in caplog.text


def test_quant_bits_without_a_width_is_dropped_and_the_default_k_list_clipped(tiny_bert, tmp_path, caplog):
    res = results_of(tiny_bert, tmp_path, GOOD, "quant.bits=4", "eval.k_values=[1,3,5,10,100]", caplog=caplog)
    assert res["config"]["quant"]["bits"] is None
    assert "quant.bits=4 is ignored by quant=none" in caplog.text
    assert res["config"]["eval"]["k_values"] == [1, 3, 5, 10]
    assert "ndcg@10" in res["metrics"] and not any(m.endswith("@100") for m in res["metrics"])
    assert (
        "eval.k_values: the default list clipped to [1, 3, 5, 10] for the corpus of corpus (12 documents)"
        in caplog.text
    )


def test_synthetic_queries_are_distinct():
    from medret.data import synthetic

    texts = [q.text for q in synthetic.make_queries(13, 2000, 200, "test")]
    assert len(texts) == 200 and len(set(texts)) == 200


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


@pytest.mark.parametrize(
    "script,args,expect",
    [
        ("evaluate.py", ["hydra.run.dir={d}/afile/run"], "hydra.run.dir={d}/afile/run: "),
        ("train.py", ["hydra.run.dir={d}/afile"], "hydra.run.dir={d}/afile: "),
        ("evaluate.py", [*RECORDS, "hydra.run.dir={d}/run"], "{d}/queries.jsonl: UTF-16 text"),
    ],
    ids=["evaluate_run_dir_is_file", "train_run_dir_is_file", "evaluate_utf16_queries"],
)
def test_scripts_exit_2_with_one_line(script, args, expect, tiny_bert, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    build(Case("", "", {**GOOD, "queries.jsonl": jsonl(queries()).decode().encode("utf-16")}, []), tmp_path)
    proc = run_script(script, *common(tiny_bert, tmp_path), *[a.format(d=tmp_path) for a in args])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [ln for ln in errors if expect.format(d=tmp_path) in ln] and len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and MARK not in proc.stderr + proc.stdout


def test_long_csv_notes_beyond_pythons_default_field_limit_are_read(tmp_path):
    from medret.data.files import read_texts

    note = "metformin " * 30_000  # 300k characters: over csv's 128 KiB default, far under CSV_FIELD_LIMIT
    (tmp_path / "notes.csv").write_text(f'_id,text\nd0,"{note}"\nd1,short\n', encoding="utf-8")
    ids, texts = read_texts(tmp_path / "notes.csv", ("text",), "text")
    assert ids == ["d0", "d1"] and texts == [note, "short"]
