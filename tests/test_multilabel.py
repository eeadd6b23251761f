"""Multi-label classification (`data.task=multilabel`): reading, metrics, thresholds, collapse,
a tiny end-to-end run with albert-evaluate / albert-predict, its SavedModel and transformers."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, compose_config
from scipy import special

from app.config.validate import validate
from app.data import synthetic
from app.data.readers import Table
from app.data.task import TaskSpec, load_task_data
from app.errors import ConfigError, DataError
from app.evaluate import evaluate
from app.predict import predict, prediction_rows
from app.runs.read import open_run
from app.train import train
from app.training.collapse import collapse
from app.training.metrics import evaluate_predictions, tune_thresholds

LABELS = ("food", "music", "politics", "science", "sports", "travel")
MULTILABEL = ["data=tsv", "data.task=multilabel", "data.text_column=text",
              "data.label_column=labels"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def read(data_dir: Path, *overrides: str):
    cfg = compose_config(*MULTILABEL, f"data.dir={data_dir}", *overrides)
    return load_task_data(cfg.data)


# === Reading ===

def test_tsv_labels_are_split_on_the_separator_and_stripped(tmp_path):
    write(tmp_path / "train.tsv", "text\tlabels\nx y\tb | a\nz\tc\nw\ta|a\n")
    write(tmp_path / "dev.tsv", "text\tlabels\nq\t c|b \n")
    task, train_split, eval_split = read(tmp_path, "data.label_separator=|")
    assert task.kind == "multilabel" and task.label_names == ("a", "b", "c")
    assert task.num_outputs == 3 and task.thresholds == (0.5, 0.5, 0.5)
    assert train_split.targets.dtype == np.float32
    np.testing.assert_array_equal(train_split.targets, [[1, 1, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(eval_split.targets, [[0, 1, 1]])


def test_jsonl_takes_lists_of_strings_and_separated_strings(tmp_path):
    write(tmp_path / "train.jsonl", '{"text": "x", "labels": ["b", "a"]}\n'
                                    '{"text": "y", "labels": "c,a"}\n'
                                    '{"text": "z", "labels": ["it\'s \\"q\\""]}\n')
    write(tmp_path / "dev.jsonl", '{"text": "x", "labels": ["c"]}\n')
    task, train_split, eval_split = read(tmp_path, "data.format=jsonl",
                                         "data.train_file=train.jsonl",
                                         "data.eval_file=dev.jsonl")
    assert task.label_names == ("a", "b", "c", 'it\'s "q"')
    np.testing.assert_array_equal(train_split.targets,
                                  [[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(eval_split.targets, [[0, 0, 1, 0]])


@pytest.mark.parametrize("train, dev, fmt, message", [
    ("text\tlabels\nx\ta,b\ny\ta,,b\n", "text\tlabels\nx\ta\n", "tsv",
     r"train.tsv:3: an empty label in column 'labels' \(received 'a,,b'\)"),
    ("text\tlabels\nx\ta,b\ny\tb, \n", "text\tlabels\nx\ta\n", "tsv",
     r"train.tsv:3: an empty label"),
    ("text\tlabels\nx\ta,b\n", "text\tlabels\nx\ta\ny\tb,sports\n", "tsv",
     r"dev.tsv:3: label 'sports' in column 'labels' never occurs in the training split"),
    ("text\tlabels\nx\ta\ny\ta\n", "text\tlabels\nx\ta\n", "tsv",
     r"train.tsv: column 'labels' has a single label 'a'; multi-label classification needs "
     r"at least two"),
    ('{"text": "x", "labels": ["a", "b"]}\n{"text": "y", "labels": []}\n',
     '{"text": "x", "labels": ["a"]}\n', "jsonl",
     r"train.jsonl:2: empty value in column 'labels'"),
    ('{"text": "x", "labels": ["a", "b"]}\n', '{"text": "x", "labels": ["a", 7]}\n', "jsonl",
     r"dev.jsonl:1: field 'labels' holds a list with items that are not strings; expected "
     r"text or a list of strings"),
    ('{"text": "x", "labels": ["a", "b"]}\n', '{"text": "x", "labels": ["a", " "]}\n', "jsonl",
     r"dev.jsonl:1: an empty label"),
])
def test_bad_labels_are_errors_naming_file_and_line(tmp_path, train, dev, fmt, message):
    write(tmp_path / f"train.{fmt}", train)
    write(tmp_path / f"dev.{fmt}", dev)
    with pytest.raises(DataError, match=message):
        read(tmp_path, f"data.format={fmt}", f"data.train_file=train.{fmt}",
             f"data.eval_file=dev.{fmt}")


def test_classification_only_keys_are_refused(tmp_path):
    write(tmp_path / "train.tsv", "text\tlabels\nx\ta,b\ny\tb\n")
    write(tmp_path / "dev.tsv", "text\tlabels\nx\ta\n")
    for key, value in (("class_weight", "balanced"), ("positive_label", "a")):
        cfg = compose_config(*MULTILABEL, f"data.dir={tmp_path}", f"data.{key}={value}")
        with pytest.raises(ConfigError, match=rf"`data.{key}` applies to classification only"):
            validate(cfg)


# === Metrics, thresholds, collapse ===

def logits_of(probabilities) -> np.ndarray:
    return special.logit(np.asarray(probabilities, dtype="float64")).astype("float32")


def test_metrics_against_hand_computed_values():
    task = TaskSpec("multilabel", ("a", "b", "c"), thresholds=(0.5, 0.5, 0.3))
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype="float32")
    probabilities = [[0.9, 0.2, 0.1],   # {a}: right
                     [0.8, 0.4, 0.35],  # {a, c}: b missed, c wrong (0.35 >= 0.3)
                     [0.1, 0.1, 0.6],   # {c}: right
                     [0.6, 0.7, 0.2]]   # {a, b}: a wrong, c missed
    metrics = evaluate_predictions(task, targets, logits_of(probabilities))
    # a: tp 2 fp 1 fn 0 -> 4/5; b: tp 1 fp 0 fn 1 -> 2/3; c: tp 1 fp 1 fn 1 -> 1/2
    # micro: tp 4 fp 2 fn 2 -> 8/12
    assert metrics == pytest.approx({"micro_f1": 8 / 12, "macro_f1": (0.8 + 2 / 3 + 0.5) / 3,
                                     "exact_match": 0.5, "f1_a": 0.8, "f1_b": 2 / 3,
                                     "f1_c": 0.5})


def test_thresholds_are_tuned_per_label_ties_closest_to_a_half():
    targets = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]])
    probabilities = np.array([[0.30, 0.90, 0.2],
                              [0.22, 0.10, 0.3],
                              [0.21, 0.05, 0.1],
                              [0.02, 0.60, 0.4]])
    # a: only 0.25 ... keeps 0.30 and loses 0.22 (F1 2/3); thresholds in (0.02, 0.21] keep
    # 0.30, 0.22 and 0.21 (F1 4/5); 0.05 .. 0.20 tie at 4/5 -> 0.20, the closest to 0.5.
    # b: 0.15 .. 0.60 all give F1 1 -> 0.5. c: no positive example, F1 0 everywhere -> 0.5.
    np.testing.assert_allclose(tune_thresholds(targets, probabilities), [0.2, 0.5, 0.5])
    task = TaskSpec("multilabel", ("a", "b", "c"), thresholds=(0.5,) * 3, tune_thresholds=True)
    metrics = evaluate_predictions(task, targets, logits_of(probabilities))
    assert metrics["f1_a"] == pytest.approx(0.8) and metrics["f1_b"] == 1.0


def test_one_predicted_label_set_is_a_collapse():
    task = TaskSpec("multilabel", ("a", "b", "c"), label_separator="|", thresholds=(0.5,) * 3)
    targets = np.array([[1, 1, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype="float32")
    logits = logits_of(np.tile([0.7, 0.6, 0.1], (4, 1)) + np.linspace(0, 0.2, 4)[:, None])
    assert collapse(task, targets, logits) == {"kind": "one_class", "predicted": "a|b",
                                               "eval_share": 0.5}
    logits[3] = logits_of([0.1, 0.1, 0.9])
    assert collapse(task, targets, logits) is None
    assert collapse(task, np.tile([1, 0, 0], (4, 1)), logits_of(np.full((4, 3), 0.2))) is None


def test_prediction_rows_join_labels_or_list_them():
    task = TaskSpec("multilabel", ("a", "b"), label_separator=";", thresholds=(0.5, 0.8))
    table = Table(Path("x.tsv"), {"text": ["one", "two"]}, [2, 3])
    outputs = logits_of([[0.9, 0.7], [0.6, 0.85]])
    rows = prediction_rows(table, ["text"], outputs, ["a", "b"], "tsv", task)
    assert [row["labels"] for row in rows] == ["a", "a;b"]
    assert rows[1]["prob_b"] == pytest.approx(0.85, abs=1e-6)
    rows = prediction_rows(table, ["text"], outputs, ["a", "b"], "jsonl", task)
    assert rows[1]["labels"] == ["a", "b"]
    assert rows[1]["probabilities"] == pytest.approx({"a": 0.6, "b": 0.85}, abs=1e-6)


# === A tiny run, end to end ===

@pytest.fixture(scope="module")
def topics_run(tmp_path_factory) -> Path:
    """A tiny multi-label run with tuned thresholds, trained in this process."""
    root = tmp_path_factory.mktemp("multilabel")
    data = root / "data"
    synthetic.write_tsv(data / "train.tsv", ("text", "labels"), synthetic.topic_rows(192, 1))
    synthetic.write_tsv(data / "dev.tsv", ("text", "labels"), synthetic.topic_rows(48, 2))
    cfg = compose_config(*TINY, *MULTILABEL, f"data.dir={data}", "data.tune_thresholds=true")
    train(cfg, root / "run")
    return root / "run"


def test_training_reports_multilabel_metrics_and_stores_thresholds(topics_run):
    metrics = json.loads((topics_run / "metrics.json").read_text())
    assert metrics["optimized_metric"]["name"] == "val_micro_f1"
    assert set(metrics["final"]) == {"val_loss", "val_micro_f1", "val_macro_f1",
                                     "val_exact_match", *(f"val_f1_{name}" for name in LABELS)}
    assert set(metrics["history"]) >= {"loss", "label_accuracy"}
    assert metrics["thresholds"]["tuned"] is True
    thresholds = json.loads((topics_run / "thresholds.json").read_text())
    assert list(thresholds) == list(LABELS) == json.loads((topics_run / "labels.json").read_text())
    assert metrics["thresholds"]["by_label"] == thresholds
    assert json.loads((topics_run / "export/preset/thresholds.json").read_text()) == thresholds
    assert all(0.05 <= value <= 0.95 for value in thresholds.values())


def test_evaluate_uses_the_stored_thresholds_and_gives_the_final_metrics(topics_run, tmp_path):
    final = json.loads((topics_run / "metrics.json").read_text())["final"]
    record = evaluate(topics_run, progress=False)
    assert record["metrics"] == pytest.approx(
        {name.removeprefix("val_"): value for name, value in final.items()}, abs=1e-5)
    assert record["thresholds"] == json.loads((topics_run / "thresholds.json").read_text())
    # The same split as JSONL with label lists, through the run's readers.
    rows = list(csv.DictReader((topics_run.parent / "data/dev.tsv").open(), delimiter="\t"))
    lines = [json.dumps({"text": r["text"], "labels": r["labels"].split(",")}) for r in rows]
    jsonl = write(tmp_path / "dev.jsonl", "\n".join(lines) + "\n")
    again = evaluate(topics_run, input=jsonl, split="devjson", progress=False)
    assert again["metrics"] == pytest.approx(record["metrics"], abs=1e-5)


def test_predict_writes_label_sets_and_probabilities(topics_run, tmp_path):
    run = open_run(topics_run)
    thresholds = np.array(run.task.thresholds)
    recorded = json.loads((topics_run / "export/sample_predictions.json").read_text())
    texts, logits = recorded["inputs"][0], np.array(recorded["outputs"])
    source = synthetic.write_tsv(tmp_path / "in.tsv", ("text",), [(t,) for t in texts])
    out = predict(topics_run, source, tmp_path / "out.tsv", progress=False)
    rows = list(csv.reader(out.open(encoding="utf-8"), delimiter="\t"))
    assert rows[0] == ["text", "labels", *(f"prob_{name}" for name in LABELS)]
    probabilities = np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    np.testing.assert_allclose(probabilities, special.expit(logits), atol=1e-5)
    expected = [",".join(n for n, on in zip(LABELS, p >= thresholds, strict=True) if on)
                for p in probabilities]
    assert [row[1] for row in rows[1:]] == expected
    out = predict(topics_run, source, tmp_path / "out.jsonl", progress=False)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["labels"] == expected[0].split(",") if expected[0] else first["labels"] == []
    assert list(first["probabilities"]) == list(LABELS)


SERVE_SCRIPT = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(text=tf.constant(json.loads(sys.argv[2])))
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
"""


def test_saved_model_serves_sigmoid_probabilities_and_a_label_mask(topics_run):
    recorded = json.loads((topics_run / "export/sample_predictions.json").read_text())
    texts, logits = recorded["inputs"][0], np.array(recorded["outputs"])
    result = subprocess.run([sys.executable, "-c", SERVE_SCRIPT,
                             str(topics_run / "export/saved_model"), json.dumps(texts)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(served) == {"probabilities", "labels"}
    probabilities = special.expit(logits)
    np.testing.assert_allclose(served["probabilities"], probabilities, atol=1e-5)
    thresholds = np.array(open_run(topics_run).task.thresholds)
    np.testing.assert_array_equal(served["labels"], (probabilities >= thresholds).astype(int))


# === transformers, both ways ===

def test_export_hf_is_multi_label_and_matches_transformers(topics_run):
    torch = pytest.importorskip("torch", reason="the `interop` extra is not installed")
    transformers = pytest.importorskip("transformers", reason="the `interop` extra")
    folder = topics_run / "export/hf"
    config = json.loads((folder / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    recorded = json.loads((topics_run / "export/sample_predictions.json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AlbertForSequenceClassification.from_pretrained(folder).eval()
    assert model.config.problem_type == "multi_label_classification"
    inputs = tokenizer(recorded["inputs"][0], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits.numpy()
    difference = float(np.abs(logits - np.array(recorded["outputs"])).max())
    print("multi-label export/hf vs app: max abs logit diff", difference)
    assert difference < 1e-5


def test_a_transformers_multi_label_classifier_loads_with_its_head(tmp_path):
    pytest.importorskip("torch", reason="the `interop` extra is not installed")
    import torch
    import transformers
    from albert_parity import SMALL, app_inputs, perturb
    from test_transformers_interop import corpus_sentences

    from app.data.tokenizer import train_sentencepiece
    from app.models.classifier import build_task_model
    from app.runtime.loading import load_preset_tokenizer

    spiece = train_sentencepiece(corpus_sentences(), tmp_path / "spiece", vocab_size=200,
                                 lowercase=False, hard_vocab_limit=False)
    import sentencepiece

    vocabulary = sentencepiece.SentencePieceProcessor(model_file=str(spiece)).get_piece_size()
    torch.manual_seed(0)
    config = transformers.AlbertConfig(**SMALL, vocab_size=vocabulary, num_labels=len(LABELS),
                                       problem_type="multi_label_classification")
    reference = transformers.AlbertForSequenceClassification(config).eval()
    perturb(reference)
    folder = tmp_path / "albert"
    reference.save_pretrained(folder, safe_serialization=True)
    (folder / "spiece.model").write_bytes(spiece.read_bytes())
    transformers.AlbertTokenizer.from_pretrained(folder).save_pretrained(folder)

    cfg = compose_config(*TINY, *MULTILABEL, f"model.preset={folder}",
                         "model.classifier_dropout=0.0")
    task = TaskSpec("multilabel", LABELS, thresholds=(0.5,) * len(LABELS))
    model = build_task_model(cfg.model, task, load_preset_tokenizer(str(folder))
                             .vocabulary_size())
    texts = ["the match was discussed .", "the concert and the soup made the news ."]
    hf = transformers.AlbertTokenizer.from_pretrained(folder)(texts, padding=True,
                                                              return_tensors="pt")
    with torch.no_grad():
        expected = reference(**hf).logits.numpy()
    logits = np.asarray(model(app_inputs(folder, texts)))
    difference = float(np.abs(logits - expected).max())
    print("transformers multi-label classifier -> app: max abs logit diff", difference)
    assert difference < 1e-5
