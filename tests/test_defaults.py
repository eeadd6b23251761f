"""Defaults that fit the model and the data: learning rates per model, a vocabulary sized from
the training text, class weights and binary F1's positive label for imbalanced labels."""

import itertools
import logging

import numpy as np
import pytest
import tensorflow as tf
from conftest import CONF_DIR, TINY, compose_config, shared_data
from omegaconf import OmegaConf
from sklearn import metrics as skm
from test_distributed import EXACT, app_process, assert_same_losses, finish, history

from app.data import synthetic
from app.data.task import TaskSpec, class_weights, load_task_data
from app.errors import DataError
from app.runs.layout import RunLayout
from app.runtime.strategy import build_strategy
from app.tasks import task_for
from app.tasks.tokenizer import MAX_VOCABULARY, MIN_VOCABULARY, build_tokenizer, vocabulary_size
from app.training.metrics import evaluate_predictions
from app.training.session import start_session

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_learning_rate_follows_the_model_config(model, optimizer):
    own = OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml")
    assert 0 < own.preset_learning_rate < own.learning_rate
    scratch = compose_config(f"model={model}", f"optimizer={optimizer}")
    assert scratch.optimizer.learning_rate == own.learning_rate
    pretrained = compose_config(f"model={model}", f"optimizer={optimizer}", "model.preset=p")
    assert pretrained.optimizer.learning_rate == own.preset_learning_rate
    explicit = compose_config(f"model={model}", f"optimizer={optimizer}", "model.preset=p",
                              "optimizer.learning_rate=3e-3")
    assert explicit.optimizer.learning_rate == 3e-3


def test_wider_models_have_lower_peaks():
    configs = [OmegaConf.load(CONF_DIR / "model" / f"{m}.yaml") for m in MODELS]
    by_width = sorted(configs, key=lambda c: c.hidden_dim)
    for narrow, wide in itertools.pairwise(by_width):
        assert wide.learning_rate < narrow.learning_rate
        assert wide.preset_learning_rate <= narrow.preset_learning_rate


def test_measured_peaks():
    """albert_small's from-scratch peak is the one measured on TREC (2e-3 collapsed to one class,
    5e-4 learned); albert_tiny's on the shipped sample with data-chosen buckets (2e-3 collapsed
    on one seed of three, 1e-3 learned on all three)."""
    assert compose_config("model=albert_small").optimizer.learning_rate == 5e-4
    assert compose_config("model=albert_tiny").optimizer.learning_rate == 1e-3


def texts_with_distinct_words(count: int) -> list[str]:
    words = [f"w{i}" for i in range(count)]
    return [" ".join(words[i:i + 10]) for i in range(0, count, 10)]


@pytest.mark.parametrize("distinct,expected", [
    (100, MIN_VOCABULARY), (5000, 2500), (8677, 4300), (14816, 7400), (200_000, MAX_VOCABULARY),
])
def test_vocabulary_size_from_distinct_words(distinct, expected):
    assert vocabulary_size(texts_with_distinct_words(distinct), lowercase=True) == (
        expected, distinct)


def test_vocabulary_size_case_folds_when_lowercasing():
    texts = [" ".join(f"W{i} w{i}" for i in range(3000))]
    assert vocabulary_size(texts, lowercase=True)[1] == 3000
    assert vocabulary_size(texts, lowercase=False) == (3000, 6000)


def test_vocabulary_size_counts_every_chinese_character_as_a_word():
    characters = [chr(0x4E00 + i) for i in range(2500)]
    reviews = ["".join(characters[i:i + 50]) + "，很好！" for i in range(0, 2500, 50)]
    # One "word" per review by whitespace; 2,504 distinct characters (+ 很 好 ， ！), all kept:
    # with the 5 special pieces, 2,509 pieces at least (SentencePiece refuses fewer).
    assert vocabulary_size(reviews, lowercase=True) == (2600, 2504)
    # Other words count half: 4 more units, 2 more entries.
    mixed = [text + " wifi ok" for text in reviews] + ["Great view"]
    assert vocabulary_size(mixed, lowercase=True) == (2600, 2508)
    assert vocabulary_size(mixed + ["x y z a b c d e f g h i j k l m n o p q r s t u v w " * 8
                                     + " ".join(f"w{i}" for i in range(200))],
                           lowercase=True)[0] == 2600


def test_default_vocabulary_holds_every_character_of_a_small_chinese_corpus(tmp_path):
    """400 MSRA sentences: 1,780 units round down to 1,700 pieces, fewer than the 1,765
    characters and special pieces SentencePiece needs; the default takes 1,800."""
    characters = [chr(0x4E00 + i) for i in range(1760)]
    texts = [" ".join(characters[i:i + 40]) + " 1 2 a" for i in range(0, 1760, 40)]
    size, _ = vocabulary_size(texts, lowercase=True)
    assert size == 1800
    cfg = compose_config("tokenizer.character_coverage=1.0")
    assert build_tokenizer(cfg, texts, tmp_path / "tokenizer").vocabulary_size() <= size


def test_default_vocabulary_is_sized_from_trec(tmp_path, caplog):
    trec = shared_data("trec")
    cfg = compose_config("data=trec", f"data.dir={trec}")
    assert cfg.tokenizer.vocab_size is None
    _, train, _ = load_task_data(cfg.data)
    texts = list(train.texts[0])
    with caplog.at_level(logging.INFO, logger="app.tasks.tokenizer"):
        tokenizer = build_tokenizer(cfg, texts, tmp_path / "tokenizer")
    expected, distinct = vocabulary_size(texts, lowercase=True)
    assert (expected, distinct) == (4300, 8677)
    assert tokenizer.vocabulary_size() == expected
    assert any(f"Vocabulary size {expected}" in r.getMessage() for r in caplog.records)


def imbalanced_dir(root, negatives: int = 60, positives: int = 20):
    """Binary sentiment, 3:1 negative in train, balanced dev."""
    rows = synthetic.sentiment_rows(600, seed=4)
    train = ([r for r in rows if r[1] == "negative"][:negatives]
             + [r for r in rows if r[1] == "positive"][:positives])
    synthetic.write_tsv(root / "train.tsv", ("sentence", "label"), train)
    synthetic.write_tsv(root / "dev.tsv", ("sentence", "label"), rows[-40:])
    return root


def relabelled_dir(root, rows, names: dict[str, str]):
    """`rows` (train) and the balanced dev of `imbalanced_dir`, labels renamed by `names`."""
    root.mkdir(parents=True)
    rename = [(text, names[label]) for text, label in rows]
    synthetic.write_tsv(root / "train.tsv", ("sentence", "label"), rename)
    dev = synthetic.sentiment_rows(600, seed=4)[-40:]
    synthetic.write_tsv(root / "dev.tsv", ("sentence", "label"), [(t, names[y]) for t, y in dev])
    return root


def positive_of(data_dir, *overrides: str) -> str:
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={data_dir}", *overrides)
    return load_task_data(cfg.data)[0].positive_label


def test_positive_label_follows_the_usual_convention(tmp_path, caplog):
    """F1 is of `1`, `positive`, `true` or `yes` whatever the class balance (as GLUE and
    scikit-learn report it); other names take the minority of the whole training file."""
    rows = synthetic.sentiment_rows(600, seed=4)
    negatives = [r for r in rows if r[1] == "negative"]
    positives = [r for r in rows if r[1] == "positive"]
    majority_positive = positives[:60] + negatives[:20]
    for names, positive in (({"negative": "0", "positive": "1"}, "1"),
                            ({"negative": "negative", "positive": "positive"}, "positive"),
                            ({"negative": "False", "positive": "True"}, "True"),
                            ({"negative": "no", "positive": "yes"}, "yes")):
        assert positive_of(relabelled_dir(tmp_path / positive, majority_positive, names)) \
            == positive
    # ham/spam name no positive class: the minority of the whole file (spam: 10 of 65), even
    # when the first 15 rows (a data.max_train_examples sample) hold more spam than ham.
    spam_first = positives[:10] + negatives[:55]
    data = relabelled_dir(tmp_path / "spam", spam_first, {"negative": "ham", "positive": "spam"})
    with caplog.at_level(logging.INFO, logger="app.data.task"):
        assert positive_of(data, "data.max_train_examples=15") == "spam"
    assert any("minority label 'spam' (10 of 65" in r.getMessage() for r in caplog.records)
    assert positive_of(data, "data.positive_label=ham") == "ham"
    with pytest.raises(DataError, match="`data.positive_label` 'maybe' is not a label"):
        positive_of(data, "data.positive_label=maybe")


def test_f1_is_of_the_positive_label():
    targets = np.array([0, 0, 0, 1, 1, 0])
    logits = np.eye(2)[[0, 1, 0, 1, 0, 0]]
    predicted = logits.argmax(axis=-1)
    for positive, index in (("a", 0), ("b", 1)):
        task = TaskSpec("classification", ("a", "b"), positive_label=positive)
        f1 = evaluate_predictions(task, targets, logits)["f1"]
        assert f1 == pytest.approx(skm.f1_score(targets, predicted, pos_label=index))
    assert skm.f1_score(targets, predicted, pos_label=0) != skm.f1_score(targets, predicted)


def test_balanced_class_weights_weigh_the_loss(tmp_path):
    """The pipeline's sample weights reach Keras' loss: the loss of a batch is the mean of
    weight x cross-entropy, computed here by hand from the model's logits."""
    data = imbalanced_dir(tmp_path / "data")
    cfg = compose_config(*TINY, "data=tsv", f"data.dir={data}", "data.class_weight=balanced",
                         "data.positive_label=negative")
    strategy = build_strategy(cfg.strategy)
    start_session(cfg)
    task = task_for(cfg)
    task.read_data(RunLayout(tmp_path / "run"))
    task.build_tokenizer(RunLayout(tmp_path / "run"))
    data_pipeline = task.build_pipelines(tf.distribute.get_strategy())
    with strategy.scope():
        model = task.build_model()
    weights = class_weights(task.task, task.train_split.targets)
    assert weights.tolist() == pytest.approx([80 / (2 * 60), 80 / (2 * 20)])
    assert task.extra_metrics["class_weights"] == pytest.approx(
        {"negative": weights[0], "positive": weights[1]})
    assert task.extra_metrics["positive_label"] == "negative"
    batch = data_pipeline.batches(0).take(1)
    features, targets, sample_weight = next(iter(batch))
    targets = targets.numpy()
    assert len(set(targets.tolist())) == 2, "the batch must hold both classes"
    np.testing.assert_allclose(sample_weight.numpy(), weights[targets])
    logits = model.predict_on_batch(features).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    cross_entropy = -log_probs[np.arange(len(targets)), targets]
    by_hand = float(np.sum(weights[targets] * cross_entropy) / len(targets))
    loss = model.evaluate(batch, steps=1, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(by_hand, rel=1e-5)
    assert abs(by_hand - cross_entropy.mean()) > 1e-3  # the weights change it


@pytest.mark.slow
def test_class_weights_survive_mirrored_strategy(tmp_path):
    """Two CPU replicas weigh the loss as one device does (same global batches)."""
    data = imbalanced_dir(tmp_path / "data")
    common = [*EXACT, "data=tsv", f"data.dir={data}", "data.class_weight=balanced"]
    single, mirrored = tmp_path / "single", tmp_path / "mirrored"
    finish(app_process(single, *common, "strategy=cpu"))
    finish(app_process(mirrored, *common, "strategy=mirrored", "strategy.cpu_devices=2"))
    assert_same_losses(mirrored, single)
    unweighted = tmp_path / "unweighted"
    finish(app_process(unweighted, *EXACT, "data=tsv", f"data.dir={data}", "strategy=cpu"))
    assert history(unweighted)["loss"] != pytest.approx(history(single)["loss"], rel=1e-3)
