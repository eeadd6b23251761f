"""The on-disk format of a prepared corpus, shared by writing (app.data.pretraining.shard_writer)
and reading (app.data.pretraining.shards).

The folder `albert-prepare` writes (see app.prepare):

    manifest.json            written last: settings, tokenizer hash, per-shard counts and hashes
    spm.model                the tokenizer the pairs were made with
    train-00000.tfrecord.gz  GZIP TFRecords of tf.train.Example, one packed pair each:
    ...                      `id` (int64, stable: shard << 32 | index in shard), `tokens`
    eval-00000.tfrecord.gz   ([CLS] A [SEP] B [SEP], no padding, little-endian uint16 or int32
                             bytes), `a_length` ([CLS] A [SEP]), and any other scalar key of
                             app.data.pretraining.pairs.iter_examples' dicts as int64
"""

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "spm.model"
PROGRESS_DIR = ".progress"
SETTINGS_FILE = "settings.json"
SHARD_SUFFIX = ".tfrecord.gz"
SPLITS = ("train", "eval")
PACKED_KEYS = ("token_ids", "segment_ids", "padding_mask")
ID_SHIFT = 32  # example id = shard index << ID_SHIFT | index in the shard
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


def write_json(path: Path, value: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".tmp-{path.name}")
    scratch.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(scratch, path)


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
