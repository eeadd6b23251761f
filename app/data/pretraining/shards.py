"""Reading a prepared corpus and streaming it for training.

Streaming (training): per epoch the shards are put in an order drawn from (seed, epoch) and
read in groups of `group_size` files; a group's records are interleaved (one from each file in
turn) and shuffled in a buffer of `shuffle_buffer` records (bounded memory, mixing within a
group only). The sentence order and masks of each example come from (seed, epoch, example id),
so they do not depend on the worker count or the position. The data position of a global batch
is (epoch, group, offset in group): a resume opens no file of the groups before it and skips
at most one group's records.

See app.data.pretraining.shard_format (the folder's format) and .shard_writer (writing it).
"""

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from app.data.pretraining.shard_format import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    SPLITS,
    file_sha256,
    record_parser,
    write_json,
)
from app.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SOURCE_FILE = "prepared.json"  # in a run folder: the corpus and worker count it started with
EPOCH_SEED_STRIDE = 1_000_003  # as app.data.pipeline: the epoch seed is seed * stride + epoch


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
        write_json(record_path, current)
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
