"""Readers and task specs: formats, and every kind of bad data file."""

import json

import numpy as np
import pytest
from conftest import TINY, compose_config, shared_data

from app.data.readers import read_table
from app.data.task import load_task_data
from app.errors import DataError
from app.train import train


def write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_tsv_csv_and_jsonl_read_the_same_rows(tmp_path):
    tsv = write(tmp_path / "a.tsv", "text\tlabel\nit was good\t1\n\nit was \"bad\"\t0\n")
    csv = write(tmp_path / "a.csv", 'text,label\nit was good,1\n"it was ""bad""",0\n')
    jsonl = write(tmp_path / "a.jsonl", '{"text": "it was good", "label": 1}\n\n'
                  '{"text": "it was \\"bad\\"", "label": 0}\n')
    tables = [read_table(p, f, ["text", "label"]) for p, f in
              ((tsv, "tsv"), (csv, "csv"), (jsonl, "jsonl"))]
    for table in tables:
        assert table.columns == {"text": ["it was good", 'it was "bad"'], "label": ["1", "0"]}
    assert tables[0].lines == [2, 4]


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path / "bom.tsv", "\ufefftext\tlabel\ncafé\t1\n".encode())
    assert read_table(path, "tsv", ["text", "label"]).columns["text"] == ["café"]


@pytest.mark.parametrize("content,fmt,message", [
    ("sentence\tlabel\n", "tsv", "no data rows"),
    ("", "tsv", "the file is empty"),
    ("text\tlabel\nfine\t1\n", "tsv", "column 'sentence' not found"),
    ("sentence\tlabel\nfine\t1\nonly one field\n", "tsv", r":3: expected 2 fields"),
    ("sentence\tlabel\nfine\t1\n\t0\n", "tsv", r":3: empty value in column 'sentence'"),
    ('{"sentence": "x", "label": 1}\n{"sentence": "y"}\n', "jsonl", r":2: missing field 'label'"),
    ('{"sentence": "x", "label": 1}\nnot json\n', "jsonl", r":2: not valid JSON"),
    ("sentence,label\n\"unclosed,1\n", "csv", "expected 2 fields|malformed"),
])
def test_bad_files(tmp_path, content, fmt, message):
    path = write(tmp_path / f"bad.{fmt}", content)
    with pytest.raises(DataError, match=message):
        read_table(path, fmt, ["sentence", "label"])


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path / "latin1.tsv", "sentence\tlabel\nok\t1\ncaf\xe9\t0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.tsv:3: bytes that are not UTF-8"):
        read_table(path, "tsv", ["sentence", "label"])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope.tsv", "tsv", ["sentence"])


def data_config(data_dir, *overrides):
    return compose_config(*TINY, "data=tsv", f"data.dir={data_dir}", *overrides).data


def test_eval_label_never_seen_in_train(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\na\tcat\nb\tdog\n")
    write(tmp_path / "dev.tsv", "sentence\tlabel\na\tcat\nb\tbird\n")
    with pytest.raises(DataError, match=r"dev.tsv:3: label 'bird' .* never occurs in the training"):
        load_task_data(data_config(tmp_path))


def test_non_numeric_regression_target(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\na\t1.5\nb\thigh\n")
    write(tmp_path / "dev.tsv", "sentence\tlabel\na\t1.0\n")
    with pytest.raises(DataError, match=r"train.tsv:3: regression target 'high'"):
        load_task_data(data_config(tmp_path, "data.task=regression"))


def test_integer_labels_keep_their_ids(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\na\t10\nb\t2\nc\t0\n")
    write(tmp_path / "dev.tsv", "sentence\tlabel\na\t2\n")
    task, train_split, eval_split = load_task_data(data_config(tmp_path))
    assert task.label_names == ("0", "2", "10")
    assert train_split.targets.tolist() == [2, 1, 0]
    assert eval_split.targets.tolist() == [1]


def test_max_train_examples_caps_the_split(tmp_path, sentiment_dir):
    _, train_split, _ = load_task_data(data_config(sentiment_dir, "data.max_train_examples=10"))
    assert len(train_split) == 10


def test_bad_data_fails_the_run_before_training(tmp_path):
    write(tmp_path / "data/train.tsv", "sentence\tlabel\na\tcat\nb\tdog\n")
    write(tmp_path / "data/dev.tsv", "sentence\tlabel\na\tbird\n")
    run_dir = tmp_path / "run"
    with pytest.raises(DataError):
        train(compose_config(*TINY, "data=tsv", f"data.dir={tmp_path / 'data'}"), run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "bird" in status["error"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "status.json"]


def test_sst2_reads_whole_glue_files():
    sst2 = shared_data("sst2")
    task, train_split, eval_split = load_task_data(data_config(sst2, "data=sst2",
                                                               f"paths.data_dir={sst2.parent}"))
    assert (len(train_split), len(eval_split)) == (67349, 872)
    assert task.label_names == ("0", "1")
    assert np.bincount(train_split.targets).tolist() == [29780, 37569]
