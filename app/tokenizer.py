"""Train or load a SentencePiece model with ALBERT's special pieces.

keras_hub.tokenizers.compute_sentence_piece_proto cannot emit ALBERT's special pieces, so training
goes through sentencepiece.SentencePieceTrainer directly.
"""

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import keras_hub
import sentencepiece
from omegaconf import DictConfig

from app.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# ALBERT's ids: <pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4.
CONTROL_PIECES = ("[CLS]", "[SEP]", "[MASK]")
SPECIAL_PIECES = ("<pad>", "<unk>") + CONTROL_PIECES
PROTO_NAME = "spm.model"


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str | Path,
    vocab_size: int,
    model_type: str = "unigram",
    lowercase: bool = True,
    character_coverage: float = 0.9995,
    hard_vocab_limit: bool = True,
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

    Returns:
        The path of the `.model` file.
    """
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
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
            minloglevel=2,
        )
    except RuntimeError as error:
        raise DataError(f"SentencePiece training failed: {error}") from error
    return model_prefix.with_suffix(".model")


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


def build_tokenizer(
    cfg: DictConfig, texts: list[str], out_dir: Path
) -> keras_hub.models.AlbertTokenizer:
    """The run's tokenizer: the preset's, `tokenizer.proto`, or one trained on `texts`.

    The SentencePiece model is copied to `out_dir/spm.model` so the run folder is self-contained.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.preset is not None:
        tokenizer = keras_hub.models.AlbertTokenizer.from_preset(cfg.model.preset)
        (out_dir / PROTO_NAME).write_bytes(tokenizer.proto)
        return tokenizer
    if cfg.tokenizer.proto is not None:
        shutil.copyfile(cfg.tokenizer.proto, out_dir / PROTO_NAME)
    else:
        settings = cfg.tokenizer
        log.info("Training a %s SentencePiece model (vocab <= %d) on %d texts",
                 settings.model_type, settings.vocab_size, len(texts))
        train_sentencepiece(
            texts,
            out_dir / "spm",
            vocab_size=settings.vocab_size,
            model_type=settings.model_type,
            lowercase=settings.lowercase,
            character_coverage=settings.character_coverage,
            hard_vocab_limit=False,
        )
    return load_tokenizer(out_dir / PROTO_NAME)
