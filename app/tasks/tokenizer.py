"""The run's tokenizer: the preset's, a given file, or one trained on the training texts.

Two kinds (`tokenizer.kind`): SentencePiece (`spm.model`, ALBERT's own) and WordPiece
(`vocab.txt`, BERT's, as the published Chinese ALBERTs use). The run folder keeps the files
under `tokenizer/`, so it is self-contained, with the text normalization in
`normalization.json` where there is one.
"""

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import keras_hub
import sentencepiece
from omegaconf import DictConfig

from app.data.text import is_cjk, words
from app.data.tokenizer import NORMALIZATION, load_tokenizer, train_sentencepiece
from app.data.wordpiece import (
    SPECIAL_TOKENS,
    AlbertWordPieceTokenizer,
    WordPieceEncoder,
    load_wordpiece,
    train_wordpiece,
)
from app.runs.layout import NORMALIZATION_FILE, PROTO_FILE, VOCAB_FILE
from app.runs.record import write_json
from app.runtime.loading import load_preset_tokenizer

log = logging.getLogger(__name__)

# `tokenizer.vocab_size: null` trains a vocabulary of half the training text's distinct words
# (each CJK character counted as a word of its own), within these bounds (ALBERT's own
# vocabulary has 30000 pieces).
MIN_VOCABULARY, MAX_VOCABULARY = 1000, 30000
WORDPIECE_NORMALIZATION = ("lowercase", "strip_accents", "split_on_cjk")


def vocabulary_size(texts: Iterable[str], lowercase: bool) -> tuple[int, int]:
    """The vocabulary to train for these texts, and their number of distinct words.

    Words are whitespace-separated, and every CJK character is one of its own (text without
    spaces would otherwise be one "word" per line). All distinct CJK characters plus half the
    other distinct words, rounded down to a multiple of 100, but never fewer than every distinct
    character plus the special pieces (rounded up: SentencePiece needs a piece per character),
    within [MIN_VOCABULARY, MAX_VOCABULARY].
    """
    characters: set[str] = set()
    others: set[str] = set()
    alphabet: set[str] = set()
    for text in texts:
        text = text.lower() if lowercase else text
        alphabet.update(text)
        for word in words(text):
            (characters if len(word) == 1 and is_cjk(word) else others).add(word)
    letters = len({c for c in alphabet if not c.isspace()}) + len(SPECIAL_TOKENS)
    size = max((len(characters) + len(others) // 2) // 100, -(-letters // 100)) * 100
    return min(max(size, MIN_VOCABULARY), MAX_VOCABULARY), len(others) + len(characters)


def build_tokenizer(cfg: DictConfig, texts: Iterable[str], out_dir: Path):
    """The run's tokenizer: the preset's (or `model.tokenizer`'s), `tokenizer.proto` /
    `tokenizer.vocab`, or one of `tokenizer.kind` trained on `texts`.

    Its files are copied to `out_dir` (`spm.model` or `vocab.txt`, and `normalization.json`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = cfg.tokenizer
    if cfg.model.preset is not None:
        tokenizer = load_preset_tokenizer(cfg.model.preset, tokenizer=cfg.model.get("tokenizer"))
        save_tokenizer(tokenizer, out_dir)
        return tokenizer
    given = settings.vocab if settings.kind == "wordpiece" else settings.proto
    name = VOCAB_FILE if settings.kind == "wordpiece" else PROTO_FILE
    if given is not None:
        if Path(given).resolve() != (out_dir / name).resolve():
            shutil.copyfile(given, out_dir / name)
        if settings.kind == "wordpiece" and not (out_dir / NORMALIZATION_FILE).is_file():
            write_json(out_dir / NORMALIZATION_FILE, {"lowercase": settings.lowercase})
        return load_run_tokenizer(out_dir)
    size = settings.vocab_size
    if size is None:
        texts = list(texts)  # read twice; the trainers hold them all in memory anyway
        size, distinct = vocabulary_size(texts, settings.lowercase)
        log.info("Vocabulary size %d: the distinct CJK characters and half the other distinct "
                 "words (%d units in all) of the training texts, at least one piece per "
                 "character, within [%d, %d] "
                 "(tokenizer.vocab_size to choose)", size, distinct, MIN_VOCABULARY,
                 MAX_VOCABULARY)
    if settings.kind == "wordpiece":
        log.info("Training a WordPiece vocabulary (<= %d) on the training texts", size)
        train_wordpiece(texts, out_dir, vocab_size=size, lowercase=settings.lowercase)
        write_json(out_dir / NORMALIZATION_FILE, {"lowercase": settings.lowercase})
    else:
        log.info("Training a %s SentencePiece model (vocab <= %d) on the training texts",
                 settings.model_type, size)
        train_sentencepiece(
            texts,
            out_dir / "spm",
            vocab_size=size,
            model_type=settings.model_type,
            lowercase=settings.lowercase,
            character_coverage=settings.character_coverage,
            hard_vocab_limit=False,
        )
    return load_run_tokenizer(out_dir)


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """Write a loaded tokenizer's files to a run's `tokenizer/` folder."""
    if isinstance(tokenizer, AlbertWordPieceTokenizer):
        (out_dir / VOCAB_FILE).write_text(
            "".join(f"{token}\n" for token in tokenizer.get_vocabulary()), encoding="utf-8")
        normalization = {key: getattr(tokenizer, key) for key in WORDPIECE_NORMALIZATION}
    else:
        (out_dir / PROTO_FILE).write_bytes(tokenizer.proto)
        normalization = {key: getattr(tokenizer, key, False) for key in NORMALIZATION}
        if not any(normalization.values()):
            return
    log.info("Text normalization of the preset's tokenizer: %s", normalization)
    write_json(out_dir / NORMALIZATION_FILE, normalization)


def load_run_tokenizer(tokenizer_dir: Path) -> keras_hub.tokenizers.Tokenizer:
    """A run's tokenizer from its folder: `vocab.txt` or `spm.model`, and its normalization."""
    normalization = tokenizer_dir / NORMALIZATION_FILE
    settings = json.loads(normalization.read_text()) if normalization.is_file() else {}
    if (tokenizer_dir / VOCAB_FILE).is_file():
        return load_wordpiece(tokenizer_dir / VOCAB_FILE, **settings)
    return load_tokenizer(tokenizer_dir / PROTO_FILE, **settings)


def token_encoder(tokenizer):
    """A Python-side encoder of the tokenizer's ids for corpus preparation (`encode`,
    `piece_to_id`, `unk_id`, `get_piece_size`, as SentencePiece's processor has)."""
    if isinstance(tokenizer, AlbertWordPieceTokenizer):
        return WordPieceEncoder(
            "".join(f"{token}\n" for token in tokenizer.get_vocabulary()).encode("utf-8"),
            **{key: getattr(tokenizer, key) for key in WORDPIECE_NORMALIZATION})
    return sentencepiece.SentencePieceProcessor(model_proto=tokenizer.proto)
