"""A Chinese run end to end, as a user starts it: `experiment=chnsenticorp` from a random-init
Chinese ALBERT folder (WordPiece vocab.txt, relu, made with transformers), then its exports
reloaded by transformers, keras-hub and `albert-evaluate`."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY, run_command

pytest.importorskip("transformers", reason="the `interop` extra is not installed")

import keras_hub  # noqa: E402
from test_chinese_checkpoints import CHINESE, VOCAB, chinese_folder  # noqa: E402
from test_resume import (  # noqa: E402
    assert_same_outcome,
    finish,
    saved_steps,
    start,
    wait_for_step,
)
from test_serving import SERVE_SCRIPT  # noqa: E402
from test_transformers_interop import reload_with_transformers  # noqa: E402

from app import evaluate, train  # noqa: E402
from app.data import synthetic  # noqa: E402
from app.models.albert_backbone import AlbertActivationTextClassifier  # noqa: E402
from app.runtime.loading import load_model  # noqa: E402
from app.tasks.inference import softmax  # noqa: E402

GOOD, BAD = "很好干净舒服方便喜欢", "差脏吵贵无聊失望"


def reviews(count: int, seed: int) -> list[tuple[str, str]]:
    """Chinese 'reviews' without spaces, two or three sentences, label 1 when praised."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.6
        words = GOOD if positive else BAD
        sentences = ["".join(rng.choices(CHINESE[:60], k=rng.randint(3, 8)))
                     + rng.choice(words) + rng.choice("。！，") for _ in range(rng.randint(2, 3))]
        rows.append(("".join(sentences), "1" if positive else "0"))
    return rows


@pytest.mark.slow
def test_chnsenticorp_recipe_from_a_chinese_relu_checkpoint(tmp_path, monkeypatch):
    folder = chinese_folder(tmp_path / "albert_chinese", hidden_act="relu",
                            vocab=VOCAB + [c for c in GOOD + BAD if c not in VOCAB])
    data = tmp_path / "data" / "chnsenticorp"
    for split, count, seed in (("train", 160, 1), ("dev", 40, 2), ("test", 40, 3)):
        synthetic.write_tsv(data / f"{split}.tsv", ("text", "label"), reviews(count, seed))
    monkeypatch.chdir(tmp_path)
    code = run_command(monkeypatch, train.main, "experiment=chnsenticorp",
                       f"paths.data_dir={tmp_path / 'data'}", f"model.preset={folder}",
                       "trainer.epochs=1", "data.sequence_length=64",
                       "data.bucket_boundaries=[32]", "hydra.run.dir=run")
    assert code == 0
    run = tmp_path / "run"
    assert (run / "tokenizer" / "vocab.txt").is_file()
    export = run / "export"
    assert json.loads((export / "hf" / "config.json").read_text())["hidden_act"] == "relu"
    sample = json.loads((export / "sample_predictions.json").read_text())
    reloaded = reload_with_transformers(export, "AlbertForSequenceClassification", sample)
    print("chnsenticorp from a relu WordPiece folder, export/hf vs app: max abs diff",
          reloaded["max_abs_diff"])
    assert reloaded["max_abs_diff"] < 1e-5
    # keras-hub's own loader finds the relu twin of its classifier; .keras reloads the same.
    texts = [text for text, _ in reviews(4, seed=9)]
    preset = keras_hub.models.AlbertTextClassifier.from_preset(str(export / "preset"))
    assert isinstance(preset, AlbertActivationTextClassifier)
    expected = load_model(export / "model.keras", compile=False).predict(texts, verbose=0)
    np.testing.assert_allclose(preset.predict(texts, verbose=0), expected, atol=1e-5)
    # The SavedModel tokenizes raw Chinese with TensorFlow and tensorflow_text alone.
    served = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(export), json.dumps(sample["inputs"])],
        cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
        text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    probabilities = np.array(json.loads(served.stdout.strip().splitlines()[-1])["probabilities"])
    np.testing.assert_allclose(probabilities, softmax(np.array(sample["outputs"])), atol=1e-5)
    assert run_command(monkeypatch, evaluate.main, f"run={run}", "split=test",
                       "progress=false") == 0
    record = json.loads((run / "eval_test.json").read_text())
    assert record["num_examples"] == 40 and 0.0 <= record["metrics"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_a_wordpiece_run_killed_mid_epoch_resumes_to_the_same_model(tmp_path):
    data = tmp_path / "data"
    synthetic.write_tsv(data / "train.tsv", ("text", "label"), reviews(320, seed=4))
    synthetic.write_tsv(data / "dev.tsv", ("text", "label"), reviews(48, seed=5))

    def overrides(run_dir):
        return [*TINY, "data=tsv", f"data.dir={data}", "data.text_column=text",
                "tokenizer.kind=wordpiece", "tokenizer.vocab_size=null",
                "trainer.deterministic=true", "trainer.epochs=2",
                "trainer.checkpoint_every_n_steps=4", "logger=none", f"hydra.run.dir={run_dir}"]

    finish(start(*overrides(tmp_path / "reference")))
    run_dir = tmp_path / "run"
    process = start(*overrides(run_dir))
    wait_for_step(process, run_dir, 13)
    process.kill()
    process.wait()
    assert saved_steps(run_dir)[-1] < 40
    finish(start(f"resume={run_dir}"))
    assert (run_dir / "tokenizer" / "vocab.txt").read_bytes() == (
        tmp_path / "reference" / "tokenizer" / "vocab.txt").read_bytes()
    assert_same_outcome(run_dir, tmp_path / "reference")
