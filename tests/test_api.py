"""`app.api` (train, evaluate, predict from Python): the commands' results, run folders and
errors, and nothing left behind between calls in one process."""

import json
import logging
import shutil

import pytest
from conftest import TINY, write_splits
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from app.api import evaluate, predict, quoted, train
from app.data import synthetic
from app.errors import ConfigError, DataError
from app.predict import predict as predict_command

TEXTS = ["a fine , moving film .", "dull and far too long .", "the plot ? ! ok", "é"]


class Sentinel(logging.Handler):
    """A caller's own handler: must survive the calls and see none of their lines."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two tiny runs trained by `train` with the same overrides in this process."""
    root = tmp_path_factory.mktemp("api")
    data = write_splits(root / "data", ("sentence", "label"), synthetic.sentiment_rows, 192, 1)
    overrides = [*TINY, "trainer.epochs=1", "data=tsv", f"data.dir={data}",
                 f"paths.output_dir={root / 'experiments'}", "name=api"]
    root_logger = logging.getLogger()
    sentinel = Sentinel()
    root_logger.addHandler(sentinel)
    handlers, level = list(root_logger.handlers), root_logger.level
    try:
        first = train(overrides)
        assert not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()
        assert root_logger.handlers == handlers and root_logger.level == level
        second = train(overrides)
    finally:
        root_logger.removeHandler(sentinel)
    assert root_logger.handlers == [h for h in handlers if h is not sentinel]
    return {"first": first, "second": second, "overrides": overrides, "root": root,
            "sentinel": sentinel}


def test_train_writes_the_commands_run_folder(runs):
    run, metrics = runs["first"]["run"], runs["first"]["metrics"]
    assert run.parent == runs["root"] / "experiments" / "api"
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert json.loads((run / "status.json").read_text()) == {"status": "completed"}
    for path in ("export/model.keras", "export/preset", "export/saved_model", "config.yaml",
                 "checkpoints/best.weights.h5", ".hydra/config.yaml", ".hydra/hydra.yaml"):
        assert (run / path).exists(), path
    assert OmegaConf.load(run / ".hydra/overrides.yaml") == runs["overrides"]
    assert OmegaConf.load(run / ".hydra/config.yaml").name == "api"
    assert runs["second"]["run"] != run  # one run, one folder


def test_train_log_is_written_once_per_run_and_the_callers_logging_is_untouched(runs):
    for result in (runs["first"], runs["second"]):
        log = (result["run"] / "train.log").read_text()
        assert log.count("Run folder:") == 1 and "Training 1 epochs of 12 steps" in log
        assert str(result["run"]) in log
    assert not runs["sentinel"].records


def test_train_twice_in_one_process_gives_the_same_metrics(runs):
    first, second = runs["first"]["metrics"], runs["second"]["metrics"]
    assert first["final"] == second["final"] and first["history"] == second["history"]


def test_evaluate_equals_the_runs_final_metrics(runs):
    run = runs["first"]["run"]
    record = evaluate(run, ["progress=false"])
    final = runs["first"]["metrics"]["final"]
    assert record["split"] == "dev" and record["num_examples"] == 48
    assert record["metrics"] == pytest.approx(
        {name.removeprefix("val_"): value for name, value in final.items()}, abs=1e-5)
    assert json.loads((run / "eval_dev.json").read_text()) == record


def test_predict_equals_albert_predict(runs, tmp_path):
    run = runs["first"]["run"]
    rows = predict(run, TEXTS)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"sentence": text}) + "\n" for text in TEXTS))
    output = predict_command(run, inputs, tmp_path / "out.jsonl", progress=False)
    expected = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows == expected and len(rows) == len(TEXTS)
    assert set(rows[0]) == {"sentence", "label", "probabilities"}
    assert rows[0]["label"] in ("negative", "positive")
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0)
    # One epoch: the best checkpoint holds the exported model's weights.
    (best,) = predict(run, TEXTS[:1], ["checkpoint=best", "batch_size=1"])
    assert best["label"] == rows[0]["label"]
    assert best["probabilities"] == pytest.approx(rows[0]["probabilities"], abs=1e-5)
    assert predict(run, (text for text in TEXTS)) == rows  # any iterable of texts
    assert predict(run, []) == []


def test_resume_continues_a_run_in_its_own_folder(runs, tmp_path):
    """A run killed during its export: resume trains nothing more and reports its epoch."""
    original = runs["first"]["run"]
    copy = tmp_path / "killed"
    shutil.copytree(original, copy)
    (copy / "status.json").write_text(json.dumps({"status": "failed", "error": "killed"}))
    (copy / "metrics.json").unlink()
    shutil.rmtree(copy / "export")
    result = train(resume=copy)
    assert result["run"] == copy.resolve() or result["run"] == copy
    assert result["metrics"]["final"] == runs["first"]["metrics"]["final"]
    assert (copy / "export/model.keras").is_file()
    assert json.loads((copy / "status.json").read_text()) == {"status": "completed"}
    assert len(list((copy / ".hydra").glob("resume-*"))) == 1
    with pytest.raises(ConfigError, match="already completed"):
        train(resume=copy)


def test_errors_are_exceptions_not_exits(runs, tmp_path):
    run = runs["first"]["run"]
    with pytest.raises(ConfigError, match="unknown key `model.no_such`"):
        train(["model.no_such=1"])
    with pytest.raises(ConfigError, match="Could not find 'model/nope'"):
        train(["model=nope"])
    with pytest.raises(ConfigError, match="could not be converted to Integer"):
        train(["trainer.epochs=abc"])
    with pytest.raises(ConfigError, match="does not exist"):
        train(resume=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="flags are for the command line"):
        train(["-m", "seed=1,2"])
    with pytest.raises(ConfigError, match="input file does not exist"):
        evaluate(run, ["split=nothere"])
    with pytest.raises(ConfigError, match="must be a list of texts"):
        predict(run, "a single string")
    with pytest.raises(ConfigError, match=r"`texts\[1\]` must be a string"):
        predict(run, ["fine", ("a", "pair")])
    with pytest.raises(DataError, match=r"`texts\[0\]`: empty text"):
        predict(run, [" "])  # as albert-predict refuses an empty value
    with pytest.raises(ConfigError, match="not an option of app.api.predict"):
        predict(run, ["fine"], ["output=x.tsv"])
    assert not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()


@pytest.mark.parametrize("path", ["/runs/a b,c=d", "/runs/it's", "/runs/${x}/a\\'b\\"])
def test_quoted_paths_reach_the_config_as_they_are(path):
    from conftest import compose_config

    assert compose_config(f"resume={quoted(path)}").resume == path


@pytest.mark.slow
def test_predict_of_pair_and_tagging_runs_equals_albert_predict(tmp_path):
    from tagging_data import tagged_dir

    pairs = write_splits(tmp_path / "pairs", ("sentence1", "sentence2", "label"),
                         synthetic.pair_rows, 160, seed=3)
    pair_run = train([*TINY, "trainer.epochs=1", "data=tsv", f"data.dir={pairs}",
                      "data.text_column=sentence1", "data.text_pair_column=sentence2",
                      f"paths.output_dir={tmp_path / 'experiments'}", "name=pairs"])["run"]
    texts = [("a fine film .", "a fine film ."), ("dull and long .", "a moving story .")]
    inputs = tmp_path / "pairs.jsonl"
    inputs.write_text("".join(json.dumps({"sentence1": a, "sentence2": b}) + "\n"
                              for a, b in texts))
    output = predict_command(pair_run, inputs, tmp_path / "pairs-out.jsonl", progress=False)
    expected = [json.loads(line) for line in output.read_text().splitlines()]
    assert predict(pair_run, texts) == expected
    with pytest.raises(ConfigError, match="pair of strings"):
        predict(pair_run, ["one text"])

    tagged = tagged_dir(tmp_path / "tagged")
    tag_run = train([*TINY, "trainer.epochs=1", "data=conll", f"data.dir={tagged}",
                     f"paths.output_dir={tmp_path / 'experiments'}", "name=tags"])["run"]
    texts = ["Anna Berg flew to Oslo today .", "In Rome , Tom met Lea ."]
    inputs = tmp_path / "tags.txt"
    inputs.write_text("".join(text + "\n" for text in texts))
    output = predict_command(tag_run, inputs, tmp_path / "tags-out.jsonl", progress=False)
    expected = [json.loads(line) for line in output.read_text().splitlines()]
    rows = predict(tag_run, texts)
    assert rows == expected and set(rows[0]) == {"text", "tokens", "tags", "entities"}
    assert predict(tag_run, [texts[0].split()]) == rows[:1]  # pre-tokenized: the same words
