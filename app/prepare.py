"""`albert-prepare`: raw text -> a folder of sharded, pre-tokenized sentence pairs.

    albert-prepare input='corpus/**/*.txt.gz' output=prepared/corpus num_proc=8 \
        tokenizer.proto=experiments/tokenizer/<ts>/spm.model
    -> prepared/corpus/{manifest.json, spm.model, train-*.tfrecord.gz, eval-*.tfrecord.gz}

Pretrain from it with `albert-train experiment=pretrain_wikitext2 data=prepared
data.prepared=prepared/corpus`. The folder's format: app.data.pretraining.shard_format.
"""

import logging
import shutil
import tempfile
import time
from pathlib import Path

import sentencepiece

from app.data.pretraining.corpus import expand_files
from app.data.pretraining.pipeline import corpus_sentences, special_ids
from app.data.pretraining.shard_format import (
    MANIFEST_FILE,
    PROGRESS_DIR,
    SETTINGS_FILE,
    TOKENIZER_FILE,
)
from app.data.pretraining.shard_writer import PrepareSettings, prepare_corpus, text_size
from app.data.tokenizer import train_sentencepiece
from app.errors import ConfigError
from app.runtime.console import command

log = logging.getLogger(__name__)


def tokenizer_proto(cfg, files: list[Path], output: Path) -> bytes:
    """The SentencePiece model: `tokenizer.proto`, the one an earlier (killed) run of this
    folder trained, or one trained now on a sample of the training sentences."""
    settings = cfg.tokenizer
    if settings.proto is not None:
        path = Path(settings.proto)
        if not path.is_file():
            raise ConfigError(f"`tokenizer.proto` does not exist or is not a file. "
                              f"Received: '{path}'")
        return path.read_bytes()
    earlier = output / TOKENIZER_FILE
    if earlier.is_file() and ((output / MANIFEST_FILE).is_file()
                              or (output / PROGRESS_DIR / SETTINGS_FILE).is_file()):
        log.info("Using the tokenizer an earlier run trained: %s", earlier)
        return earlier.read_bytes()
    log.info("Training a %s SentencePiece model (%d pieces) on a sample of %d training "
             "sentences", settings.model_type, settings.vocab_size, settings.input_sentence_size)
    scratch = Path(tempfile.mkdtemp(prefix="albert-prepare-"))
    try:
        proto = train_sentencepiece(
            corpus_sentences(files, cfg.data), scratch / "spm", settings.vocab_size,
            model_type=settings.model_type, lowercase=settings.lowercase,
            character_coverage=settings.character_coverage,
            input_sentence_size=settings.input_sentence_size)
        return proto.read_bytes()
    finally:
        shutil.rmtree(scratch)


@command("prepare")
def main(cfg) -> None:
    """`albert-prepare input=<files> output=<folder> [key=value ...]`."""
    if cfg.num_proc < 1:
        raise ConfigError(f"`num_proc` must be >= 1. Received: {cfg.num_proc}")
    if cfg.shard_size_mb <= 0:
        raise ConfigError(f"`shard_size_mb` must be > 0. Received: {cfg.shard_size_mb}")
    if not 0 <= cfg.data.eval_fraction < 1:
        raise ConfigError(f"`data.eval_fraction` must be in [0, 1). "
                          f"Received: {cfg.data.eval_fraction}")
    files = expand_files(".", cfg.input, "input")
    output = Path(cfg.output)
    proto = tokenizer_proto(cfg, files, output)
    special_ids(sentencepiece.SentencePieceProcessor(model_proto=proto),
                f"`tokenizer.proto` {cfg.tokenizer.proto!r}")
    started = time.perf_counter()
    settings = PrepareSettings(files, cfg.data, cfg.seed, cfg.shard_size_mb)
    manifest = prepare_corpus(settings, proto, output, cfg.num_proc)
    seconds = time.perf_counter() - started
    megabytes = sum(text_size(path) for path in files) / 1e6
    splits = manifest["splits"]
    log.info("Wrote %s: %d training pairs in %d shards, %d eval pairs in %d shards; %.1f MB of "
             "input in %.1fs (%.2f MB/s, %d processes)", output / MANIFEST_FILE,
             splits["train"]["examples"], len(splits["train"]["shards"]),
             splits["eval"]["examples"], len(splits["eval"]["shards"]), megabytes, seconds,
             megabytes / seconds, cfg.num_proc)


if __name__ == "__main__":
    main()
