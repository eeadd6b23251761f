"""albert-prepare and pretraining from its shards: determinism, rerun, sharding, masks, errors."""

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
from conftest import TINY, compose_config
from omegaconf import OmegaConf
from test_pretraining_data import synthetic_documents, write_corpus

from app.data.pretraining.masking import NGramMasker
from app.data.pretraining.pairs import iter_examples
from app.data.pretraining.pipeline import special_ids
from app.data.pretraining.sentence_order import order_and_mask
from app.data.pretraining.shard_format import MANIFEST_FILE, encode_example, record_parser
from app.data.pretraining.shard_writer import PrepareSettings, prepare_corpus
from app.data.pretraining.shards import (
    ShardStream,
    eval_examples,
    open_prepared,
    pipeline_stream,
    worker_shards,
)
from app.data.tokenizer import train_sentencepiece
from app.errors import ConfigError, DataError
from app.train import train

SEQUENCE_LENGTH = 32
DATA = {"document_pattern": None, "skip_pattern": None, "text_column": "sentence",
        "eval_fraction": 0.1, "sequence_length": SEQUENCE_LENGTH, "short_seq_prob": 0.1}
SHARD_MB = 0.004  # ~4 kB of text per shard: a dozen shards from the corpus below


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("raw")
    first = write_corpus(out / "a.txt", synthetic_documents(120, seed=21))
    second = write_corpus(out / "b.txt", synthetic_documents(60, seed=22))
    with open(second, "rb") as text, gzip.open(out / "b.txt.gz", "wb") as packed:
        packed.write(text.read())
    second.unlink()
    return [first, out / "b.txt.gz"]


@pytest.fixture(scope="module")
def proto(corpus, tmp_path_factory) -> bytes:
    sentences = [s for document in synthetic_documents(120, seed=21) for s in document]
    path = train_sentencepiece(sentences, tmp_path_factory.mktemp("spm") / "spm", 80,
                               hard_vocab_limit=False)
    return path.read_bytes()


def settings(files, **data) -> PrepareSettings:
    return PrepareSettings(list(files), OmegaConf.create({**DATA, **data}), 7, SHARD_MB)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def prepared(corpus, proto, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "one"
    prepare_corpus(settings(corpus), proto, out, num_proc=1)
    return out


def test_records_round_trip_the_packed_examples(proto):
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    documents = [[processor.encode(s) for s in d] for d in synthetic_documents(8, seed=3)]
    examples = list(iter_examples(documents, SEQUENCE_LENGTH, special_ids(processor, "test"),
                                  0.1, seed=5))
    extra = sorted(set(examples[0]) - {"token_ids", "segment_ids", "padding_mask"})
    parse = record_parser(SEQUENCE_LENGTH, "uint16", extra)
    for index, example in enumerate(examples):
        example_id, features = parse(tf.constant(encode_example(example, 9 << 32 | index,
                                                                "uint16")))
        assert int(example_id) == 9 << 32 | index
        assert set(features) == set(example)
        for key, value in example.items():
            np.testing.assert_array_equal(features[key].numpy(), value, err_msg=key)


def test_one_and_two_processes_write_the_same_shards_and_manifest(prepared, corpus, proto,
                                                                  tmp_path):
    two = tmp_path / "two"
    prepare_corpus(settings(corpus), proto, two, num_proc=2)
    manifest = json.loads((prepared / MANIFEST_FILE).read_text())
    assert len(manifest["splits"]["train"]["shards"]) >= 6
    assert manifest["splits"]["eval"]["examples"] > 0
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["eval"]["documents"] \
        == 180
    assert folder_files(two) == folder_files(prepared)
    assert not (two / ".progress").exists()


def test_rerun_after_a_crash_skips_finished_shards_and_ends_with_the_same_manifest(
        prepared, corpus, proto, tmp_path):
    out = tmp_path / "crashed"
    out.mkdir()
    # A directory where shard 3's temporary file goes: writing it fails mid-run, as a kill would
    # stop it, after shards 0-2 are finished.
    (out / ".tmp-train-00003.tfrecord.gz").mkdir()
    with pytest.raises(tf.errors.OpError):
        prepare_corpus(settings(corpus), proto, out, num_proc=1)
    assert not (out / MANIFEST_FILE).exists()
    finished = {name: (out / name).stat().st_mtime_ns
                for name in ("train-00000.tfrecord.gz", "train-00002.tfrecord.gz")}
    (out / ".tmp-train-00003.tfrecord.gz").rmdir()
    (out / ".tmp-train-00001.tfrecord.gz").write_bytes(b"partial")  # a killed write's leftover
    (out / "train-00001.tfrecord.gz").write_bytes(b"truncated")  # and a damaged one: redone
    prepare_corpus(settings(corpus), proto, out, num_proc=1)
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished
    expected = folder_files(prepared)
    assert {k: v for k, v in folder_files(out).items() if not k.startswith(".")} == expected


def test_a_folder_with_another_manifest_is_refused(prepared, corpus, proto, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared, out)
    before = folder_files(out)
    with pytest.raises(ConfigError, match=r"already holds a prepared corpus with other "
                                          r"settings.*Differs in: \['short_seq_prob'\]"):
        prepare_corpus(settings(corpus, short_seq_prob=0.3), proto, out)
    assert folder_files(out) == before
    assert prepare_corpus(settings(corpus), proto, out) == json.loads(
        (out / MANIFEST_FILE).read_text())


def test_a_corpus_without_pairs_is_one_clear_error(proto, tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n\n\t\n")
    with pytest.raises(DataError, match="yields no training pair from its 0 training documents"):
        prepare_corpus(settings([tmp_path / "blank.txt"]), proto, tmp_path / "out")
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()


def test_two_input_contexts_read_disjoint_shards_covering_every_example(prepared):
    corpus = open_prepared(prepared, SEQUENCE_LENGTH)
    shards = corpus.shards("train")
    halves = [worker_shards(shards, 2, worker) for worker in (0, 1)]
    assert {s["file"] for s in halves[0]}.isdisjoint({s["file"] for s in halves[1]})
    assert sorted(s["file"] for half in halves for s in half) == sorted(s["file"] for s in shards)

    def ids(input_context):
        stream = pipeline_stream(corpus, 4, 50, 2, 7, lambda f, seed: seed[1],
                                 input_context=input_context)
        return [int(i) for batch in stream(0, 1) for i in batch]

    everything = ids(None)
    contexts = [tf.distribute.InputContext(2, worker, 2) for worker in (0, 1)]
    parts = [ids(context) for context in contexts]
    assert len(everything) == len(set(everything)) == corpus.manifest["splits"]["train"][
        "examples"]
    assert set(parts[0]).isdisjoint(parts[1])
    assert len(parts[0]) == len(parts[1])  # the same number of steps on both workers
    assert set(parts[0]) | set(parts[1]) <= set(everything)
    # Each worker drops only what exceeds the smaller share (less than one step each).
    assert len(everything) - len(parts[0]) - len(parts[1]) < 2 * 2 + abs(
        sum(s["examples"] for s in halves[0]) - sum(s["examples"] for s in halves[1]))


def masked_by_id(stream: ShardStream, epoch: int = 0) -> dict[int, tuple]:
    out = {}
    for ids, (x, y, _) in stream(epoch * stream.steps_per_epoch, epoch + 1):
        for row, example_id in enumerate(ids.numpy()):
            out[int(example_id)] = (x["token_ids"][row].numpy().tolist(),
                                    x["mask_positions"][row].numpy().tolist(),
                                    int(y["sop"][row]))
    return out


def test_masks_and_sentence_order_depend_on_the_example_not_the_worker_or_position(
        prepared, proto):
    corpus = open_prepared(prepared, SEQUENCE_LENGTH)
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    vocabulary = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    transform = order_and_mask(NGramMasker(vocabulary, max_predictions=5))

    def with_id(features, seed):
        return seed[1], transform(features, seed)

    def stream(input_context=None, seed=7, group_size=2, shuffle_buffer=50):
        return pipeline_stream(corpus, 4, shuffle_buffer, group_size, seed, with_id,
                               input_context=input_context)

    alone = masked_by_id(stream())
    workers = {}
    for worker in (0, 1):
        workers.update(masked_by_id(stream(tf.distribute.InputContext(2, worker, 2))))
    assert workers and all(alone[i] == workers[i] for i in workers)
    reordered = masked_by_id(stream(group_size=3, shuffle_buffer=7))  # other positions
    assert reordered == alone
    later = masked_by_id(stream(), epoch=1)
    assert set(later) == set(alone) and any(later[i] != alone[i] for i in alone)


def test_resume_opens_no_file_before_its_group_and_continues_exactly(prepared, tmp_path):
    folder = tmp_path / "resumable"
    shutil.copytree(prepared, folder)
    corpus = open_prepared(folder, SEQUENCE_LENGTH)
    stream = pipeline_stream(corpus, 4, 30, 2, 7, lambda features, seed: features["token_ids"])
    full = [batch.numpy() for batch in stream(0, 2)]
    start = stream.steps_per_epoch + stream.steps_per_epoch // 2  # mid-way through epoch 1
    epoch, group, offset = stream.position(start)
    assert (epoch, group > 0, offset < 2 * max(stream.counts)) == (1, True, True)
    for index in stream.order(1)[:group * 2]:  # every shard of the groups before: gone
        Path(stream.paths[index]).unlink()
    resumed = [batch.numpy() for batch in stream(start, 2)]
    assert len(resumed) == len(full) - start
    for left, right in zip(resumed, full[start:], strict=True):
        np.testing.assert_array_equal(left, right)


def test_bad_prepared_folders_each_give_one_clear_error(prepared, proto, tmp_path):
    with pytest.raises(ConfigError, match="has no manifest.json"):
        open_prepared(tmp_path, SEQUENCE_LENGTH)
    with pytest.raises(ConfigError, match="holds pairs of length 32"):
        open_prepared(prepared, 64)
    corpus = open_prepared(prepared, SEQUENCE_LENGTH)
    corpus.check_tokenizer(proto, "'spm.model'")
    with pytest.raises(ConfigError, match="is not the one .* was prepared with"):
        corpus.check_tokenizer(proto + b"\0", "`tokenizer.proto` 'other.model'")
    with pytest.raises(ConfigError, match=r"has \d+ training shards for 99 workers"):
        worker_shards(corpus.shards("train"), 99, 0)

    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    shard = broken / "train-00001.tfrecord.gz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-00001.tfrecord.gz' is corrupt"):
        open_prepared(broken, SEQUENCE_LENGTH)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match="is truncated or changed: .* expected"):
        open_prepared(broken, SEQUENCE_LENGTH, verify=False)
    (broken / "spm.model").write_bytes(proto + b"\0")
    with pytest.raises(DataError, match="not the tokenizer manifest.json names"):
        open_prepared(broken, SEQUENCE_LENGTH)


def prepared_overrides(folder: Path) -> list[str]:
    """A tiny pretraining run from a prepared folder (the command line's overrides)."""
    return [*TINY, "experiment=pretrain_wikitext2", "data=prepared", f"data.prepared={folder}",
            f"data.sequence_length={SEQUENCE_LENGTH}", "data.max_predictions=6",
            "data.shard_group_size=2", "data.shuffle_buffer=50", "optimizer.learning_rate=0.05"]


def prepared_run_config(folder: Path, *overrides: str):
    return compose_config(*prepared_overrides(folder), *overrides)


def test_a_tiny_pretraining_run_from_a_prepared_folder(prepared, tmp_path):
    metrics = train(prepared_run_config(prepared), tmp_path / "run")
    manifest = json.loads((prepared / MANIFEST_FILE).read_text())
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "completed"
    assert metrics["train_examples"] == manifest["splits"]["train"]["examples"]
    assert metrics["eval_examples"] == manifest["splits"]["eval"]["examples"]
    flags = [(int(f["trimmed"]), int(f["random_next"])) for _, f in
             eval_examples(open_prepared(prepared, SEQUENCE_LENGTH))[0].as_numpy_iterator()]
    assert metrics["eval_pairs"] == {"whole": flags.count((0, 0)),
                                     "trimmed": sum(t for t, _ in flags),
                                     "random_next": sum(r for _, r in flags)}
    assert (tmp_path / "run" / "tokenizer" / "spm.model").read_bytes() == (
        prepared / "spm.model").read_bytes()
    assert all(math.isfinite(metrics["final"][k]) for k in ("val_loss", "val_mlm_accuracy"))
    assert metrics["final"]["val_mlm_loss"] < metrics["initial"]["val_mlm_loss"]


def test_a_run_with_another_tokenizer_is_refused_before_training(prepared, tmp_path):
    other = train_sentencepiece(["Some other text entirely.", "Quite different words here."] * 50,
                                tmp_path / "other", 40, hard_vocab_limit=False)
    with pytest.raises(ConfigError, match="is not the one .* was prepared with"):
        train(prepared_run_config(prepared, f"tokenizer.proto={other}"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
