"""Units of app.training: task metrics, the warmup + linear-decay schedule, weight decay."""

import json
import math

import keras
import keras_hub
import numpy as np
import pytest
from conftest import TINY, compose_config
from scipy import stats
from sklearn import metrics as skm

from app.data.task import TaskSpec
from app.models.classifier import build_task_model
from app.training.checkpoints import AtomicModelCheckpoint, CallbackMemory
from app.training.metrics import evaluate_predictions
from app.training.optim import (
    WarmupLinearDecay,
    build_optimizer,
    learning_rate_factor,
    set_learning_rate_factor,
)

BINARY = TaskSpec("classification", ("negative", "positive"))
THREE = TaskSpec("classification", ("bird", "cat", "dog"))
REGRESSION = TaskSpec("regression")


def logits_for(predicted: list[int], num_classes: int, seed: int = 0) -> np.ndarray:
    """Logits (negative, of varied scale) whose argmax is `predicted`, row by row."""
    rng = np.random.default_rng(seed)
    logits = -rng.uniform(2.0, 5.0, size=(len(predicted), num_classes))
    logits[np.arange(len(predicted)), predicted] = -rng.uniform(0.0, 1.9, size=len(predicted))
    return logits.astype("float32")


# === evaluate_predictions ===


def test_binary_accuracy_f1_and_mcc_from_the_confusion_counts():
    targets = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1], dtype="int32")
    predicted = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 1])
    tp, fn, fp, tn = 4, 1, 2, 3  # counted by hand
    assert [tp, fn, fp, tn] == [int(np.sum((targets == t) & (predicted == p)))
                                for t, p in ((1, 1), (1, 0), (0, 1), (0, 0))]
    result = evaluate_predictions(BINARY, targets, logits_for(list(predicted), 2))
    assert set(result) == {"accuracy", "f1", "mcc"}
    assert all(isinstance(v, float) for v in result.values())
    assert result["accuracy"] == pytest.approx((tp + tn) / 10)
    assert result["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert result["mcc"] == pytest.approx(mcc)
    assert result["f1"] == pytest.approx(skm.f1_score(targets, predicted))
    assert result["mcc"] == pytest.approx(skm.matthews_corrcoef(targets, predicted))


def test_binary_f1_is_for_the_second_label():
    # Every positive found, negatives mistaken: F1 of class 1 is high, of class 0 would be 0.
    targets = np.array([1, 1, 1, 0, 0], dtype="int32")
    result = evaluate_predictions(BINARY, targets, logits_for([1, 1, 1, 1, 1], 2))
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2))
    assert result["accuracy"] == pytest.approx(0.6)


def test_binary_perfect_and_inverted_predictions():
    targets = np.array([0, 1, 1, 0, 1, 0], dtype="int32")
    perfect = evaluate_predictions(BINARY, targets, logits_for(list(targets), 2))
    assert perfect == pytest.approx({"accuracy": 1.0, "f1": 1.0, "mcc": 1.0})
    inverted = evaluate_predictions(BINARY, targets, logits_for(list(1 - targets), 2))
    assert inverted["accuracy"] == 0.0 and inverted["f1"] == 0.0
    assert inverted["mcc"] == pytest.approx(-1.0)


@pytest.mark.parametrize("constant", [0, 1])
def test_binary_constant_predictions_give_finite_zero_scores(constant):
    targets = np.array([0, 0, 0, 1, 1, 0, 0, 1], dtype="int32")
    result = evaluate_predictions(BINARY, targets, logits_for([constant] * 8, 2))
    assert all(math.isfinite(v) for v in result.values())
    assert result["accuracy"] == pytest.approx(np.mean(targets == constant))
    assert result["mcc"] == 0.0
    # All-negative predictions find no positive: F1 0 (not NaN); all-positive: recall 1.
    assert result["f1"] == pytest.approx(0.0 if constant == 0 else 2 * 3 / (2 * 3 + 5))


def test_multiclass_macro_f1_averages_every_class():
    targets = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2], dtype="int32")
    predicted = [0, 0, 1, 1, 1, 0, 2, 2, 1, 0]
    result = evaluate_predictions(THREE, targets, logits_for(predicted, 3))
    assert set(result) == {"accuracy", "macro_f1"}
    assert result["accuracy"] == pytest.approx(6 / 10)
    per_class = []
    for label in range(3):
        tp = sum(t == label and p == label for t, p in zip(targets, predicted, strict=True))
        fp = sum(t != label and p == label for t, p in zip(targets, predicted, strict=True))
        fn = sum(t == label and p != label for t, p in zip(targets, predicted, strict=True))
        per_class.append(2 * tp / (2 * tp + fp + fn))
    assert result["macro_f1"] == pytest.approx(np.mean(per_class))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(targets, predicted, average="macro"))


def test_multiclass_class_never_predicted_counts_as_zero_f1():
    targets = np.array([0, 1, 2, 0, 1, 2], dtype="int32")
    predicted = [0, 1, 1, 0, 1, 0]  # class 2 never predicted
    result = evaluate_predictions(THREE, targets, logits_for(predicted, 3))
    f1_0, f1_1 = 2 * 2 / (2 * 2 + 1), 2 * 2 / (2 * 2 + 1)
    assert result["macro_f1"] == pytest.approx((f1_0 + f1_1 + 0.0) / 3)
    constant = evaluate_predictions(THREE, targets, logits_for([2] * 6, 3))
    assert constant["accuracy"] == pytest.approx(2 / 6)
    assert constant["macro_f1"] == pytest.approx((2 * 2 / (2 * 2 + 4)) / 3)


def test_regression_mse_pearson_spearman_against_scipy():
    targets = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 3.0], dtype="float32")
    scores = np.array([0.3, 0.8, 2.5, 2.9, 3.1, 1.4, 1.6, 3.8], dtype="float32")
    result = evaluate_predictions(REGRESSION, targets, scores.reshape(-1, 1))
    assert set(result) == {"mse", "pearson", "spearman"}
    assert all(isinstance(v, float) for v in result.values())
    assert result["mse"] == pytest.approx(float(np.mean((scores - targets) ** 2)), rel=1e-6)
    assert result["pearson"] == pytest.approx(np.corrcoef(targets, scores)[0, 1], rel=1e-5)
    assert result["pearson"] == pytest.approx(stats.pearsonr(targets, scores)[0], rel=1e-5)
    ranks = np.corrcoef(stats.rankdata(targets), stats.rankdata(scores))[0, 1]
    assert result["spearman"] == pytest.approx(ranks, rel=1e-5)
    assert result["spearman"] == pytest.approx(stats.spearmanr(targets, scores)[0], rel=1e-5)


def test_regression_monotone_but_nonlinear_scores():
    targets = np.linspace(-2.0, 2.0, 9).astype("float32")
    result = evaluate_predictions(REGRESSION, targets, (targets**3).reshape(-1, 1))
    assert result["spearman"] == pytest.approx(1.0)
    assert 0.8 < result["pearson"] < 0.99
    negated = evaluate_predictions(REGRESSION, targets, -targets.reshape(-1, 1))
    assert negated["pearson"] == pytest.approx(-1.0) and negated["spearman"] == pytest.approx(-1.0)


def test_regression_constant_scores_or_targets_give_zero_correlation():
    targets = np.array([0.0, 1.0, 2.0, 3.0], dtype="float32")
    constant = np.full((4, 1), 1.5, dtype="float32")
    result = evaluate_predictions(REGRESSION, targets, constant)
    assert result == {"mse": pytest.approx(np.mean((1.5 - targets) ** 2)), "pearson": 0.0,
                      "spearman": 0.0}
    flat_targets = np.full(4, 2.0, dtype="float32")
    result = evaluate_predictions(REGRESSION, flat_targets, targets.reshape(-1, 1))
    assert result["pearson"] == 0.0 and result["spearman"] == 0.0
    assert result["mse"] == pytest.approx(np.mean((targets - 2.0) ** 2))


# === WarmupLinearDecay ===


def rate(schedule, step) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_schedule_warms_up_then_decays_linearly_to_zero():
    peak = 1e-3
    schedule = WarmupLinearDecay(peak=peak, warmup_steps=10, total_steps=100)
    assert rate(schedule, 0) == 0.0
    assert rate(schedule, 5) == pytest.approx(peak / 2)
    assert rate(schedule, 10) == pytest.approx(peak)
    assert rate(schedule, 55) == pytest.approx(peak / 2)
    assert rate(schedule, 99) == pytest.approx(peak / 90)
    assert rate(schedule, 100) == 0.0
    for after in (101, 150, 10_000):
        assert rate(schedule, after) == 0.0  # clipped: never negative
    rates = [rate(schedule, step) for step in range(0, 101)]
    assert max(rates) == pytest.approx(peak) and rates.index(max(rates)) == 10
    assert all(a < b for a, b in zip(rates[:10], rates[1:11], strict=True))
    assert all(a > b for a, b in zip(rates[10:100], rates[11:101], strict=True))


def test_schedule_without_warmup_starts_at_the_peak():
    schedule = WarmupLinearDecay(peak=0.5, warmup_steps=0, total_steps=4)
    assert [rate(schedule, s) for s in range(6)] == pytest.approx([0.5, 0.375, 0.25, 0.125, 0, 0])


def test_schedule_accepts_the_optimizer_step_counter():
    schedule = WarmupLinearDecay(peak=2.0, warmup_steps=4, total_steps=8)
    step = keras.Variable(3, dtype="int64", trainable=False)
    assert rate(schedule, step) == pytest.approx(1.5)
    step.assign(6)
    assert rate(schedule, step) == pytest.approx(1.0)


def test_schedule_counts_updates_under_gradient_accumulation():
    peak = 1e-2
    per_update = WarmupLinearDecay(peak=peak, warmup_steps=2, total_steps=10)
    per_batch = WarmupLinearDecay(peak=peak, warmup_steps=2, total_steps=10, batches_per_update=4)
    for batch in range(48):
        assert rate(per_batch, batch) == pytest.approx(rate(per_update, batch // 4))
    assert rate(per_batch, 3) == 0.0 and rate(per_batch, 8) == pytest.approx(peak)
    assert rate(per_batch, 39) > 0.0 and rate(per_batch, 40) == 0.0


def test_schedule_config_round_trip():
    schedule = WarmupLinearDecay(peak=3e-4, warmup_steps=7, total_steps=70, batches_per_update=2,
                                 factor=0.5)
    config = schedule.get_config()
    assert config == {"peak": 3e-4, "warmup_steps": 7, "total_steps": 70,
                      "batches_per_update": 2, "factor": 0.5}
    copies = [
        WarmupLinearDecay.from_config(config),
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule)),
    ]
    for copy in copies:
        assert isinstance(copy, WarmupLinearDecay) and copy.get_config() == config
        for step in (0, 5, 14, 15, 80, 139, 140, 500):
            assert rate(copy, step) == rate(schedule, step)


# === build_optimizer ===


def optimizer_config(name: str = "adamw", *overrides: str):
    return compose_config(*TINY, f"optimizer={name}", *overrides).optimizer


def test_build_optimizer_schedules_the_whole_run_in_updates():
    cfg = optimizer_config("adamw", "optimizer.learning_rate=4e-3", "optimizer.warmup_ratio=0.25")
    optimizer = build_optimizer(cfg, total_batches=403, batches_per_update=4)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.gradient_accumulation_steps == 4
    schedule = keras.saving.deserialize_keras_object(optimizer.get_config()["learning_rate"])
    assert isinstance(schedule, WarmupLinearDecay)
    assert schedule.get_config() == {"peak": 4e-3, "warmup_steps": 25, "total_steps": 100,
                                     "batches_per_update": 4, "factor": 1.0}
    assert optimizer.weight_decay == pytest.approx(0.01)
    restored = keras.optimizers.AdamW.from_config(optimizer.get_config())
    assert restored.get_config() == optimizer.get_config()
    assert build_optimizer(cfg, total_batches=400).gradient_accumulation_steps is None


def test_learning_rate_follows_the_schedule_through_accumulated_updates():
    cfg = optimizer_config("adam", "optimizer.learning_rate=0.1", "optimizer.warmup_ratio=0.5")
    optimizer = build_optimizer(cfg, total_batches=8, batches_per_update=2)  # 4 updates
    weight = keras.Variable(np.zeros(3, dtype="float32"))
    seen, values = [], []
    for _ in range(8):
        seen.append(float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
        optimizer.apply_gradients([(keras.ops.ones(3), weight)])
        values.append(keras.ops.convert_to_numpy(weight).copy())
    # 4 updates, 2 of warmup: update u (batches 2u and 2u+1) runs at 0, 0.05, 0.1, 0.05.
    assert seen == pytest.approx([0.0, 0.0, 0.05, 0.05, 0.1, 0.1, 0.05, 0.05])
    # Keras' public `iterations` counts updates; the schedule is called with batches.
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 4
    # Weights change only on the second batch of each pair, and not at the zero-rate update.
    moved = [not np.array_equal(values[i], values[i - 1] if i else np.zeros(3))
             for i in range(8)]
    assert moved == [False, False, False, True, False, True, False, True]


def role_variables(model: keras.Model) -> dict[str, list]:
    """The model's trainable variables by role: LayerNorm, bias, kernel, embedding."""
    roles: dict[str, list] = {"layer_norm": [], "bias": [], "kernel": [], "embedding": []}
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.LayerNormalization):
            roles["layer_norm"] += [layer.gamma, layer.beta]
        elif isinstance(layer, keras.layers.Dense | keras.layers.EinsumDense):
            roles["kernel"].append(layer.kernel)
            if layer.bias is not None:
                roles["bias"].append(layer.bias)
        elif isinstance(layer, keras.layers.Embedding | keras_hub.layers.PositionEmbedding):
            roles["embedding"] += list(layer.trainable_weights)
    return roles


@pytest.fixture(scope="module")
def tiny_classifier_cfg():
    return compose_config(*TINY)


def test_adamw_decays_kernels_but_not_layer_norm_or_biases(tiny_classifier_cfg):
    keras.utils.set_random_seed(0)
    model = build_task_model(tiny_classifier_cfg.model, BINARY, vocabulary_size=50)
    roles = role_variables(model)
    assert len(roles["layer_norm"]) == 2 * 3  # embeddings + 2 per (shared) transformer layer
    assert len(roles["bias"]) >= 8 and len(roles["kernel"]) >= 8 and roles["embedding"]
    covered = {id(v) for vs in roles.values() for v in vs}
    assert covered == {id(v) for v in model.trainable_variables}
    learning_rate, decay = 0.5, 0.01
    cfg = optimizer_config("adamw", f"optimizer.learning_rate={learning_rate}",
                           "optimizer.warmup_ratio=0", f"optimizer.weight_decay={decay}")
    optimizer = build_optimizer(cfg, total_batches=10)
    # Nonzero LayerNorm/bias values, so a decay of them would show.
    rng = np.random.default_rng(1)
    for variable in roles["layer_norm"] + roles["bias"]:
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    before = {id(v): keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    zeros = [keras.ops.zeros(v.shape) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(zeros, model.trainable_variables, strict=True))
    # Zero gradients give no Adam step: only the decoupled decay (x * (1 - lr * wd)) moves.
    for variable in roles["layer_norm"] + roles["bias"]:
        assert np.array_equal(keras.ops.convert_to_numpy(variable), before[id(variable)]), \
            variable.path
    for variable in roles["kernel"] + roles["embedding"]:
        after = keras.ops.convert_to_numpy(variable)
        np.testing.assert_allclose(after, before[id(variable)] * (1 - learning_rate * decay),
                                   rtol=1e-6, atol=1e-9, err_msg=variable.path)
        assert not np.array_equal(after, before[id(variable)]), variable.path


def test_adam_without_weight_decay_leaves_weights_alone_on_zero_gradients(tiny_classifier_cfg):
    keras.utils.set_random_seed(0)
    model = build_task_model(tiny_classifier_cfg.model, BINARY, vocabulary_size=50)
    optimizer = build_optimizer(optimizer_config("adam", "optimizer.warmup_ratio=0",
                                                 "optimizer.learning_rate=0.5"),
                                total_batches=10)
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
    zeros = [keras.ops.zeros(v.shape) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(zeros, model.trainable_variables, strict=True))
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# === Rollback's learning-rate factor, callbacks' memory ===


def small_model(precision: str, optimizer) -> keras.Model:
    keras.config.set_dtype_policy(precision)
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer=optimizer, loss="mse")
    finally:
        keras.config.set_dtype_policy("float32")
    return model


@pytest.mark.parametrize("precision", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_learning_rate_factor_scales_the_schedule_in_every_precision(precision):
    cfg = optimizer_config("adamw", "optimizer.learning_rate=0.1", "optimizer.warmup_ratio=0.0")
    model = small_model(precision, build_optimizer(cfg, total_batches=10))
    model.optimizer.build(model.trainable_variables)
    before = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    set_learning_rate_factor(model, 0.25)
    assert learning_rate_factor(model.optimizer) == 0.25
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == \
        pytest.approx(0.25 * before)
    model.fit(np.ones((8, 4)), np.ones((8, 1)), epochs=1, verbose=0)  # the retraced step runs


class ScriptedValidation(keras.callbacks.Callback):
    """Puts the next of `scores` into the epoch's logs as `val_score`."""

    def __init__(self, scores):
        super().__init__()
        self.scores = iter(scores)

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = next(self.scores)


def test_best_checkpoint_and_patience_survive_a_new_fit(tmp_path):
    """A resume or a rollback starts a new `fit`: the best score and patience carry over."""
    model = small_model("float32", "sgd")
    data = (np.ones((8, 4)), np.ones((8, 1)))
    best = AtomicModelCheckpoint(str(tmp_path / "best.weights.h5"), monitor="val_score",
                                 mode="max", save_best_only=True, save_weights_only=True)
    stopping = keras.callbacks.EarlyStopping(monitor="val_score", mode="max", patience=2)
    scripted = ScriptedValidation([0.9, 0.5, 0.4, 0.3])
    callbacks = [scripted, best, stopping]
    memory = CallbackMemory(callbacks)
    model.fit(*data, epochs=1, callbacks=[*callbacks, memory], verbose=0)
    saved = (tmp_path / "best.weights.h5").read_bytes()
    # As after a resume: fresh callbacks, memory from the saved state.
    best = AtomicModelCheckpoint(str(tmp_path / "best.weights.h5"), monitor="val_score",
                                 mode="max", save_best_only=True, save_weights_only=True)
    stopping = keras.callbacks.EarlyStopping(monitor="val_score", mode="max", patience=2)
    callbacks = [scripted, best, stopping]
    restored = CallbackMemory(callbacks, json.loads(json.dumps(memory.taken)))
    history = model.fit(*data, initial_epoch=1, epochs=4, callbacks=[*callbacks, restored],
                        verbose=0)
    assert (tmp_path / "best.weights.h5").read_bytes() == saved  # 0.5 and 0.4 < 0.9
    assert len(history.history["loss"]) == 2  # patience 2 counted from epoch 0's best
    assert restored.taken["1:AtomicModelCheckpoint"]["best"] == 0.9
