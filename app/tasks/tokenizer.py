"""The run's tokenizer: the preset's, `tokenizer.proto`, or one trained on the training texts."""

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import keras_hub
from omegaconf import DictConfig

from app.data.tokenizer import NORMALIZATION, load_tokenizer, train_sentencepiece
from app.runs.layout import NORMALIZATION_FILE, PROTO_FILE
from app.runs.record import write_json
from app.runtime.loading import load_preset_tokenizer

log = logging.getLogger(__name__)

# `tokenizer.vocab_size: null` trains a vocabulary of half the training text's distinct words,
# within these bounds (ALBERT's own vocabulary has 30000 pieces).
MIN_VOCABULARY, MAX_VOCABULARY = 1000, 30000


def vocabulary_size(texts: Iterable[str], lowercase: bool) -> tuple[int, int]:
    """The vocabulary to train for these texts, and their number of distinct words.

    Half the distinct whitespace-separated words (case-folded when `lowercase`), rounded down
    to a multiple of 100, within [MIN_VOCABULARY, MAX_VOCABULARY].
    """
    words: set[str] = set()
    for text in texts:
        words.update((text.lower() if lowercase else text).split())
    size = len(words) // 2 // 100 * 100
    return min(max(size, MIN_VOCABULARY), MAX_VOCABULARY), len(words)


def build_tokenizer(
    cfg: DictConfig, texts: Iterable[str], out_dir: Path
) -> keras_hub.models.AlbertTokenizer:
    """The run's tokenizer: the preset's, `tokenizer.proto`, or one trained on `texts`.

    The SentencePiece model is copied to `out_dir/spm.model` (and a preset's text normalization
    to `out_dir/normalization.json`) so the run folder is self-contained.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.preset is not None:
        tokenizer = load_preset_tokenizer(cfg.model.preset)
        (out_dir / PROTO_FILE).write_bytes(tokenizer.proto)
        normalization = {key: getattr(tokenizer, key, False) for key in NORMALIZATION}
        if any(normalization.values()):
            log.info("Text normalization of the preset's tokenizer: %s", normalization)
            write_json(out_dir / NORMALIZATION_FILE, normalization)
        return tokenizer
    if cfg.tokenizer.proto is not None:
        if Path(cfg.tokenizer.proto).resolve() != (out_dir / PROTO_FILE).resolve():
            shutil.copyfile(cfg.tokenizer.proto, out_dir / PROTO_FILE)
    else:
        settings = cfg.tokenizer
        size = settings.vocab_size
        if size is None:
            texts = list(texts)  # read twice; SentencePiece holds them all in memory anyway
            size, distinct = vocabulary_size(texts, settings.lowercase)
            log.info("Vocabulary size %d: half the %d distinct words of the training texts, "
                     "within [%d, %d] (tokenizer.vocab_size to choose)", size, distinct,
                     MIN_VOCABULARY, MAX_VOCABULARY)
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


def load_run_tokenizer(tokenizer_dir: Path) -> keras_hub.models.AlbertTokenizer:
    """A run's tokenizer from its folder: `spm.model` and its normalization, if any."""
    normalization = tokenizer_dir / NORMALIZATION_FILE
    settings = json.loads(normalization.read_text()) if normalization.is_file() else {}
    return load_tokenizer(tokenizer_dir / PROTO_FILE, **settings)
