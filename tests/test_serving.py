"""The SavedModel export: raw strings in, probabilities out, with no code from this project."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, write_splits

from app.data import synthetic
from app.predict import predict
from app.tasks.inference import softmax

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter outside the repository: TensorFlow and tensorflow_text only.
SERVE_SCRIPT = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)
assert not any(name == "app" or name.startswith("app.") for name in sys.modules)
export, inputs = sys.argv[1], json.loads(sys.argv[2])
serve = tf.saved_model.load(export + "/saved_model").signatures["serving_default"]
names = ["text", "text_pair"][:len(inputs)]
outputs = serve(**{n: tf.constant(column) for n, column in zip(names, inputs)})
result = {"inputs": sorted(serve.structured_input_signature[1])}
for key, value in outputs.items():
    value = value.numpy().tolist()
    result[key] = [v.decode() for v in value] if key == "label" else value
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory) -> Path:
    """A tiny sentence-pair run trained by `python -m app`."""
    root = tmp_path_factory.mktemp("serving")
    data = write_splits(root / "data", ("sentence1", "sentence2", "label"), synthetic.pair_rows,
                        128, 3)
    run_dir = root / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "app", *TINY, "trainer.epochs=1", "data=tsv", f"data.dir={data}",
         "data.text_column=sentence1", "data.text_pair_column=sentence2",
         f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_saved_model_serves_raw_string_pairs_in_a_fresh_process(pair_run, tmp_path):
    recorded = json.loads((pair_run / "export/sample_predictions.json").read_text())
    inputs, logits = recorded["inputs"], np.array(recorded["outputs"])
    assert len(inputs) == 2
    result = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(pair_run / "export"), json.dumps(inputs)],
        cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["inputs"] == ["text", "text_pair"]
    np.testing.assert_allclose(np.array(served["probabilities"]), softmax(logits), atol=1e-5)
    labels = json.loads((pair_run / "labels.json").read_text())
    assert served["label_id"] == logits.argmax(axis=-1).tolist()
    assert served["label"] == [labels[i] for i in served["label_id"]]


def test_predict_on_pairs_matches_the_saved_model_inputs(pair_run, tmp_path):
    recorded = json.loads((pair_run / "export/sample_predictions.json").read_text())
    first, second = recorded["inputs"]
    inputs = synthetic.write_tsv(tmp_path / "pairs.tsv", ("sentence1", "sentence2"),
                                 list(zip(first, second, strict=True)))
    output = predict(pair_run, inputs, tmp_path / "preds.jsonl", progress=False)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert set(rows[0]) == {"sentence1", "sentence2", "label", "probabilities"}
    got = np.array([list(r["probabilities"].values()) for r in rows])
    np.testing.assert_allclose(got, softmax(np.array(recorded["outputs"])), atol=1e-5)


@pytest.mark.slow
def test_regression_run_serves_and_predicts_scores(tmp_path):
    data = write_splits(tmp_path / "data", ("sentence", "score"), synthetic.regression_rows, 96,
                        5)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "app", *TINY, "trainer.epochs=1", "data=tsv", f"data.dir={data}",
         "data.task=regression", "data.label_column=score", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((run_dir / "export/sample_predictions.json").read_text())
    texts, scores = recorded["inputs"][0], np.array(recorded["outputs"]).reshape(-1)

    serve = tf.saved_model.load(str(run_dir / "export/saved_model")).signatures[
        "serving_default"]
    served = serve(text=tf.constant(texts))
    assert set(served) == {"score"}
    np.testing.assert_allclose(served["score"].numpy(), scores, atol=1e-5)

    inputs = synthetic.write_tsv(tmp_path / "new.tsv", ("sentence",), [(t,) for t in texts])
    output = predict(run_dir, inputs, tmp_path / "scores.csv", progress=False)
    lines = output.read_text().splitlines()
    assert lines[0] == "sentence,score" and len(lines) == len(texts) + 1
    np.testing.assert_allclose([float(line.rsplit(",", 1)[1]) for line in lines[1:]], scores,
                               atol=1e-5)
