"""Train or load a SentencePiece model with ALBERT's special pieces.

keras_hub.tokenizers.compute_sentence_piece_proto cannot emit ALBERT's special pieces, so training
goes through sentencepiece.SentencePieceTrainer directly.
"""

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import keras_hub
import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from app.data.pretraining.corpus import expand_files, read_lines, split_sentences
from app.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# ALBERT's ids: <pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4.
CONTROL_PIECES = ("[CLS]", "[SEP]", "[MASK]")
SPECIAL_PIECES = ("<pad>", "<unk>") + CONTROL_PIECES
PROGRESS_EVERY = 100_000  # sentences read between progress lines


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


def load_tokenizer(proto: str | Path) -> keras_hub.models.AlbertTokenizer:
    """Load a SentencePiece model as an AlbertTokenizer, checking ALBERT's special pieces."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(proto))
    missing = [p for p in SPECIAL_PIECES if processor.piece_to_id(p) == processor.unk_id()
               and p != "<unk>"]
    if missing:
        raise ConfigError(
            f"SentencePiece model '{proto}' lacks ALBERT's special pieces {missing}; "
            f"expected all of {list(SPECIAL_PIECES)}"
        )
    return keras_hub.models.AlbertTokenizer(proto=str(proto))


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


def tokenizer_report(proto: str | Path, sentences: list[str]) -> dict:
    """Vocabulary size and, on held-out sentences, pieces per word and the share of known words.

    A word is known when none of its pieces is `<unk>`.
    """
    processor = sentencepiece.SentencePieceProcessor(model_file=str(proto))
    words = [word for sentence in sentences for word in sentence.split()]
    pieces = processor.encode(words) if words else []
    known = sum(processor.unk_id() not in word_pieces for word_pieces in pieces)
    return {
        "vocab_size": processor.get_piece_size(),
        "special_pieces": {p: processor.piece_to_id(p) for p in SPECIAL_PIECES},
        "held_out_sentences": len(sentences),
        "held_out_words": len(words),
        "pieces_per_word": sum(map(len, pieces)) / len(words) if words else None,
        "word_coverage": known / len(words) if words else None,
    }


def train_tokenizer(
    input: str,
    output: str | Path,
    vocab_size: int,
    model_type: str = "unigram",
    lowercase: bool = True,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 1_000_000,
    holdout_every: int = 100,
    max_held_out: int = 10_000,
) -> dict:
    """Train `<output>/spm.model` + `spm.vocab` on text files; return the report on it.

    Args:
        input: files or globs, comma-separated (`.gz` read transparently); sentences are split
            from each line.
        output: the folder to write.
        vocab_size: exact vocabulary size (an error when the corpus cannot support it).
        model_type: "unigram" or "bpe".
        lowercase: case-fold (in the model's normalizer).
        character_coverage: share of characters the vocabulary covers.
        input_sentence_size: train on a random sample of this many sentences (0: all).
        holdout_every: every n-th sentence is held out for the report (0: none).
        max_held_out: the most held-out sentences.
    """
    if model_type not in ("unigram", "bpe"):
        raise ConfigError(
            f"`model_type` must be one of ['unigram', 'bpe']. Received: {model_type!r}")
    if vocab_size < len(SPECIAL_PIECES) + 1:
        raise ConfigError(f"`vocab_size` must be > {len(SPECIAL_PIECES)}. Received: {vocab_size}")
    files = expand_files(".", input, "input")
    held_out: list[str] = []
    output = Path(output)
    log.info("Training a %s SentencePiece model (%d pieces) on %s", model_type, vocab_size,
             [str(f) for f in files])
    texts = SentenceFeed(_sentences(files, holdout_every, held_out, max_held_out))
    try:
        proto = train_sentencepiece(
            texts, output / "spm", vocab_size, model_type=model_type, lowercase=lowercase,
            character_coverage=character_coverage, hard_vocab_limit=True,
            input_sentence_size=input_sentence_size,
        )
    except DataError:
        if texts.count == 0:
            raise DataError(f"`input` has no text: {[str(f) for f in files]} contain no "
                            f"sentences; expected UTF-8 text files") from None
        raise
    return {"model": str(proto), "input": [str(f) for f in files],
            "training_sentences": texts.count,
            "model_type": model_type, "lowercase": lowercase,
            "character_coverage": character_coverage, **tokenizer_report(proto, held_out)}
