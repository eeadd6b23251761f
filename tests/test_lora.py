"""LoRA fine-tuning (`model.lora_rank`): the trainable share, what trains (with gradient
accumulation), exports that load without LoRA and give the LoRA model's outputs, best-epoch
restore, step-exact resume, bad input."""

import json
import logging
import signal
import subprocess
import sys
from types import SimpleNamespace

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, compose_config, run_command, write_splits
from test_resume import assert_same_outcome, finish, overrides, saved_steps, start, wait_for_step

from app.config.validate import validate
from app.data import synthetic
from app.data.task import TaskSpec
from app.errors import PREEMPTED_EXIT_CODE, ConfigError
from app.models.classifier import build_task_model
from app.models.lora import LORA_FACTORS, enable_lora, lora_layers, merged_weights
from app.models.tagger import build_tagger
from app.runs.layout import RunLayout
from app.tasks import task_for
from app.training.best import restore_best
from app.training.session import start_session

LORA = ["model.lora_rank=4", "trainer.gradient_accumulation_steps=2"]
STEPS = 6  # training batches of the in-process model: 3 updates of 2 accumulated batches


def test_trainable_share_at_albert_xlarge_shapes_is_under_one_percent(caplog):
    cfg = compose_config("model=albert_xlarge", "model.lora_rank=8")
    model = build_task_model(cfg.model, TaskSpec("classification", ("neg", "pos")), 30000)
    with caplog.at_level(logging.INFO, logger="app.models.lora"):
        enable_lora(model, cfg.model.lora_rank)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = model.count_params()
    assert trainable / total < 0.01
    assert f"LoRA rank 8: {trainable} trainable of {total} parameters (0.90%)" in caplog.text
    # The query and value adapters of the (shared) attention layer, their biases, the head.
    assert sorted(v.path for v in model.trainable_weights) == [
        "group_0_inner_layer_0/self_attention_layer/query/bias",
        "group_0_inner_layer_0/self_attention_layer/query/lora_kernel_a",
        "group_0_inner_layer_0/self_attention_layer/query/lora_kernel_b",
        "group_0_inner_layer_0/self_attention_layer/value/bias",
        "group_0_inner_layer_0/self_attention_layer/value/lora_kernel_a",
        "group_0_inner_layer_0/self_attention_layer/value/lora_kernel_b",
        "logits/bias", "logits/kernel"]


def test_the_tagger_trains_its_head_and_merges_into_a_plain_copy():
    cfg = compose_config(*TINY, "model.lora_rank=2")
    tagger = build_tagger(cfg.model, num_tags=5, vocabulary_size=120)
    enable_lora(tagger, cfg.model.lora_rank)
    assert {v.path.removeprefix("group_0_inner_layer_0/") for v in tagger.trainable_weights} == {
        "self_attention_layer/query/bias", "self_attention_layer/query/lora_kernel_a",
        "self_attention_layer/query/lora_kernel_b", "self_attention_layer/value/bias",
        "self_attention_layer/value/lora_kernel_a", "self_attention_layer/value/lora_kernel_b",
        "logits/kernel", "logits/bias"}
    for factor in LORA_FACTORS:  # trained adapters (lora_kernel_b starts at zeros)
        for layer in lora_layers(tagger):
            variable = getattr(layer, factor)
            variable.assign(np.random.default_rng(0).normal(size=variable.shape))
    plain = type(tagger).from_config(tagger.get_config())
    plain.set_weights(merged_weights(tagger))
    assert not lora_layers(plain)
    features = {"token_ids": np.arange(24).reshape(2, 12) % 120,
                "segment_ids": np.zeros((2, 12), "int32"), "padding_mask": np.ones((2, 12), bool)}
    np.testing.assert_allclose(plain(features), tagger(features), rtol=0, atol=1e-5)


def snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def forward(model: keras.Model, features: dict) -> tuple[np.ndarray, np.ndarray]:
    """The logits and the backbone's sequence output (where the adapters show: the logits of
    a tiny random model hardly depend on its input)."""
    sequence = model.backbone(features, training=False)["sequence_output"]
    return (keras.ops.convert_to_numpy(model(features, training=False)),
            keras.ops.convert_to_numpy(sequence))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LoRA classifier built by the app's task steps, trained STEPS batches, exported;
    its weights before and after, its outputs on the export's sample texts, and those of the
    same model with its adapters dropped (what an export missing them would give)."""
    out = tmp_path_factory.mktemp("lora")
    data_dir = write_splits(out / "data", ("sentence", "label"), synthetic.sentiment_rows, 192,
                            seed=1)
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={data_dir}", *LORA,
                         "optimizer.learning_rate=1e-2")  # adapters far from zero in 3 updates
    layout = RunLayout(out / "run")
    layout.root.mkdir()
    start_session(cfg)
    task = task_for(cfg)
    task.read_data(layout)
    task.build_tokenizer(layout)
    data = task.build_pipelines(tf.distribute.get_strategy())
    model = task.build_model()
    before = snapshot(model)
    model.fit(data.batches(0), steps_per_epoch=STEPS, epochs=1, verbose=0)
    after = snapshot(model)
    texts = list(task.eval_split.texts[0][:8])  # the inputs of sample_predictions.json
    features = {k: keras.ops.convert_to_numpy(v) for k, v in task.preprocessor(texts).items()}
    unmerged = type(model).from_config(model.get_config())
    unmerged.set_weights([keras.ops.convert_to_numpy(v) for v in model.weights
                          if v.name not in LORA_FACTORS])
    task.export(model, layout)
    return SimpleNamespace(cfg=cfg, task=task, model=model, layout=layout, before=before,
                           after=after, texts=texts, features=features,
                           outputs=forward(model, features), without=forward(unmerged, features))


def test_only_the_adapters_and_the_head_train(trained):
    model = trained.model
    backbone = {v.path for v in model.backbone.weights}
    changed = {path for path, value in trained.before.items()
               if not np.array_equal(value, trained.after[path])}
    frozen = [path for path in backbone if path.rsplit("/", 1)[1] not in LORA_FACTORS
              and not path.endswith(("query/bias", "value/bias"))]
    assert frozen and not changed & set(frozen)  # every backbone kernel stays as it was
    assert {"logits/kernel", "logits/bias"} <= changed
    assert {p for p in changed if p.endswith("lora_kernel_b")} == {
        p for p in backbone if p.endswith("lora_kernel_b")}  # from zeros to trained
    # Gradient accumulation: an update every 2 batches, slots only for the trained weights.
    assert int(model.optimizer.iterations) == STEPS // 2
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    slots = sum(int(np.prod(v.shape)) for v in model.optimizer.variables)
    assert 3 * trainable <= slots < 3 * trainable + 16  # Adam's m, v and the accumulator


def assert_same_outputs(got, expected, without, atol: float) -> None:
    """Logits and sequence outputs equal within `atol`; those of the model without its adapters
    are not (so the comparison sees a missing merge)."""
    assert np.abs(expected[1] - without[1]).max() > 10 * atol
    for got_one, expected_one in zip(got, expected, strict=True):
        np.testing.assert_allclose(got_one, expected_one, rtol=0, atol=atol)


def test_exports_load_without_lora_and_give_the_lora_models_outputs(trained):
    preset = trained.layout.preset
    assert "lora" not in (preset / "config.json").read_text()
    for model in (keras_hub.models.TextClassifier.from_preset(str(preset)),
                  keras.saving.load_model(trained.layout.model)):
        assert not [v.path for v in model.weights if "lora" in v.path]
        assert_same_outputs(forward(model, trained.features), trained.outputs, trained.without,
                            atol=1e-5)
        # Raw strings through the exported preprocessor, as a user calls it.
        np.testing.assert_allclose(model.predict(np.array(trained.texts), verbose=0),
                                   trained.outputs[0], rtol=0, atol=1e-6)
    sample = json.loads(trained.layout.sample_predictions.read_text())
    assert sample["inputs"] == [trained.texts]
    np.testing.assert_allclose(sample["outputs"], trained.outputs[0], rtol=0, atol=1e-6)


TRANSFORMERS_FORWARD = """
import json, sys
import torch, transformers
features = {k: torch.tensor(v) for k, v in json.loads(sys.stdin.read()).items()}
model = transformers.AlbertForSequenceClassification.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    out = model(input_ids=features["token_ids"], token_type_ids=features["segment_ids"],
                attention_mask=features["padding_mask"].long(), output_hidden_states=True)
print(json.dumps([out.logits.tolist(), out.hidden_states[-1].tolist()]))
"""


def test_the_transformers_export_gives_the_lora_models_outputs(trained):
    pytest.importorskip("transformers", reason="the `interop` extra is not installed")
    features = {k: v.tolist() for k, v in trained.features.items()}
    result = subprocess.run([sys.executable, "-c", TRANSFORMERS_FORWARD,
                             str(trained.layout.transformers)], input=json.dumps(features),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logits, sequence = json.loads(result.stdout.strip().splitlines()[-1])
    assert_same_outputs((np.array(logits), np.array(sequence)), trained.outputs, trained.without,
                        atol=1e-4)


def test_best_epoch_restore_gives_back_the_best_epochs_outputs(trained):
    model, features = trained.model, trained.features
    best = trained.layout.root / trained.cfg.callbacks.best_checkpoint.filepath
    best.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(best)  # what the best checkpoint callback writes
    expected = forward(model, features)
    model.fit(trained.task.data.batches(STEPS), steps_per_epoch=2, epochs=1, verbose=0)
    later = forward(model, features)
    history = {"val_accuracy": [0.9, 0.5], "val_loss": [0.1, 0.2]}
    assert restore_best(model, history, trained.cfg, trained.layout.root) == (0, 0)
    # Keras saved the kernels with the adapters merged in, and zeroes them when loading.
    assert_same_outputs(forward(model, features), expected, later, atol=1e-5)


@pytest.mark.slow
def test_a_preempted_lora_run_resumes_step_exact(tmp_path):
    data_dir = write_splits(tmp_path / "data", ("sentence", "label"), synthetic.sentiment_rows,
                            160, seed=11)
    steps = 2 * 160 // 16  # 2 epochs of 10 batches
    reference = tmp_path / "reference"
    output = finish(start(*overrides(data_dir, reference), *LORA))
    assert "LoRA rank 4: " in output
    assert saved_steps(reference)[-1] == steps
    run_dir = tmp_path / "run"
    process = start(*overrides(data_dir, run_dir), *LORA)
    wait_for_step(process, run_dir, 4)
    process.send_signal(signal.SIGTERM)
    finish(process, expected=PREEMPTED_EXIT_CODE)
    assert saved_steps(run_dir)[-1] < steps
    finish(start(f"resume={run_dir}"))
    assert_same_outcome(run_dir, reference)  # metrics and the exported (merged) weights


@pytest.mark.parametrize("rank", [0, -2])
def test_a_rank_below_one_is_one_line(monkeypatch, tmp_path, sentiment_dir, rank):
    from app.train import main

    code = run_command(monkeypatch, main, *TINY, "data=tsv", f"data.dir={sentiment_dir}",
                       f"model.lora_rank={rank}", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == f"error: `model.lora_rank` must be >= 1. Received: {rank}"


def test_lora_for_pretraining_is_refused(tmp_path):
    (tmp_path / "corpus.txt").write_text("One sentence.\nAnother one.\n")
    with pytest.raises(ConfigError, match="`model.lora_rank` applies to fine-tuning tasks"):
        validate(compose_config(*TINY, "data=text_corpus", f"data.dir={tmp_path}",
                                "model.lora_rank=8"))


def test_a_backbone_without_attention_projections_is_refused():
    inputs = keras.Input((4,))
    backbone = keras_hub.models.Backbone(inputs=inputs, outputs=keras.layers.Dense(3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(backbone(inputs)))
    model.backbone = backbone
    with pytest.raises(ConfigError, match=r"`model.lora_rank` needs a backbone with attention "
                                          r"projections named \['query_dense'"):
        enable_lora(model, 8)
