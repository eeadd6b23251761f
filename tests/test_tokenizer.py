"""SentencePiece with ALBERT's special pieces: training, round trip, the CLI and its report."""

import json
import subprocess
import sys
from pathlib import Path

import keras_hub
import pytest
import sentencepiece

from app.data.tokenizer import SPECIAL_PIECES, load_tokenizer, train_sentencepiece, train_tokenizer
from app.errors import ConfigError, DataError

TEXT = (
    "The quick brown fox jumps over the lazy dog. A small cat sleeps in the warm sun. "
    "Children play football in the park after school. My neighbour grows tomatoes and beans. "
    "The train to the city leaves at seven. We watched a film about the ocean last night. "
)


def write_text(path: Path, repeat: int = 30) -> Path:
    """A small English corpus, one paragraph per line."""
    path.write_text((TEXT + "\n") * repeat, encoding="utf-8")
    return path


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_special_piece_ids_and_round_trip(tmp_path, model_type):
    sentences = TEXT.split(". ") * 20
    proto = train_sentencepiece(sentences, tmp_path / "spm", vocab_size=80, model_type=model_type,
                                hard_vocab_limit=False)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(proto))
    assert [processor.piece_to_id(p) for p in SPECIAL_PIECES] == [0, 1, 2, 3, 4]
    tokenizer = load_tokenizer(proto)
    assert tokenizer.mask_token_id == 4 and tokenizer.pad_token_id == 0
    text = "The Lazy dog sleeps in the park"
    ids = tokenizer(text)
    assert 1 not in list(ids)    # no <unk> for known characters
    assert tokenizer.detokenize(ids) == text.lower()


def test_lowercase_option_keeps_case(tmp_path):
    proto = train_sentencepiece(TEXT.split(". ") * 20, tmp_path / "spm", vocab_size=80,
                                lowercase=False, hard_vocab_limit=False)
    tokenizer = load_tokenizer(proto)
    assert tokenizer.detokenize(tokenizer("The Cat sleeps")) == "The Cat sleeps"


def test_train_tokenizer_writes_model_vocab_and_report(tmp_path):
    corpus = write_text(tmp_path / "a.txt")
    report = train_tokenizer(str(tmp_path / "*.txt"), tmp_path / "out", vocab_size=60,
                             holdout_every=10)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"spm.model", "spm.vocab"}
    assert report["model"] == str(tmp_path / "out" / "spm.model")
    # The model does not carry the path it was trained at (it travels with every export).
    assert str(tmp_path).encode() not in (tmp_path / "out" / "spm.model").read_bytes()
    assert report["vocab_size"] == 60 and report["input"] == [str(corpus)]
    assert report["special_pieces"] == {p: i for i, p in enumerate(SPECIAL_PIECES)}
    assert report["held_out_sentences"] > 10 and 1.0 <= report["pieces_per_word"] < 4.0
    assert report["word_coverage"] > 0.99
    vocab_lines = (tmp_path / "out" / "spm.vocab").read_text().splitlines()
    assert [line.split("\t")[0] for line in vocab_lines[:5]] == list(SPECIAL_PIECES)


def test_train_tokenizer_wordpiece_on_chinese_text(tmp_path):
    lines = ["房间很干净，服务很好。", "早餐一般！位置不错", "隔音太差了，不会再来。"] * 30
    (tmp_path / "zh.txt").write_text("\n".join(lines), encoding="utf-8")
    report = train_tokenizer(str(tmp_path / "zh.txt"), tmp_path / "out", vocab_size=200,
                             kind="wordpiece", holdout_every=10)
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"vocab.txt"}
    assert report["kind"] == "wordpiece" and report["model"] == str(tmp_path / "out" / "vocab.txt")
    assert report["special_pieces"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3,
                                        "[MASK]": 4}
    # Words of Chinese text are its characters: one piece each, all known.
    assert report["pieces_per_word"] == 1.0 and report["word_coverage"] == 1.0
    assert report["held_out_words"] > report["held_out_sentences"] * 3


def test_vocab_size_the_corpus_cannot_support_is_a_clear_error(tmp_path):
    write_text(tmp_path / "a.txt", repeat=2)
    with pytest.raises(DataError, match=r"support a vocabulary of 5000 pieces.*vocab_size <= \d+"):
        train_tokenizer(str(tmp_path / "a.txt"), tmp_path / "out", vocab_size=5000)


def test_empty_input_and_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="`input` has no text"):
        train_tokenizer(str(tmp_path / "empty.txt"), tmp_path / "out", vocab_size=50)
    with pytest.raises(ConfigError, match="`input` matches no file"):
        train_tokenizer(str(tmp_path / "nothing*.txt"), tmp_path / "out", vocab_size=50)


def test_proto_without_mask_piece_is_refused(tmp_path):
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.split(". ") * 20), model_prefix=str(tmp_path / "nomask"),
        vocab_size=60, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        control_symbols=["[CLS]", "[SEP]"], hard_vocab_limit=False, minloglevel=2)
    with pytest.raises(ConfigError, match=r"lacks ALBERT's special pieces \['\[MASK\]'\]"):
        load_tokenizer(tmp_path / "nomask.model")


def test_cli_trains_a_tokenizer_albert_accepts(tmp_path):
    write_text(tmp_path / "a.txt")
    out = tmp_path / "tok"
    result = subprocess.run(
        [sys.executable, "-m", "app.tokenizer", f"input={tmp_path / 'a.txt'}", "vocab_size=60",
         "model_type=bpe", f"output={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "report.json").read_text())["vocab_size"] == 60
    tokenizer = keras_hub.models.AlbertTokenizer(proto=str(out / "spm.model"))
    assert tokenizer.vocabulary_size() == 60
