"""Train or load a SentencePiece model with ALBERT's special pieces.

keras_hub.tokenizers.compute_sentence_piece_proto cannot emit ALBERT's special pieces, so training
goes through sentencepiece.SentencePieceTrainer directly. keras-hub's AlbertTokenizer applies only
the model's own normalizer; AlbertTextTokenizer adds the text normalization transformers'
AlbertTokenizer applies first (`do_lower_case`, `keep_accents`, whitespace splitting).
"""

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import keras
import keras_hub
import sentencepiece
import tensorflow as tf
import tensorflow_text
from sentencepiece import sentencepiece_model_pb2

from app.data.pretraining.corpus import expand_files, read_lines
from app.data.text import split_sentences
from app.data.text import words as text_words
from app.data.wordpiece import SPECIAL_TOKENS, WHITESPACE, WordPieceEncoder, train_wordpiece
from app.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# ALBERT's ids: <pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4.
CONTROL_PIECES = ("[CLS]", "[SEP]", "[MASK]")
SPECIAL_PIECES = ("<pad>", "<unk>") + CONTROL_PIECES
PROGRESS_EVERY = 100_000  # sentences read between progress lines
NORMALIZATION = ("lowercase", "strip_accents", "remove_space")
# tokenizers' StripAccents removes the marks (Mn, Mc, Me) of Unicode 9.0, whose tables it
# carries: U+1CF2-1CF3 were marks then; marks assigned since (ICU knows them) it keeps.
MARKS = r"[\p{M}\x{1CF2}\x{1CF3}]"


class SentenceFeed:
    """The sentences SentencePiece reads, counted, with a progress line every PROGRESS_EVERY.

    SentencePiece itself is silent (`minloglevel=2`): this says how far reading got and when
    the (CPU-bound, quiet) training itself starts.
    """

    def __init__(self, texts: Iterable[str]):
        self.texts = iter(texts)
        self.count = 0
        self.done = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            text = next(self.texts)
        except StopIteration:
            if not self.done:  # SentencePiece may ask again after the end
                log.info("SentencePiece: read %d sentences; training the model", self.count)
                self.done = True
            raise
        self.count += 1
        if self.count % PROGRESS_EVERY == 0:
            log.info("SentencePiece: read %d sentences", self.count)
        return text


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str | Path,
    vocab_size: int,
    model_type: str = "unigram",
    lowercase: bool = True,
    character_coverage: float = 0.9995,
    hard_vocab_limit: bool = True,
    input_sentence_size: int = 0,
) -> Path:
    """Train a SentencePiece model whose first ids are ALBERT's special pieces.

    Args:
        texts: training sentences.
        model_prefix: writes `<prefix>.model` and `<prefix>.vocab`.
        vocab_size: the vocabulary size (an upper bound when `hard_vocab_limit` is False).
        model_type: "unigram" or "bpe".
        lowercase: case-fold in the model's normalizer, so it also applies at inference.
        character_coverage: fraction of characters covered by the vocabulary.
        hard_vocab_limit: fail if the texts cannot support `vocab_size` pieces.
        input_sentence_size: train on a random sample of this many sentences (0: all).

    Returns:
        The path of the `.model` file.
    """
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=texts if isinstance(texts, SentenceFeed) else SentenceFeed(texts),
            model_prefix=str(model_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            control_symbols=list(CONTROL_PIECES),
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            character_coverage=character_coverage,
            hard_vocab_limit=hard_vocab_limit,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            minloglevel=2,
        )
    except RuntimeError as error:
        limit = re.search(r"Vocabulary size too high.*<= (\d+)", str(error))
        if limit:
            raise DataError(
                f"The texts cannot support a vocabulary of {vocab_size} pieces (`vocab_size`); "
                f"expected a vocab_size <= {limit.group(1)}, or more text"
            ) from error
        raise DataError(f"SentencePiece training failed: {error}") from error
    proto = model_prefix.with_suffix(".model")
    _forget_training_path(proto)
    return proto


def _forget_training_path(proto: Path) -> None:
    """Keep only the file name of the training prefix in the model (SentencePiece records the
    path given, which would travel with every preset and `.keras` file of the run)."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto.read_bytes())
    model.trainer_spec.model_prefix = proto.stem
    proto.write_bytes(model.SerializeToString())


def _lowercase(text: tf.Tensor) -> tf.Tensor:
    """Lower-case each character alone, as tokenizers' Lowercase (Rust's char::to_lowercase) does.

    tf.strings.lower on whole strings applies ICU's final-sigma rule ("ΟΔΟΣ" -> "οδος", not
    "οδοσ") and drops everything after a NUL character, so it gets one character at a time.
    """
    chars = tf.strings.unicode_split(text, "UTF-8")
    lowered = tf.ragged.map_flat_values(
        lambda c: tf.where(c == "\x00", c, tf.strings.lower(c, encoding="utf-8")), chars)
    return tf.strings.reduce_join(lowered, axis=-1)


def _kept_space(proto: bytes | None) -> str:
    """The whitespace characters the model's normalizer keeps (nmt_nfkc drops U+000B).

    transformers splits on whitespace after that normalizer: the dropped ones are left to it (a
    space in their place could join, or split, what is around them differently).
    """
    if proto is None:
        return WHITESPACE
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    return "".join(c for c in WHITESPACE
                   if processor.normalize(f"a{c}b") != processor.normalize("ab"))


@keras.saving.register_keras_serializable(package="app")
class AlbertTextTokenizer(keras_hub.models.AlbertTokenizer):
    """An AlbertTokenizer that normalizes text first, as transformers' AlbertTokenizer does.

    The steps, in transformers' order and with TensorFlow ops only (tf.data, SavedModel): "``"
    and "''" become '"'; `strip_accents`: NFKD, then combining marks removed; `lowercase`, one
    character at a time; `remove_space`: runs of Unicode whitespace become one space, ends
    stripped. transformers always splits on whitespace (whatever its `remove_space`); without
    `remove_space` whitespace is left to the SentencePiece normalizer, which agrees where it
    makes the whitespace a space or drops it (nmt_nfkc: all but U+0085).

    Args:
        proto: the SentencePiece model (path or bytes).
        lowercase: lower-case (transformers' `do_lower_case`).
        strip_accents: remove accents (transformers' `keep_accents=False`).
        remove_space: collapse and strip whitespace (transformers' `remove_space`).
    """

    def __init__(self, proto, lowercase: bool = False, strip_accents: bool = False,
                 remove_space: bool = False, **kwargs):
        super().__init__(proto=proto, **kwargs)
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.remove_space = remove_space

    def set_proto(self, proto):
        super().set_proto(proto)
        self.space = _kept_space(self.proto)

    def normalize(self, inputs) -> tf.Tensor:
        """The text (strings or a string tensor) as transformers normalizes it."""
        with tf.device("cpu"):
            text = tf.convert_to_tensor(inputs, dtype=tf.string)
            text = tf.strings.regex_replace(tf.strings.regex_replace(text, "``", '"'), "''", '"')
            if self.strip_accents:
                text = tf.strings.regex_replace(
                    tensorflow_text.normalize_utf8(text, "NFKD"), MARKS, "")
            if self.lowercase:
                text = _lowercase(text)
            if self.remove_space:
                text = tf.strings.strip(tf.strings.regex_replace(text, f"[{self.space}]+", " "))
        return text

    def tokenize(self, inputs):
        return super().tokenize(self.normalize(inputs))

    def get_config(self):
        return {**super().get_config(), **{name: getattr(self, name) for name in NORMALIZATION}}


def load_tokenizer(proto: str | Path, lowercase: bool = False, strip_accents: bool = False,
                   remove_space: bool = False) -> keras_hub.models.AlbertTokenizer:
    """Load a SentencePiece model as an AlbertTokenizer, checking ALBERT's special pieces.

    Returns keras-hub's own AlbertTokenizer when no normalization is asked for (so presets stay
    loadable by keras-hub alone), else an AlbertTextTokenizer.
    """
    processor = sentencepiece.SentencePieceProcessor(model_file=str(proto))
    missing = [p for p in SPECIAL_PIECES if processor.piece_to_id(p) == processor.unk_id()
               and p != "<unk>"]
    if missing:
        raise ConfigError(
            f"SentencePiece model '{proto}' lacks ALBERT's special pieces {missing}; "
            f"expected all of {list(SPECIAL_PIECES)}"
        )
    if lowercase or strip_accents or remove_space:
        return AlbertTextTokenizer(proto=str(proto), lowercase=lowercase,
                                   strip_accents=strip_accents, remove_space=remove_space)
    return keras_hub.models.AlbertTokenizer(proto=str(proto))


def normalization_from_transformers(tokenizer_config: dict) -> dict:
    """AlbertTextTokenizer's normalization arguments for a transformers tokenizer_config.json."""
    return {
        "lowercase": bool(tokenizer_config.get("do_lower_case", True)),
        "strip_accents": not tokenizer_config.get("keep_accents", False),
        "remove_space": bool(tokenizer_config.get("remove_space", True)),
    }


def transformers_tokenizer_config(tokenizer: keras_hub.models.AlbertTokenizer,
                                  model_max_length: int | None = None) -> dict:
    """A transformers tokenizer_config.json for `tokenizer` (to sit next to its spiece.model).

    A keras-hub AlbertTokenizer normalizes only in its SentencePiece model: it exports as
    `do_lower_case=False, keep_accents=True, remove_space=False`.
    """
    flags = {name: getattr(tokenizer, name, False) for name in NORMALIZATION}
    config = {
        "tokenizer_class": "AlbertTokenizer",
        "do_lower_case": flags["lowercase"],
        "keep_accents": not flags["strip_accents"],
        "remove_space": flags["remove_space"],
        "cls_token": "[CLS]", "sep_token": "[SEP]", "bos_token": "[CLS]", "eos_token": "[SEP]",
        "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "[MASK]",
        # transformers 5's AlbertTokenizer leaves token_type_ids out by default, which would
        # give a pair's second segment the first one's embedding.
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return config


def _sentences(files: list[Path], holdout_every: int, held_out: list[str], max_held_out: int):
    """Sentences of `files` for training; every `holdout_every`-th goes to `held_out` instead."""
    index = 0
    for path in files:
        for line in read_lines(path):
            for sentence in split_sentences(line.strip()):
                index += 1
                if holdout_every and index % holdout_every == 0 and len(held_out) < max_held_out:
                    held_out.append(sentence)
                else:
                    yield sentence


def tokenizer_report(processor, sentences: list[str]) -> dict:
    """Vocabulary size and, on held-out sentences, pieces per word and the share of known words.

    Args:
        processor: SentencePiece's processor or app.data.wordpiece.WordPieceEncoder.
        sentences: held-out text; words are whitespace-separated, a CJK character is one.

    A word is known when none of its pieces is the unknown token.
    """
    words = [word for sentence in sentences for word in text_words(sentence)]
    pieces = processor.encode(words) if words else []
    known = sum(processor.unk_id() not in word_pieces for word_pieces in pieces)
    specials = SPECIAL_PIECES if processor.piece_to_id("<pad>") == 0 else SPECIAL_TOKENS
    return {
        "vocab_size": processor.get_piece_size(),
        "special_pieces": {p: processor.piece_to_id(p) for p in specials},
        "held_out_sentences": len(sentences),
        "held_out_words": len(words),
        "pieces_per_word": sum(map(len, pieces)) / len(words) if words else None,
        "word_coverage": known / len(words) if words else None,
    }


def train_tokenizer(
    input: str,
    output: str | Path,
    vocab_size: int,
    kind: str = "sentencepiece",
    model_type: str = "unigram",
    lowercase: bool = True,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 1_000_000,
    holdout_every: int = 100,
    max_held_out: int = 10_000,
) -> dict:
    """Train `<output>/spm.model` + `spm.vocab` (or WordPiece's `<output>/vocab.txt`) on text
    files; return the report on it.

    Args:
        input: files or globs, comma-separated (`.gz` read transparently); sentences are split
            from each line.
        output: the folder to write.
        vocab_size: SentencePiece: the exact vocabulary size (an error when the corpus cannot
            support it); WordPiece: the most entries.
        kind: "sentencepiece" or "wordpiece" (BERT's `[PAD] [UNK] [CLS] [SEP] [MASK]` first).
        model_type: "unigram" or "bpe" (SentencePiece).
        lowercase: case-fold (in the model's normalizer).
        character_coverage: share of characters the vocabulary covers.
        input_sentence_size: train on a random sample of this many sentences (0: all).
        holdout_every: every n-th sentence is held out for the report (0: none).
        max_held_out: the most held-out sentences.
    """
    if kind not in ("sentencepiece", "wordpiece"):
        raise ConfigError(
            f"`kind` must be one of ['sentencepiece', 'wordpiece']. Received: {kind!r}")
    if model_type not in ("unigram", "bpe"):
        raise ConfigError(
            f"`model_type` must be one of ['unigram', 'bpe']. Received: {model_type!r}")
    if vocab_size < len(SPECIAL_PIECES) + 1:
        raise ConfigError(f"`vocab_size` must be > {len(SPECIAL_PIECES)}. Received: {vocab_size}")
    files = expand_files(".", input, "input")
    held_out: list[str] = []
    output = Path(output)
    log.info("Training a %s %s tokenizer (%d pieces) on %s", model_type if kind ==
             "sentencepiece" else "", kind, vocab_size, [str(f) for f in files])
    texts = SentenceFeed(_sentences(files, holdout_every, held_out, max_held_out))
    try:
        if kind == "wordpiece":
            model = train_wordpiece(texts, output, vocab_size, lowercase=lowercase)
            processor = WordPieceEncoder(model.read_bytes(), lowercase=lowercase)
        else:
            model = train_sentencepiece(
                texts, output / "spm", vocab_size, model_type=model_type, lowercase=lowercase,
                character_coverage=character_coverage, hard_vocab_limit=True,
                input_sentence_size=input_sentence_size,
            )
            processor = sentencepiece.SentencePieceProcessor(model_file=str(model))
    except DataError:
        if texts.count == 0:
            raise DataError(f"`input` has no text: {[str(f) for f in files]} contain no "
                            f"sentences; expected UTF-8 text files") from None
        raise
    if texts.count == 0:
        raise DataError(f"`input` has no text: {[str(f) for f in files]} contain no "
                        f"sentences; expected UTF-8 text files")
    return {"model": str(model), "kind": kind, "input": [str(f) for f in files],
            "training_sentences": texts.count,
            "model_type": model_type, "lowercase": lowercase,
            "character_coverage": character_coverage, **tokenizer_report(processor, held_out)}
