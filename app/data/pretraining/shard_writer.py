"""Preparing a corpus (albert-prepare): documents -> shards of pre-tokenized sentence pairs.

Documents go to shards in corpus order, a new shard once `shard_size_mb` of text is reached, and
each shard's pairs are drawn from a seed of (seed, split, shard index) alone: the output does
not depend on how many processes wrote it. Each shard is written to a temporary file and
renamed, its counts and hash recorded in `.progress/`; a rerun skips shards already there.

The folder's format: app.data.pretraining.shard_format.
"""

import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import struct
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from app.data.pretraining.masking import NGramMasker
from app.data.pretraining.pairs import iter_examples
from app.data.pretraining.pipeline import corpus_documents, special_ids
from app.data.pretraining.sentence_order import SOP_SUBSETS
from app.data.pretraining.shard_format import (
    FORMAT_VERSION,
    ID_SHIFT,
    MANIFEST_FILE,
    PACKED_KEYS,
    PROGRESS_DIR,
    SETTINGS_FILE,
    SPLITS,
    TOKENIZER_FILE,
    encode_example,
    file_sha256,
    record_parser,
    shard_name,
    token_dtype,
    write_json,
)
from app.data.pretraining.signal import corpus_signal, masking_stats, report_signal
from app.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 10.0
# A shard's own counts that the manifest sums into its `signal` instead of listing per shard.
SHARD_ONLY_STATS = ("extra_keys", "sentences", "multi_sentence_documents", "pair_kinds")


@dataclass
class PrepareSettings:
    """What the prepared pairs depend on (recorded in the manifest).

    Args:
        files: the corpus files, in reading order.
        data: `sequence_length`, `short_seq_prob`, `eval_fraction`, `document_pattern`,
            `document_per_line`, `skip_pattern` (the keys of the training `data` config).
        seed: the pairs' target lengths and split points derive from it.
        shard_size_mb: MB of text per shard (the last one of each split is smaller).
    """

    files: list[Path]
    data: DictConfig
    seed: int
    shard_size_mb: float

    def as_dict(self) -> dict:
        data = self.data
        return {
            "inputs": [{"file": str(path), "bytes": path.stat().st_size} for path in self.files],
            "sequence_length": data.sequence_length, "short_seq_prob": data.short_seq_prob,
            "eval_fraction": data.eval_fraction, "document_pattern": data.document_pattern,
            "document_per_line": data.get("document_per_line", False),
            "skip_pattern": data.skip_pattern, "text_column": data.text_column, "seed": self.seed,
            "shard_size_mb": self.shard_size_mb,
        }


def text_size(path: Path) -> int:
    """Bytes of text in a file (a `.gz` file's uncompressed size from its trailer)."""
    if path.suffix != ".gz":
        return path.stat().st_size
    with open(path, "rb") as data:
        data.seek(-4, os.SEEK_END)
        return struct.unpack("<I", data.read(4))[0]


def _blocks(settings: PrepareSettings) -> Iterator[tuple[str, int, list, int]]:
    """(split, shard index, documents, characters) of every shard, in corpus order.

    Every (1/eval_fraction)-th document goes to eval, by the rule of corpus_documents.
    """
    data = settings.data
    every = round(1 / data.eval_fraction) if data.eval_fraction else 0
    limit = settings.shard_size_mb * 1e6
    blocks = {split: [] for split in SPLITS}
    sizes = dict.fromkeys(SPLITS, 0)
    indices = dict.fromkeys(SPLITS, 0)
    documents = corpus_documents(settings.files, OmegaConf.merge(data, {"eval_fraction": 0.0}))
    for index, document in enumerate(documents):
        split = "eval" if every and index % every == every - 1 else "train"
        blocks[split].append(document)
        sizes[split] += sum(len(sentence) + 1 for sentence in document)
        if sizes[split] >= limit:
            yield split, indices[split], blocks[split], sizes[split]
            blocks[split], sizes[split] = [], 0
            indices[split] += 1
    for split in SPLITS:
        if blocks[split]:
            yield split, indices[split], blocks[split], sizes[split]


class _ShardWriter:
    """Tokenizes, packs and writes one block of documents (in a worker process or inline)."""

    def __init__(self, proto: bytes, output: str, settings: dict):
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
        self.ids = special_ids(self.processor, f"'{Path(output) / TOKENIZER_FILE}'")
        self.dtype = token_dtype(self.processor.get_piece_size())
        self.output = Path(output)
        self.settings = settings

    def __call__(self, split: str, index: int, documents: list) -> dict:
        name = shard_name(split, index)
        seed = int(np.random.SeedSequence(
            [self.settings["seed"], SPLITS.index(split), index]).generate_state(1)[0])
        tokenized = [[ids for ids in self.processor.encode(document) if ids]
                     for document in documents]
        examples = iter_examples(tokenized, self.settings["sequence_length"], self.ids,
                                 self.settings["short_seq_prob"], seed)
        scratch = self.output / f".tmp-{name}"
        count, keys, kinds = 0, set(), dict.fromkeys(SOP_SUBSETS, 0)
        with tf.io.TFRecordWriter(str(scratch), options="GZIP") as writer:
            for count, example in enumerate(examples, start=1):
                keys.update(set(example) - set(PACKED_KEYS))
                writer.write(encode_example(example, index << ID_SHIFT | (count - 1),
                                            self.dtype))
                trimmed, random_next = bool(example["trimmed"]), bool(example["random_next"])
                kinds["whole"] += not (trimmed or random_next)
                kinds["trimmed"] += trimmed
                kinds["random_next"] += random_next
        os.replace(scratch, self.output / name)
        stats = {"file": name, "examples": count, "documents": len(documents),
                 "sentences": sum(map(len, tokenized)),
                 "multi_sentence_documents": sum(len(document) > 1 for document in tokenized),
                 "pair_kinds": kinds,
                 "bytes": (self.output / name).stat().st_size,
                 "sha256": file_sha256(self.output / name), "extra_keys": sorted(keys)}
        write_json(self.output / PROGRESS_DIR / f"{name}.json", stats)
        return stats


_worker: _ShardWriter | None = None


def _init_worker(proto: bytes, output: str, settings: dict) -> None:
    global _worker
    _worker = _ShardWriter(proto, output, settings)


def _run_worker(split: str, index: int, documents: list) -> dict:
    return _worker(split, index, documents)


def _finished(output: Path, split: str, index: int) -> dict | None:
    """The recorded stats of a shard a previous run finished, if its file is intact."""
    name = shard_name(split, index)
    record = output / PROGRESS_DIR / f"{name}.json"
    if not record.is_file() or not (output / name).is_file():
        return None
    stats = json.loads(record.read_text())
    if (output / name).stat().st_size != stats["bytes"] or file_sha256(output / name) != \
            stats["sha256"]:
        return None
    return stats


def _check_output(output: Path, settings: dict) -> dict | None:
    """The complete manifest already in `output` for these settings (None: work to do);
    a ConfigError when the folder holds another preparation."""
    manifest_path = output / MANIFEST_FILE
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") != settings:
            raise ConfigError(
                f"`output` '{output}' already holds a prepared corpus with other settings "
                f"({MANIFEST_FILE}); expected a new or empty folder, or the same settings to "
                f"complete it. Differs in: {_differing(manifest.get('settings', {}), settings)}")
        return manifest
    started = output / PROGRESS_DIR / SETTINGS_FILE
    if started.is_file() and json.loads(started.read_text()) != settings:
        raise ConfigError(
            f"`output` '{output}' holds an unfinished preparation with other settings "
            f"({PROGRESS_DIR}/{SETTINGS_FILE}); rerun it with the same settings, or use "
            f"another folder. Differs in: "
            f"{_differing(json.loads(started.read_text()), settings)}")
    return None


def _differing(old: dict, new: dict) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


class _Progress:
    """Progress lines: MB of text done, MB/s and the remaining time (estimated)."""

    def __init__(self, total_bytes: int):
        self.total = max(total_bytes, 1)
        self.done = 0
        self.started = self.last = time.perf_counter()

    def advance(self, characters: int, final: bool = False) -> None:
        self.done += characters
        now = time.perf_counter()
        if not final and now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        remaining = max(self.total - self.done, 0) / rate if rate else math.inf
        log.info("Prepared %.1f of ~%.1f MB of text (%.0f%%), %.2f MB/s, ~%.0fs left",
                 self.done / 1e6, self.total / 1e6, 100 * min(self.done / self.total, 1.0),
                 rate / 1e6, remaining)


def prepare_corpus(settings: PrepareSettings, proto: bytes, output: Path,
                   num_proc: int = 1) -> dict:
    """Write the shards and, last, the manifest of a corpus into `output`; return the manifest.

    The tokenizer (`proto`, ALBERT's special pieces) is copied to `output/spm.model`. A rerun
    with the same settings skips the shards a previous run finished.

    Raises:
        ConfigError: `output` holds a preparation with other settings or another tokenizer.
        DataError: the corpus yields no training pair.
    """
    recorded = {**settings.as_dict(), "tokenizer_sha256": hashlib.sha256(proto).hexdigest()}
    existing = _check_output(output, recorded)
    if existing is not None:
        log.info("'%s' already holds this prepared corpus (%s): nothing to do", output,
                 MANIFEST_FILE)
        return existing
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / PROGRESS_DIR / SETTINGS_FILE, recorded)
    (output / TOKENIZER_FILE).write_bytes(proto)
    worker_settings = {"seed": settings.seed, "sequence_length": settings.data.sequence_length,
                       "short_seq_prob": settings.data.short_seq_prob}
    progress = _Progress(sum(text_size(path) for path in settings.files))
    shards: dict[str, list] = {split: [] for split in SPLITS}
    skipped = 0
    with _Pool(num_proc, proto, output, worker_settings) as pool:
        for split, index, documents, characters in _blocks(settings):
            done = _finished(output, split, index)
            skipped += done is not None
            shards[split].append(pool.submit(done, split, index, documents, characters))
            for finished_characters in pool.collect(block=False):
                progress.advance(finished_characters)
        for finished_characters in pool.collect(block=True):
            progress.advance(finished_characters)
    progress.advance(0, final=True)
    if skipped:
        log.info("Reused %d shards a previous run finished", skipped)
    manifest = _manifest(recorded, proto, {split: [job.stats for job in jobs]
                                           for split, jobs in shards.items()})
    if manifest["splits"]["train"]["examples"] == 0:
        raise DataError(
            f"The corpus {[str(f) for f in settings.files]} yields no training pair from its "
            f"{manifest['splits']['train']['documents']} training documents; expected UTF-8 "
            f"text, documents of several sentences separated by blank lines or by "
            f"`data.document_pattern` headings")
    manifest["signal"] = _signal(output, manifest, proto, shards["train"])
    report_signal(manifest["signal"], f"Prepared training corpus ({output})")
    write_json(output / MANIFEST_FILE, manifest)
    shutil.rmtree(output / PROGRESS_DIR)
    return manifest


def _signal(output: Path, manifest: dict, proto: bytes, jobs: list) -> dict:
    """The training split's signal (app.data.pretraining.signal): counts from the shards' stats,
    the masked share from masking the first SAMPLE_EXAMPLES training pairs at ALBERT's 15%."""
    stats = [job.stats for job in jobs]
    settings = manifest["settings"]
    paths = [str(output / shard["file"]) for shard in manifest["splits"]["train"]["shards"]]
    examples = tf.data.TFRecordDataset(paths, compression_type="GZIP").map(record_parser(
        settings["sequence_length"], manifest["tokenizer"]["token_dtype"],
        manifest["extra_keys"])).map(lambda example_id, features: features)
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    masker = NGramMasker([processor.id_to_piece(i) for i in range(processor.get_piece_size())])
    return corpus_signal(
        sum(s["documents"] for s in stats), sum(s.get("sentences", 0) for s in stats),
        sum(s.get("multi_sentence_documents", 0) for s in stats),
        sum(s["examples"] for s in stats),
        {kind: sum(s.get("pair_kinds", {}).get(kind, 0) for s in stats) for kind in SOP_SUBSETS},
        masking_stats(masker, examples, settings["seed"]))


def _manifest(recorded: dict, proto: bytes, shards: dict[str, list[dict]]) -> dict:
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    extra = sorted({key for stats in shards.values() for shard in stats
                    for key in shard["extra_keys"]})
    splits = {split: {"examples": sum(s["examples"] for s in stats),
                      "documents": sum(s["documents"] for s in stats),
                      "shards": [{k: v for k, v in s.items() if k not in SHARD_ONLY_STATS}
                                 for s in stats]}
              for split, stats in shards.items()}
    return {
        "format_version": FORMAT_VERSION,
        "settings": recorded,
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": hashlib.sha256(proto).hexdigest(),
                      "vocabulary_size": processor.get_piece_size(),
                      "token_dtype": token_dtype(processor.get_piece_size())},
        "extra_keys": extra,
        "splits": splits,
    }


class _Job:
    def __init__(self, stats: dict | None, result=None, characters: int = 0):
        self._stats, self.result, self.characters = stats, result, characters

    @property
    def stats(self) -> dict:
        if self._stats is None:
            self._stats = self.result.get()
        return self._stats


class _Pool:
    """Shard jobs on `num_proc` processes (inline for 1), at most 2 per process in flight."""

    def __init__(self, num_proc: int, proto: bytes, output: Path, settings: dict):
        self.num_proc = num_proc
        self.args = (proto, str(output), settings)
        self.pending: deque[_Job] = deque()
        self.pool = None

    def __enter__(self):
        if self.num_proc > 1:
            # spawn: TensorFlow's threads do not survive a fork.
            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(self.num_proc, initializer=_init_worker,
                                     initargs=self.args)
        else:
            self.inline = _ShardWriter(*self.args)
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()

    def submit(self, stats, split, index, documents, characters) -> _Job:
        if stats is not None:
            job = _Job(stats, characters=characters)
        elif self.pool is None:
            job = _Job(self.inline(split, index, documents), characters=characters)
        else:
            job = _Job(None, self.pool.apply_async(_run_worker, (split, index, documents)),
                       characters)
        self.pending.append(job)
        return job

    def collect(self, block: bool) -> Iterator[int]:
        """Characters of the finished jobs, oldest first; waits while too many are in flight
        (all of them with `block`)."""
        while self.pending:
            oldest = self.pending[0]
            in_flight = len(self.pending) > 2 * self.num_proc
            if not (block or in_flight or oldest.result is None or oldest.result.ready()):
                return
            oldest.stats  # noqa: B018 (waits, raises a worker's error)
            yield self.pending.popleft().characters
