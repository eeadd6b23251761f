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
        log.info("Training a %s SentencePiece model (vocab <= %d) on the training texts",
                 settings.model_type, settings.vocab_size)
        train_sentencepiece(
            texts,
            out_dir / "spm",
            vocab_size=settings.vocab_size,
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
