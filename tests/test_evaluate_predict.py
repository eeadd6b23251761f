"""`python -m app.evaluate` and `python -m app.predict` on a finished tiny run."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, run_command, write_splits

from app import evaluate as evaluate_tool
from app import predict as predict_tool
from app.data import synthetic
from app.errors import ConfigError, DataError
from app.evaluate import evaluate
from app.predict import predict
from app.runs.read import open_run
from app.tasks.inference import load_model, softmax

REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny single-sentence run trained by `python -m app` (so it has .hydra/)."""
    root = tmp_path_factory.mktemp("finished")
    data = write_splits(root / "data", ("sentence", "label"), synthetic.sentiment_rows, 192, 1)
    run_dir = root / "run"
    result = run_module("app", *TINY, "trainer.epochs=1", "data=tsv", f"data.dir={data}",
                        f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def sample(run_dir: Path) -> tuple[list[str], np.ndarray]:
    """The inputs and in-run model outputs recorded at export."""
    recorded = json.loads((run_dir / "export/sample_predictions.json").read_text())
    return recorded["inputs"][0], np.array(recorded["outputs"])


def test_evaluate_on_the_dev_split_matches_training(finished_run):
    metrics_file = finished_run / "metrics.json"
    before = metrics_file.read_bytes()
    record = evaluate(finished_run, progress=False)
    final = json.loads(before)["final"]
    assert record["split"] == "dev" and record["num_examples"] == 48
    assert record["label_names"] == ["negative", "positive"]
    assert record["metrics"] == pytest.approx(
        {name.removeprefix("val_"): value for name, value in final.items()}, abs=1e-5)
    assert json.loads((finished_run / "eval_dev.json").read_text()) == record
    assert metrics_file.read_bytes() == before


def test_evaluate_cli_on_another_file_with_other_columns(finished_run, tmp_path):
    rows = synthetic.sentiment_rows(20, seed=9)
    other = tmp_path / "reviews.csv"
    with other.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "review", "stars"])
        writer.writerows((i, text, label) for i, (text, label) in enumerate(rows))
    result = run_module("app.evaluate", f"run={finished_run}", f"input={other}",
                        "data.text_column=review", "data.label_column=stars", "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((finished_run / "eval_reviews.json").read_text())
    assert record["num_examples"] == 20 and record["format"] == "csv"
    assert record["columns"] == {"text": "review", "text_pair": None, "label": "stars"}
    assert set(record["metrics"]) == {"loss", "accuracy", "f1", "mcc"}
    assert "reviews (20 examples): accuracy" in result.stdout


def test_predict_cli_equals_the_in_run_model(finished_run, tmp_path):
    texts, outputs = sample(finished_run)
    inputs = synthetic.write_tsv(tmp_path / "new.tsv", ("sentence",), [(t,) for t in texts])
    output = tmp_path / "preds.tsv"
    result = run_module("app.predict", f"run={finished_run}", f"input={inputs}",
                        f"output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    with output.open() as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    assert list(rows[0]) == ["sentence", "label", "prob_negative", "prob_positive"]
    probabilities = np.array([[float(r["prob_negative"]), float(r["prob_positive"])]
                              for r in rows])
    np.testing.assert_allclose(probabilities, softmax(outputs), atol=1e-5)
    expected = [["negative", "positive"][i] for i in outputs.argmax(axis=-1)]
    assert [r["label"] for r in rows] == expected
    assert [r["sentence"] for r in rows] == texts


def test_predict_jsonl_and_best_checkpoint(finished_run, tmp_path):
    texts, outputs = sample(finished_run)
    inputs = tmp_path / "new.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    output = predict(finished_run, inputs, tmp_path / "out" / "preds.jsonl", progress=False,
                     overrides={"text_column": "text"})
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(texts) and set(rows[0]) == {"text", "label", "probabilities"}
    got = np.array([[r["probabilities"]["negative"], r["probabilities"]["positive"]]
                    for r in rows])
    np.testing.assert_allclose(got, softmax(outputs), atol=1e-5)
    # One epoch: the best checkpoint holds the exported weights; rebuilt from config + tokenizer.
    rebuilt = load_model(open_run(finished_run), "best")
    np.testing.assert_allclose(rebuilt.predict(np.array(texts), verbose=0), outputs, atol=1e-5)


def test_bad_inputs_give_clear_errors(finished_run, tmp_path, monkeypatch):
    code = run_command(monkeypatch, evaluate_tool.main, f"run={tmp_path / 'nowhere'}")
    assert re.fullmatch(r"error: `run` does not exist. Received: '.*nowhere'.*", code)
    code = run_command(monkeypatch, predict_tool.main, f"run={finished_run}", "output=x.tsv")
    assert code.startswith("error: `input` is required.")
    assert code.endswith("expected input=<value>")
    code = run_command(monkeypatch, evaluate_tool.main, f"run={finished_run}", "splt=test")
    assert code.startswith("error: unknown key `splt` for this command. Received: 'splt=test'")
    assert "'run'" in code and "'split'" in code
    code = run_command(monkeypatch, predict_tool.main, f"run={finished_run}", "data.txt_col=a")
    assert "unknown key `data.txt_col` for `data`" in code and "'text_column'" in code

    wrong = synthetic.write_tsv(tmp_path / "wrong.tsv", ("text", "label"), [("a b .", "positive")])
    with pytest.raises(DataError, match=r"wrong.tsv:1: column 'sentence' not found; the header "
                                        r"has \['text', 'label'\]"):
        evaluate(finished_run, input=wrong, progress=False)
    unknown = synthetic.write_tsv(tmp_path / "unknown.tsv", ("sentence", "label"),
                                  [("the cast was fun .", "positive"), ("meh .", "neutral")])
    with pytest.raises(DataError, match=r"unknown.tsv:3: label 'neutral' in column 'label' never "
                                        r"occurs in the training split; expected one of "
                                        r"\['negative', 'positive'\]"):
        evaluate(finished_run, input=unknown, progress=False)
    with pytest.raises(ConfigError, match="trained on single sentences"):
        predict(finished_run, wrong, tmp_path / "p.tsv", overrides={
            "text_column": "text", "text_pair_column": "label"})
    with pytest.raises(ConfigError, match="cannot tell the output format"):
        predict(finished_run, wrong, tmp_path / "p.txt")

    failed = tmp_path / "failed_run"
    failed.mkdir()
    (failed / "status.json").write_text('{"status": "failed", "error": "ConfigError: boom"}')
    with pytest.raises(ConfigError, match=r"has not completed: its status is 'failed' "
                                          r"\(ConfigError: boom\)"):
        evaluate(failed)


def test_cli_errors_exit_without_traceback(tmp_path):
    result = run_module("app.predict", f"run={tmp_path}", "input=x.tsv", "output=y.tsv")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"error: `run` is not a run folder: no status.json. "
                                          f"Received: '{tmp_path}'")
    assert "Traceback" not in result.stderr
