"""Token classification: word alignment, windows and their merge, entity metrics, and tiny runs
end to end (train, reload, evaluate, predict) on English words and Chinese characters."""

import json
import random
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the SavedModel's SentencePiece ops)
from conftest import TINY, compose_config
from hypothesis import given, settings
from hypothesis import strategies as st
from tagging_data import tagged_dir, tagged_sentence, write_conll

from app.data import tagged
from app.data.tagging import (
    IGNORE,
    Specials,
    cut_windows,
    entity_spans,
    merge_windows,
    word_windows,
)
from app.errors import DataError
from app.evaluate import evaluate
from app.predict import predict
from app.runs.read import open_run
from app.tasks.inference import load_model
from app.train import train
from app.training.entity_metrics import entity_metrics

SPECIALS = Specials(cls=2, sep=3, pad=0, unk=1)
TAGGING = [*TINY, "data=conll", "trainer.epochs=10", "optimizer.learning_rate=3e-3",
           "data.sequence_length=16"]


# === Windows ===

def test_first_pieces_carry_the_tags_and_later_pieces_none():
    windows = cut_windows([[[5], [6, 7, 8], []]], [[1, 2, 0]], 10, None, SPECIALS)
    assert windows.token_ids[0].tolist() == [2, 5, 6, 7, 8, 1, 3, 0, 0, 0]  # empty word: [UNK]
    assert windows.labels[0].tolist() == [IGNORE, 1, 2, IGNORE, IGNORE, 0] + [IGNORE] * 4
    assert windows.padding_mask[0].tolist() == [1] * 7 + [0] * 3
    assert windows.word[0].tolist() == [-1, 0, 1, -1, -1, 2, -1, -1, -1, -1]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=40),
       width=st.integers(1, 12), stride=st.integers(1, 12))
def test_windows_hold_whole_words_cover_every_word_and_fit(lengths, width, stride):
    windows = word_windows(lengths, width, stride)
    covered = set()
    for first, end in windows:
        assert first < end
        assert end - first == 1 or sum(lengths[first:end]) <= width  # one long word is cut
        covered.update(range(first, end))
    assert covered == set(range(len(lengths)))
    assert [w[0] for w in windows] == sorted({w[0] for w in windows})  # forward, no repeats


def test_a_long_sentence_is_cut_into_overlapping_windows_and_merged_by_most_context():
    words = [[[10 + i] for i in range(10)]]
    windows = cut_windows(words, [list(range(10))], 6, 2, SPECIALS)  # 4 pieces a window
    assert [row[1:5].tolist() for row in windows.token_ids] == [
        [10, 11, 12, 13], [12, 13, 14, 15], [14, 15, 16, 17], [16, 17, 18, 19]]
    # Outputs that name the window they come from: the merge must pick, per word, the window
    # where the word has the most context on both sides (ties: the earlier window).
    outputs = np.zeros((4, 6, 4), "float32")
    for row in range(4):
        outputs[row, :, row] = 1.0
    chosen = merge_windows(windows, outputs, [10])[0].argmax(axis=-1).tolist()
    # Word 2 has context min(2 before, 1 after) = 1 in window 0 and min(0, 3) = 0 in window 1;
    # word 3 has 0 in window 0 (last) and min(1, 2) = 1 in window 1.
    assert chosen == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_a_word_longer_than_a_window_is_cut_not_dropped():
    windows = cut_windows([[[5], list(range(20, 30)), [6]]], [[1, 2, 1]], 6, None, SPECIALS)
    assert [row.tolist() for row in windows.token_ids] == [
        [2, 5, 3, 0, 0, 0], [2, 20, 21, 22, 23, 3], [2, 6, 3, 0, 0, 0]]
    merged = merge_windows(windows, np.eye(8)[np.maximum(windows.labels, 0)], [3])[0]
    assert merged.argmax(axis=-1).tolist() == [1, 2, 1]


def test_entity_spans_follow_strict_iob2():
    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC", "I-PER"]) == [
        ("PER", 0, 2), ("LOC", 4, 5), ("LOC", 5, 6)]


def test_entity_metrics_against_hand_counts():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC", "O"]]
    # 3 true entities, 2 predicted, 1 right (the PER; the second LOC's span differs).
    metrics = entity_metrics(true, pred, ("LOC", "PER"))
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["f1_PER"] == 1.0 and metrics["f1_LOC"] == 0.0
    # An I- that starts an entity is none under strict IOB2.
    assert entity_metrics([["I-PER"]], [["I-PER"]], ("PER",))["f1"] == 0.0


# === Runs ===

def run_tagging(root: Path, language: str, *overrides: str, fmt: str = "conll"):
    data = tagged_dir(root / "data", language, fmt=fmt)
    cfg = compose_config(*TAGGING, f"data.dir={data}", f"data.format={fmt}",
                         f"data.train_file=train.{fmt}", f"data.eval_file=dev.{fmt}", *overrides)
    return train(cfg, root / "run"), root / "run", data


@pytest.fixture(scope="module", params=[("en", "sentencepiece"), ("zh", "wordpiece")],
                ids=["en-sentencepiece", "zh-wordpiece"])
def tagging_run(request, tmp_path_factory):
    """A tiny tagger trained on English words (SentencePiece) or Chinese characters
    (WordPiece), with a window stride, so long sentences are cut."""
    language, tokenizer = request.param
    root = tmp_path_factory.mktemp(f"tagging-{language}")
    metrics, run_dir, data = run_tagging(root, language, f"tokenizer.kind={tokenizer}",
                                         "data.window_stride=4")
    return language, metrics, run_dir, data


def test_a_tiny_tagger_learns_entities_and_reloads(tagging_run):
    language, metrics, run_dir, _ = tagging_run
    final = metrics["final"]
    assert metrics["optimized_metric"]["name"] == "val_f1"
    assert final["val_f1"] > 0.6, final
    assert {"val_precision", "val_recall", "val_accuracy", "val_f1_PER", "val_f1_LOC",
            "val_loss"} <= set(final)
    assert json.loads((run_dir / "labels.json").read_text()) == [
        "O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    # The exported .keras and a rebuild from the best checkpoint give the same logits.
    run = open_run(run_dir)
    exported, rebuilt = load_model(run), load_model(run, "best")
    features = {"token_ids": np.array([[2, 7, 9, 3]]), "segment_ids": np.zeros((1, 4), "int32"),
                "padding_mask": np.ones((1, 4), "int32")}
    np.testing.assert_allclose(exported(features), rebuilt(features), atol=1e-6)
    assert keras.ops.shape(exported(features)) == (1, 4, 5)
    # The SavedModel serves raw strings: a tag (and its probabilities) for every piece.
    serve = tf.saved_model.load(str(run_dir / "export/saved_model")).signatures[
        "serving_default"]
    text = "Tom flew to Rome ." if language == "en" else "张伟去了北京。"
    served = serve(text=tf.constant([text]))
    pieces = exported.preprocessor([text])
    expected = np.asarray(exported(pieces))
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               np.asarray(keras.ops.softmax(expected)), atol=1e-5)
    names = [tag.decode() for tag in served["label"].numpy()[0]]
    assert names == [json.loads((run_dir / "labels.json").read_text())[i]
                     for i in expected[0].argmax(axis=-1)]


def test_evaluate_scores_the_eval_split_as_training_did(tagging_run):
    _, metrics, run_dir, _ = tagging_run
    record = evaluate(run_dir, progress=False)
    assert record["num_examples"] == 60
    for name in ("f1", "precision", "recall", "accuracy", "f1_PER", "f1_LOC"):
        assert record["metrics"][name] == pytest.approx(metrics["final"][f"val_{name}"],
                                                        abs=1e-6), name
    assert record["metrics"]["loss"] == pytest.approx(metrics["final"]["val_loss"], rel=1e-4)
    assert json.loads((run_dir / "eval_dev.json").read_text())["metrics"] == record["metrics"]


def test_a_sentence_longer_than_the_sequence_is_tagged_whole(tagging_run, tmp_path):
    """14 pieces a window, stride 4: a 30-word sentence spans several windows; every word gets
    a tag, and the tags equal those of the sentence's pieces tagged on their own."""
    language, _, run_dir, data = tagging_run
    rng = random.Random(7)
    parts = [tagged_sentence(rng, language) for _ in range(5)]
    long = ([t for p in parts for t in p[0]], [g for p in parts for g in p[1]])
    write_conll(tmp_path / "long.conll", [long])
    write_conll(tmp_path / "parts.conll", parts)
    record = evaluate(run_dir, tmp_path / "long.conll", progress=False)
    assert record["num_examples"] == 1
    predict(run_dir, tmp_path / "long.conll", tmp_path / "long.jsonl", progress=False)
    (row,) = read_jsonl(tmp_path / "long.jsonl")
    assert row["tokens"] == long[0] and len(row["tags"]) == len(long[0])
    agree = np.mean(np.array(row["tags"]) == np.array(long[1]))
    assert agree > 0.8, (row["tags"], long[1])


def test_predict_tags_raw_text_with_character_offsets(tagging_run, tmp_path):
    """Raw text is cut into words (Chinese: characters; else on whitespace), tagged as the same
    words given pre-tokenized, and each entity's offsets slice its text out of the input."""
    language, _, run_dir, _ = tagging_run
    texts = (["Anna Berg flew to New York today .", "  Tom said\tnothing .  "]
             if language == "en" else ["张伟昨天去了北京。", "在上海，李娜 见到了王小明。"])
    words = ([text.split() for text in texts] if language == "en"
             else [[c for c in text if not c.isspace()] for text in texts])
    (tmp_path / "new.txt").write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    write_conll(tmp_path / "words.conll", [(w, ["O"] * len(w)) for w in words])
    predict(run_dir, tmp_path / "new.txt", tmp_path / "out.jsonl", progress=False)
    predict(run_dir, tmp_path / "words.conll", tmp_path / "words.jsonl", progress=False)
    rows, pretokenized = read_jsonl(tmp_path / "out.jsonl"), read_jsonl(tmp_path / "words.jsonl")
    assert [row["text"] for row in rows] == texts  # blank lines skipped, texts kept as they are
    assert [row["tokens"] for row in rows] == words
    assert [row["tags"] for row in rows] == [row["tags"] for row in pretokenized]
    for row in rows:
        spans = entity_spans(row["tags"])
        assert [e["type"] for e in row["entities"]] == [kind for kind, _, _ in spans]
        for entity, (_, first, end) in zip(row["entities"], spans, strict=True):
            assert row["text"][entity["start"]:entity["end"]] == entity["text"]
            assert entity["text"].startswith(row["tokens"][first])
            assert entity["text"].endswith(row["tokens"][end - 1])
    assert any(row["entities"] for row in rows)


def test_predict_refuses_a_file_that_is_not_utf8_and_writes_nothing(tagging_run, tmp_path):
    _, _, run_dir, _ = tagging_run
    text = "Tom flew to Rome .\ncaf\u00e9 au lait\n"
    (tmp_path / "latin1.txt").write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:2: bytes that are not UTF-8"):
        predict(run_dir, tmp_path / "latin1.txt", tmp_path / "out.jsonl", progress=False)
    assert not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob(".out.jsonl*"))


def test_predict_writes_conll_from_pretokenized_input(tagging_run, tmp_path):
    _, _, run_dir, data = tagging_run
    predict(run_dir, data / "dev.conll", tmp_path / "dev.pred.conll", progress=False)
    predicted = tagged.read_tagged(tmp_path / "dev.pred.conll", "conll", "iob2")
    gold = tagged.read_tagged(data / "dev.conll", "conll", "iob2")
    assert [s.tokens for s in predicted] == [s.tokens for s in gold]
    record = json.loads((run_dir / "eval_dev.json").read_text()) if (
        run_dir / "eval_dev.json").is_file() else evaluate(run_dir, progress=False)
    f1 = entity_metrics([list(s.tags) for s in gold], [list(s.tags) for s in predicted],
                        ("LOC", "PER"))["f1"]
    assert f1 == pytest.approx(record["metrics"]["f1"])


def test_tags_in_the_eval_file_that_training_never_had_are_named(tmp_path):
    data = tagged_dir(tmp_path / "data", "en")
    with (data / "dev.conll").open("a") as stream:
        stream.write("Acme\tB-ORG\nrose\tO\n\n")
    cfg = compose_config(*TAGGING, f"data.dir={data}")
    with pytest.raises(DataError, match=r"dev\.conll:\d+: 1 tag the training split does not "
                                        r"have: B-ORG"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_hf_is_a_transformers_token_classifier_with_the_same_logits(tagging_run):
    torch = pytest.importorskip("torch", reason="the `interop` extra is not installed")
    transformers = pytest.importorskip("transformers", reason="the `interop` extra is missing")
    _, _, run_dir, _ = tagging_run
    folder = run_dir / "export" / "hf"
    config = json.loads((folder / "config.json").read_text())
    tags = json.loads((run_dir / "labels.json").read_text())
    assert config["architectures"] == ["AlbertForTokenClassification"]
    assert [config["id2label"][str(i)] for i in range(len(tags))] == tags
    model = load_model(open_run(run_dir))
    texts = ["Tom flew to Rome .", "张伟去了北京。"]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    hf_inputs = hf_tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    app = model.preprocessor(texts)
    length = hf_inputs["input_ids"].shape[1]
    np.testing.assert_array_equal(np.asarray(app["token_ids"])[:, :length],
                                  hf_inputs["input_ids"].numpy())
    with torch.no_grad():
        expected = transformers.AlbertForTokenClassification.from_pretrained(folder).eval()(
            **hf_inputs).logits.numpy()
    logits = np.asarray(model({name: value[:, :length] for name, value in app.items()}))
    mask = hf_inputs["attention_mask"].numpy()[..., None].astype(bool)
    difference = float(np.abs((logits - expected) * mask).max())
    print(f"export/hf token logits max abs diff {difference:.2e}")
    assert difference < 1e-5
