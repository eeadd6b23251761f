"""A corpus prepared once into sharded, pre-tokenized sentence pairs, and streaming it.

The folder `albert-prepare` writes (see app.prepare):

    manifest.json            written last: settings, tokenizer hash, per-shard counts and hashes
    spm.model                the tokenizer the pairs were made with
    train-00000.tfrecord.gz  GZIP TFRecords of tf.train.Example, one packed pair each:
    ...                      `id` (int64, stable: shard << 32 | index in shard), `tokens`
    eval-00000.tfrecord.gz   ([CLS] A [SEP] B [SEP], no padding, little-endian uint16 or int32
                             bytes), `a_length` ([CLS] A [SEP]), and any other scalar key of
                             app.data.pretraining.pairs.iter_examples' dicts as int64

Documents go to shards in corpus order, a new shard once `shard_size_mb` of text is reached, and
each shard's pairs are drawn from a seed of (seed, split, shard index) alone: the output does
not depend on how many processes wrote it. Each shard is written to a temporary file and
renamed, its counts and hash recorded in `.progress/`; a rerun skips shards already there.

Streaming (training): per epoch the shards are put in an order drawn from (seed, epoch) and
read in groups of `group_size` files; a group's records are interleaved (one from each file in
turn) and shuffled in a buffer of `shuffle_buffer` records (bounded memory, mixing within a
group only). The sentence order and masks of each example come from (seed, epoch, example id),
so they do not depend on the worker count or the position. The data position of a global batch
is (epoch, group, offset in group): a resume opens no file of the groups before it and skips
at most one group's records.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from app.data.pretraining.pairs import iter_examples
from app.data.pretraining.pipeline import corpus_documents, special_ids
from app.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "spm.model"
PROGRESS_DIR = ".progress"
SETTINGS_FILE = "settings.json"
SHARD_SUFFIX = ".tfrecord.gz"
SOURCE_FILE = "prepared.json"  # in a run folder: the corpus and worker count it started with
SPLITS = ("train", "eval")
PACKED_KEYS = ("token_ids", "segment_ids", "padding_mask")
ID_SHIFT = 32  # example id = shard index << ID_SHIFT | index in the shard
PROGRESS_SECONDS = 10.0
EPOCH_SEED_STRIDE = 1_000_003  # as app.data.pipeline: the epoch seed is seed * stride + epoch
HASH_CHUNK = 1 << 20


def shard_name(split: str, index: int) -> str:
    """`train-00003.tfrecord.gz`."""
    return f"{split}-{index:05d}{SHARD_SUFFIX}"


def file_sha256(path: Path) -> str:
    """The sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def token_dtype(vocabulary_size: int) -> str:
    """`uint16` while every id fits, else `int32`."""
    return "uint16" if vocabulary_size <= 1 << 16 else "int32"


# === Records ===


def encode_example(example: dict, example_id: int, dtype: str) -> bytes:
    """One packed example of `iter_examples` as a serialized tf.train.Example (no padding)."""
    real = int(example["padding_mask"].sum())
    a_length = int(np.count_nonzero(example["segment_ids"][:real] == 0))
    tokens = example["token_ids"][:real].astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    feature = {
        "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[example_id])),
        "tokens": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tokens])),
        "a_length": tf.train.Feature(int64_list=tf.train.Int64List(value=[a_length])),
    }
    for key in sorted(set(example) - set(PACKED_KEYS)):
        feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(example[key])]))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # Sorted map keys: the same bytes in every process (else the order follows a hash seed).
    return example.SerializeToString(deterministic=True)


def record_parser(sequence_length: int, dtype: str, extra_keys: list[str]) -> Callable:
    """`serialized -> (id, features)`: the padded `token_ids`, `segment_ids`, `padding_mask`
    (int32) of app.data.pretraining.pairs.pack_pair, plus the extra keys (int32)."""
    spec = {"id": tf.io.FixedLenFeature([], tf.int64),
            "tokens": tf.io.FixedLenFeature([], tf.string),
            "a_length": tf.io.FixedLenFeature([], tf.int64),
            **{key: tf.io.FixedLenFeature([], tf.int64) for key in extra_keys}}
    tf_dtype = tf.uint16 if dtype == "uint16" else tf.int32

    def parse(serialized):
        record = tf.io.parse_single_example(serialized, spec)
        tokens = tf.cast(tf.io.decode_raw(record["tokens"], tf_dtype, little_endian=True), tf.int32)
        real = tf.shape(tokens)[0]
        positions = tf.range(sequence_length)
        features = {
            "token_ids": tf.ensure_shape(tf.pad(tokens, [[0, sequence_length - real]]),
                                         [sequence_length]),
            "segment_ids": tf.cast((positions < real)
                                   & (positions >= tf.cast(record["a_length"], tf.int32)),
                                   tf.int32),
            "padding_mask": tf.cast(positions < real, tf.int32),
            **{key: tf.cast(record[key], tf.int32) for key in extra_keys},
        }
        return record["id"], features

    return parse


# === Preparing (albert-prepare) ===


@dataclass
class PrepareSettings:
    """What the prepared pairs depend on (recorded in the manifest).

    Args:
        files: the corpus files, in reading order.
        data: `sequence_length`, `short_seq_prob`, `eval_fraction`, `document_pattern`,
            `skip_pattern` (the keys of the training `data` config).
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
        tokenized = ([ids for ids in self.processor.encode(document) if ids]
                     for document in documents)
        examples = iter_examples(tokenized, self.settings["sequence_length"], self.ids,
                                 self.settings["short_seq_prob"], seed)
        scratch = self.output / f".tmp-{name}"
        count, keys = 0, set()
        with tf.io.TFRecordWriter(str(scratch), options="GZIP") as writer:
            for count, example in enumerate(examples, start=1):
                keys.update(set(example) - set(PACKED_KEYS))
                writer.write(encode_example(example, index << ID_SHIFT | (count - 1),
                                            self.dtype))
        os.replace(scratch, self.output / name)
        stats = {"file": name, "examples": count, "documents": len(documents),
                 "bytes": (self.output / name).stat().st_size,
                 "sha256": file_sha256(self.output / name), "extra_keys": sorted(keys)}
        _write_json(self.output / PROGRESS_DIR / f"{name}.json", stats)
        return stats


_worker: _ShardWriter | None = None


def _init_worker(proto: bytes, output: str, settings: dict) -> None:
    global _worker
    _worker = _ShardWriter(proto, output, settings)


def _run_worker(split: str, index: int, documents: list) -> dict:
    return _worker(split, index, documents)


def _write_json(path: Path, value: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".tmp-{path.name}")
    scratch.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(scratch, path)


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
    _write_json(output / PROGRESS_DIR / SETTINGS_FILE, recorded)
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
    _write_json(output / MANIFEST_FILE, manifest)
    shutil.rmtree(output / PROGRESS_DIR)
    return manifest


def _manifest(recorded: dict, proto: bytes, shards: dict[str, list[dict]]) -> dict:
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    extra = sorted({key for stats in shards.values() for shard in stats
                    for key in shard["extra_keys"]})
    splits = {split: {"examples": sum(s["examples"] for s in stats),
                      "documents": sum(s["documents"] for s in stats),
                      "shards": [{k: v for k, v in s.items() if k != "extra_keys"}
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


# === Reading ===


@dataclass
class PreparedCorpus:
    """A prepared folder whose manifest and shards were checked (see `open_prepared`)."""

    folder: Path
    manifest: dict
    manifest_sha256: str

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / self.manifest["tokenizer"]["file"]

    @property
    def sequence_length(self) -> int:
        return self.manifest["settings"]["sequence_length"]

    def shards(self, split: str) -> list[dict]:
        return self.manifest["splits"][split]["shards"]

    def parser(self) -> Callable:
        return record_parser(self.sequence_length, self.manifest["tokenizer"]["token_dtype"],
                             self.manifest["extra_keys"])

    def check_tokenizer(self, proto: bytes, source: str) -> None:
        """A ConfigError unless `proto` is the tokenizer the pairs were made with."""
        if hashlib.sha256(proto).hexdigest() != self.manifest["tokenizer"]["sha256"]:
            raise ConfigError(
                f"The tokenizer {source} is not the one '{self.folder}' was prepared with "
                f"(sha256 differs from {MANIFEST_FILE}); expected `tokenizer.proto` null or "
                f"'{self.tokenizer_path}', and no `model.preset` with another vocabulary")


def open_prepared(folder: str | Path, sequence_length: int, verify: bool = True,
                  key: str = "data.prepared") -> PreparedCorpus:
    """The prepared corpus in `folder`, checked: manifest, tokenizer, every shard's size and
    (with `verify`) sha256. Each problem is one DataError or ConfigError naming the file."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ConfigError(
            f"`{key}` must be a folder written by albert-prepare. Received: '{folder}', which "
            f"has no {MANIFEST_FILE} (not prepared, or the preparation did not finish: rerun it)")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DataError(f"'{manifest_path}' is not valid JSON: {error}") from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"'{manifest_path}' has format_version "
                        f"{manifest.get('format_version')!r}; expected {FORMAT_VERSION}")
    corpus = PreparedCorpus(folder, manifest, hashlib.sha256(raw).hexdigest())
    if corpus.sequence_length != sequence_length:
        raise ConfigError(
            f"`data.sequence_length` must be the prepared one. Received: {sequence_length}; "
            f"'{folder}' holds pairs of length {corpus.sequence_length} ({MANIFEST_FILE})")
    tokenizer = corpus.tokenizer_path
    if not tokenizer.is_file() or file_sha256(tokenizer) != manifest["tokenizer"]["sha256"]:
        raise DataError(f"'{tokenizer}' is missing or not the tokenizer {MANIFEST_FILE} names "
                        f"(sha256 differs): the prepared folder was changed after preparing")
    if manifest["splits"]["train"]["examples"] == 0:
        raise DataError(f"'{folder}' holds no training pair ({MANIFEST_FILE}: 0 examples)")
    for split in SPLITS:
        for shard in corpus.shards(split):
            _check_shard(folder, shard, verify)
    return corpus


def _check_shard(folder: Path, shard: dict, verify: bool) -> None:
    path = folder / shard["file"]
    if not path.is_file():
        raise DataError(f"Shard '{path}' named in {MANIFEST_FILE} is missing")
    size = path.stat().st_size
    if size != shard["bytes"]:
        raise DataError(f"Shard '{path}' is truncated or changed: {size} bytes, expected "
                        f"{shard['bytes']} ({MANIFEST_FILE})")
    if verify and file_sha256(path) != shard["sha256"]:
        raise DataError(f"Shard '{path}' is corrupt: its sha256 differs from {MANIFEST_FILE} "
                        f"(set data.verify_shards=false to skip this check)")


def check_run_source(run_dir: Path, corpus: PreparedCorpus, workers: int,
                     resumed: bool) -> None:
    """Record in a new run's folder which prepared corpus (manifest sha256) and how many
    workers it trains with (`prepared.json`); a resume must have the same ones, as the data
    position depends on both.

    Raises:
        ConfigError: a resume whose manifest or worker count differs from the recorded one.
    """
    record_path = Path(run_dir) / SOURCE_FILE
    current = {"folder": str(corpus.folder.absolute()),
               "manifest_sha256": corpus.manifest_sha256, "workers": workers}
    if not resumed:
        _write_json(record_path, current)
        return
    if not record_path.is_file():
        log.warning("%s is missing: not checking that the prepared corpus and the worker count "
                    "are the ones the run started with", record_path)
        return
    recorded = json.loads(record_path.read_text())
    if recorded["manifest_sha256"] != corpus.manifest_sha256:
        raise ConfigError(
            f"`resume` refused: the prepared corpus '{corpus.folder}' changed since the run "
            f"started ({MANIFEST_FILE} sha256 {corpus.manifest_sha256[:12]}, the run recorded "
            f"{recorded['manifest_sha256'][:12]} in '{record_path}'); expected the corpus "
            f"the run started with: its data position means nothing in another one")
    if recorded["workers"] != workers:
        raise ConfigError(
            f"`resume` refused: the run started with {recorded['workers']} workers "
            f"('{record_path}') and resumes with {workers}; each worker reads its own shards, "
            f"so expected {recorded['workers']} workers")


def worker_shards(shards: list[dict], num_workers: int, worker: int) -> list[dict]:
    """The shards one input pipeline reads: every `num_workers`-th, from `worker` on.

    Raises:
        ConfigError: fewer shards than workers (some would have none).
    """
    if len(shards) < num_workers:
        raise ConfigError(
            f"The prepared corpus has {len(shards)} training shards for {num_workers} workers; "
            f"every worker reads its own shards, so expected at least {num_workers}: prepare "
            f"it again with a smaller `shard_size_mb`")
    return shards[worker::num_workers]


class ShardStream:
    """Training batches of one input pipeline from its shards, resumable by global batch.

    Args:
        corpus: the prepared corpus.
        shards: this pipeline's training shards (see `worker_shards`).
        batch_size: this pipeline's batch size.
        steps_per_epoch: batches per epoch (the same on every pipeline).
        shuffle_buffer: records in the shuffle buffer of each group.
        group_size: shard files read together (interleaved) in a group.
        seed: the run seed.
        per_example: `(features, seed pair) -> example` (sentence order and masks).
        drop_remainder: keep only `steps_per_epoch` full batches per epoch (several
            pipelines must run the same number of steps); else the last batch may be short.
    """

    def __init__(self, corpus: PreparedCorpus, shards: list[dict], batch_size: int,
                 steps_per_epoch: int, shuffle_buffer: int, group_size: int, seed: int,
                 per_example: Callable, drop_remainder: bool = False):
        self.paths = [str(corpus.folder / shard["file"]) for shard in shards]
        self.counts = np.array([shard["examples"] for shard in shards], np.int64)
        self.parse = corpus.parser()
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.shuffle_buffer = shuffle_buffer
        self.group_size = group_size
        self.num_groups = math.ceil(len(self.paths) / group_size)
        self.seed = seed
        self.per_example = per_example
        self.drop_remainder = drop_remainder
        self.epoch_examples = (steps_per_epoch * batch_size if drop_remainder
                               else int(self.counts.sum()))

    def order(self, epoch: int) -> np.ndarray:
        """The shard order of an epoch (indices into this pipeline's shards), from (seed,
        epoch) alone."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))

    def position(self, step: int) -> tuple[int, int, int]:
        """(epoch, group, offset of the next record in the group) of global batch `step`."""
        epoch, batch = divmod(step, self.steps_per_epoch)
        offset = batch * self.batch_size
        order = self.order(epoch)
        for group in range(self.num_groups):
            size = int(self.counts[order[group * self.group_size:][:self.group_size]].sum())
            if offset < size:
                return epoch, group, offset
            offset -= size
        return epoch, self.num_groups, offset

    def _records(self, orders, epoch, first_group: int, skip: int) -> tf.data.Dataset:
        """Serialized records of an epoch from (`first_group`, `skip`) on; no file of an
        earlier group is opened."""
        paths = tf.constant(self.paths)
        counts = tf.constant(self.counts)
        size = self.group_size

        def group_records(group, skip):
            members = orders[epoch][group * size:(group + 1) * size]
            group_seed = ((self.seed * EPOCH_SEED_STRIDE + tf.cast(epoch, tf.int64))
                          * EPOCH_SEED_STRIDE + tf.cast(group, tf.int64))
            buffer = tf.clip_by_value(tf.reduce_sum(tf.gather(counts, members)), 1,
                                      self.shuffle_buffer)
            return (tf.data.Dataset.from_tensor_slices(tf.gather(paths, members))
                    .interleave(lambda path: tf.data.TFRecordDataset(path, "GZIP"),
                                cycle_length=size, block_length=1,
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                    .shuffle(buffer, seed=group_seed, reshuffle_each_iteration=False)
                    .skip(skip))

        rest = tf.data.Dataset.range(first_group + 1, self.num_groups).flat_map(
            lambda group: group_records(group, 0))
        return group_records(first_group, skip).concatenate(rest)

    def _epoch_batches(self, orders, epoch, first_group: int = 0, skip: int = 0,
                       done: int = 0) -> tf.data.Dataset:
        epoch_seed = self.seed * EPOCH_SEED_STRIDE + tf.cast(epoch, tf.int64)
        parse, transform = self.parse, self.per_example

        def example(serialized):
            example_id, features = parse(serialized)
            return transform(features, tf.stack([epoch_seed, example_id]))

        return (self._records(orders, epoch, first_group, skip)
                .take(self.epoch_examples - done)
                .map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(self.batch_size, drop_remainder=self.drop_remainder))

    def __call__(self, start: int, epochs: int) -> tf.data.Dataset:
        """Batches from global batch `start` to the end of `epochs`."""
        orders = tf.constant(np.stack([self.order(epoch) for epoch in range(epochs)]))
        epoch, group, skip = self.position(start)
        done = start % self.steps_per_epoch * self.batch_size
        first = self._epoch_batches(orders, epoch, group, skip, done)
        rest = tf.data.Dataset.range(epoch + 1, epochs).flat_map(
            lambda later: self._epoch_batches(orders, later))
        return first.concatenate(rest).prefetch(tf.data.AUTOTUNE)


def pipeline_steps(corpus: PreparedCorpus, global_batch: int, pipelines: int) -> int:
    """Global steps per epoch when `pipelines` workers each stream their own shards
    (`worker_shards`): the smallest worker's share decides, the others drop what exceeds it.

    Raises:
        ConfigError: fewer shards than pipelines.
        DataError: a pipeline's shards hold less than one step.
    """
    shards = corpus.shards("train")
    shares = [sum(s["examples"] for s in worker_shards(shards, pipelines, worker))
              for worker in range(pipelines)]
    per_pipeline = global_batch // pipelines  # each step takes this many examples of a worker
    if min(shares) < per_pipeline:
        raise DataError(f"A worker's training shards of '{corpus.folder}' hold {min(shares)} "
                        f"pairs, less than one step ({per_pipeline} per worker)")
    return min(shares) // per_pipeline


def pipeline_stream(corpus: PreparedCorpus, global_batch: int, shuffle_buffer: int,
                    group_size: int, seed: int, per_example: Callable,
                    input_context: tf.distribute.InputContext | None = None) -> ShardStream:
    """The training stream of one input pipeline: all shards and global batches without an
    `input_context`; with one (strategy.distribute_datasets_from_function), this pipeline's
    shards (`worker_shards`) in per-replica batches, the same number of steps on every pipeline
    (each drops what exceeds the smallest pipeline's share).

    Raises:
        ConfigError: fewer shards than pipelines.
        DataError: a pipeline's shards hold less than one step.
    """
    shards = corpus.shards("train")
    if input_context is None:
        steps = math.ceil(corpus.manifest["splits"]["train"]["examples"] / global_batch)
        return ShardStream(corpus, shards, global_batch, steps, shuffle_buffer, group_size,
                           seed, per_example)
    pipelines = input_context.num_input_pipelines
    batch = input_context.get_per_replica_batch_size(global_batch)
    local = input_context.num_replicas_in_sync // pipelines
    steps = pipeline_steps(corpus, global_batch, pipelines)
    return ShardStream(corpus, worker_shards(shards, pipelines, input_context.input_pipeline_id),
                       batch, steps * local, shuffle_buffer, group_size, seed, per_example,
                       drop_remainder=True)


def eval_examples(corpus: PreparedCorpus) -> tuple[tf.data.Dataset, int]:
    """The eval shards' (example id, features), in order, and their number.

    Raises:
        DataError: the prepared corpus has no eval pair.
    """
    count = corpus.manifest["splits"]["eval"]["examples"]
    if count == 0:
        raise DataError(f"'{corpus.folder}' holds no eval pair ({MANIFEST_FILE}); prepare it "
                        f"with `data.eval_fraction` > 0")
    paths = [str(corpus.folder / shard["file"]) for shard in corpus.shards("eval")]
    examples = (tf.data.TFRecordDataset(paths, compression_type="GZIP")
                .map(corpus.parser(), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    return examples.apply(tf.data.experimental.assert_cardinality(count)), count


def eval_batches(examples: tf.data.Dataset, per_example: Callable, batch_size: int,
                 seed: int) -> tf.data.Dataset:
    """Eval batches with the same sentence orders and masks every time, drawn from
    (seed + 1, example id). Several workers split each batch (DATA sharding: the eval shards
    may be fewer than the workers)."""
    eval_seed = tf.constant(seed + 1, tf.int64)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return (examples
            .map(lambda example_id, features: per_example(features,
                                                          tf.stack([eval_seed, example_id])),
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options))
