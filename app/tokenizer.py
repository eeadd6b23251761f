"""Train or load a SentencePiece model with ALBERT's special pieces.

keras_hub.tokenizers.compute_sentence_piece_proto cannot emit ALBERT's special pieces, so training
goes through sentencepiece.SentencePieceTrainer directly.
"""

import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import keras_hub
import sentencepiece
from omegaconf import DictConfig

from app.errors import ConfigError, DataError
from app.loading import load_preset

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
    cfg: DictConfig, texts: Iterable[str], out_dir: Path
) -> keras_hub.models.AlbertTokenizer:
    """The run's tokenizer: the preset's, `tokenizer.proto`, or one trained on `texts`.

    The SentencePiece model is copied to `out_dir/spm.model` so the run folder is self-contained.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.preset is not None:
        tokenizer = load_preset(keras_hub.models.AlbertTokenizer, cfg.model.preset)
        (out_dir / PROTO_NAME).write_bytes(tokenizer.proto)
        return tokenizer
    if cfg.tokenizer.proto is not None:
        if Path(cfg.tokenizer.proto).resolve() != (out_dir / PROTO_NAME).resolve():
            shutil.copyfile(cfg.tokenizer.proto, out_dir / PROTO_NAME)
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
    return load_tokenizer(out_dir / PROTO_NAME)


def _sentences(files: list[Path], holdout_every: int, held_out: list[str], max_held_out: int):
    """Sentences of `files` for training; every `holdout_every`-th goes to `held_out` instead."""
    from app.pretraining.corpus import read_lines, split_sentences

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
    """Train `<output>/spm.model` + `spm.vocab` on text files; write and return `report.json`.

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
    from app.pretraining.corpus import expand_files
    from app.run_dir import write_json

    if model_type not in ("unigram", "bpe"):
        raise ConfigError(
            f"`model_type` must be one of ['unigram', 'bpe']. Received: {model_type!r}")
    if vocab_size < len(SPECIAL_PIECES) + 1:
        raise ConfigError(f"`vocab_size` must be > {len(SPECIAL_PIECES)}. Received: {vocab_size}")
    files = expand_files(".", input, "input")
    held_out: list[str] = []
    seen = [0]

    def counted(sentences):
        for sentence in sentences:
            seen[0] += 1
            yield sentence

    output = Path(output)
    log.info("Training a %s SentencePiece model (%d pieces) on %s", model_type, vocab_size,
             [str(f) for f in files])
    texts = counted(_sentences(files, holdout_every, held_out, max_held_out))
    try:
        proto = train_sentencepiece(
            texts, output / "spm", vocab_size, model_type=model_type, lowercase=lowercase,
            character_coverage=character_coverage, hard_vocab_limit=True,
            input_sentence_size=input_sentence_size,
        )
    except DataError:
        if seen[0] == 0:
            raise DataError(f"`input` has no text: {[str(f) for f in files]} contain no "
                            f"sentences; expected UTF-8 text files") from None
        raise
    report = {"input": [str(f) for f in files], "training_sentences": seen[0],
              "model_type": model_type, "lowercase": lowercase,
              "character_coverage": character_coverage, **tokenizer_report(proto, held_out)}
    write_json(output / "report.json", report)
    return report


def main() -> None:
    """`python -m app.tokenizer input=<files> vocab_size=16000 [key=value ...]`.

    The keys and their defaults are in conf/tokenizer.yaml.
    """
    import sys

    import hydra
    from hydra.core.hydra_config import HydraConfig

    from app.errors import AppError

    config_dir = str(Path(__file__).resolve().parent.parent / "conf")

    @hydra.main(version_base="1.3", config_path=config_dir, config_name="tokenizer")
    def run(cfg: DictConfig) -> None:
        output = Path(HydraConfig.get().runtime.output_dir)
        try:
            report = train_tokenizer(
                cfg.input, output, cfg.vocab_size, cfg.model_type, cfg.lowercase,
                cfg.character_coverage, cfg.input_sentence_size, cfg.holdout_every,
            )
        except AppError as error:
            log.error("%s", error)
            sys.exit(f"error: {error}")
        log.info("Wrote %s (report.json): %d pieces, %.3f pieces/word, word coverage %.4f "
                 "on %d held-out sentences", output / PROTO_NAME, report["vocab_size"],
                 report["pieces_per_word"] or 0.0, report["word_coverage"] or 0.0,
                 report["held_out_sentences"])

    run()


if __name__ == "__main__":
    main()
