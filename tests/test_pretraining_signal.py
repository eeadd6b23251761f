"""Pretraining on real text masks ~15% of the tokens and finds sentence pairs, in Chinese as in
English, with both tokenizer kinds; and a run says so (or warns) in one line and metrics.json."""

import itertools
import logging

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
from conftest import shared_data
from omegaconf import OmegaConf

from app.data.pretraining.corpus import iter_documents, read_lines
from app.data.pretraining.masking import NGramMasker
from app.data.pretraining.pairs import RecentSentences, document_pairs
from app.data.pretraining.pipeline import CorpusStats, corpus_documents, pretraining_examples
from app.data.pretraining.sentence_order import count_pair_kinds
from app.data.pretraining.shard_format import record_parser
from app.data.pretraining.shard_writer import PrepareSettings, prepare_corpus
from app.data.pretraining.signal import corpus_signal, masking_stats, report_signal
from app.data.text import split_sentences
from app.data.tokenizer import train_sentencepiece
from app.data.wordpiece import WordPieceEncoder, train_wordpiece
from app.tasks.tokenizer import load_run_tokenizer, token_encoder

SEQUENCES = 400  # as measured before the fix: 400 sequences of length 64


def chnsenticorp_reviews(limit: int = 1500) -> list[str]:
    path = shared_data("chnsenticorp") / "train.tsv"
    return list(itertools.islice(read_lines(path, "text"), limit))


def wikitext_documents(limit: int = 150) -> list[list[str]]:
    path = shared_data("wikitext-2") / "wiki.train.raw"
    documents = iter_documents([path], r"^ = [^=].* = *$", r"^ (= )+.*(= )+ *$")
    return list(itertools.islice(documents, limit))


def encoder(kind: str, sentences: list[str], out):
    """A tokenizer of `kind` trained on `sentences`, as the Python-side encoder pretraining uses."""
    if kind == "wordpiece":
        vocab = train_wordpiece(sentences, out, vocab_size=3000, lowercase=True)
        return WordPieceEncoder(vocab.read_bytes(), lowercase=True)
    train_sentencepiece(sentences, out / "spm", vocab_size=3000, hard_vocab_limit=False)
    return token_encoder(load_run_tokenizer(out))


def vocabulary(processor) -> list[str]:
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def signal_of(documents: list[list[str]], processor, seed: int = 0) -> dict:
    data = OmegaConf.create({"sequence_length": 64, "short_seq_prob": 0.1})
    stats = CorpusStats()
    examples, count = pretraining_examples(lambda: iter(documents), processor, data, seed,
                                           max_examples=SEQUENCES, stats=stats)
    masker = NGramMasker(vocabulary(processor), max_predictions=10)
    return corpus_signal(stats.documents, stats.sentences, stats.multi_sentence_documents, count,
                         count_pair_kinds(examples), masking_stats(masker, examples, seed))


# The real-data tests train tokenizers on ../shared/data: slow (CI runs them).
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sentencepiece", "wordpiece"])
def test_chinese_reviews_mask_fifteen_percent(kind, tmp_path):
    reviews = chnsenticorp_reviews()
    documents = [split_sentences(review) for review in reviews]
    processor = encoder(kind, [s for d in documents for s in d], tmp_path)
    signal = signal_of(documents, processor)
    assert signal["sequences_measured"] == SEQUENCES
    assert 0.135 <= signal["masked_share"] <= 0.165, signal
    assert signal["sequences_without_mask"] <= SEQUENCES * 0.02, signal
    assert signal["sentences_per_document"] > 2.5, signal


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sentencepiece", "wordpiece"])
def test_wikitext_masks_fifteen_percent(kind, tmp_path):
    documents = wikitext_documents()
    processor = encoder(kind, [s for d in documents for s in d], tmp_path)
    signal = signal_of(documents, processor)
    assert 0.135 <= signal["masked_share"] <= 0.165, signal
    assert signal["tokens_per_word_unit"] > 1.0, signal


@pytest.mark.slow
def test_most_multi_sentence_reviews_yield_sentence_order_pairs(tmp_path):
    """At the fine-tuning recipes' length, nine in ten reviews of several sentences give at least
    one pair of two of their own sentences."""
    documents = [split_sentences(review) for review in chnsenticorp_reviews()]
    processor = encoder("wordpiece", [s for d in documents for s in d], tmp_path)
    rng, recent = np.random.default_rng(0), RecentSentences()
    multi = paired = 0
    for document in documents:
        ids = [i for i in processor.encode(document) if i]
        if len(ids) > 1:
            multi += 1
            pairs = list(document_pairs(ids, 128 - 3, 0.1, rng, recent))
            paired += any(not pair.random_next for pair in pairs)
        recent.add(ids)
    assert multi > 0.6 * len(documents)
    assert paired >= 0.9 * multi, (paired, multi)


def test_a_masker_that_misses_words_is_reported(caplog):
    signal = corpus_signal(10, 30, 8, 100, {"whole": 20, "trimmed": 10, "random_next": 70},
                           {"masked_share": 0.03, "tokens_per_word_unit": 40.0,
                            "sequences_without_mask": 80, "sequences_measured": 100})
    with caplog.at_level(logging.INFO):
        report_signal(signal, "Training corpus")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "masked 3.0% of the tokens, outside 12-18%" in warnings[0]
    assert "only 30.0% of the examples hold two segments" in warnings[1]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1 and "3.00 sentences each" in info[0]


CLAUSES = ["房间很干净", "服务员态度很好", "早餐种类不多", "位置离地铁站很近", "隔音效果太差了",
           "价格有点贵", "下次还会再来", "前台办理入住很快", "床很舒服", "空调声音很大"]


def chinese_corpus(path, count: int = 120, seed: int = 0):
    """One review per line, one to eight clauses, no spaces."""
    rng = np.random.default_rng(seed)
    lines = ["".join(f"{rng.choice(CLAUSES)}{rng.choice(['。', '！', '，'])}"
                     for _ in range(rng.integers(1, 9))) for _ in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_prepare_and_in_memory_give_the_same_chinese_examples_and_signal(tmp_path):
    """albert-prepare reads, splits and packs with the in-memory path's code: with the shard's
    seed, the in-memory examples equal the prepared shard's, and the manifest has the signal."""
    corpus = chinese_corpus(tmp_path / "reviews.txt")
    sentences = [s for line in read_lines(corpus) for s in split_sentences(line)]
    proto = train_sentencepiece(sentences, tmp_path / "spm", vocab_size=80,
                                hard_vocab_limit=False).read_bytes()
    data = OmegaConf.create({"sequence_length": 64, "short_seq_prob": 0.1, "eval_fraction": 0.0,
                             "document_pattern": None, "document_per_line": True,
                             "skip_pattern": None, "text_column": "sentence"})
    manifest = prepare_corpus(PrepareSettings([corpus], data, 7, 16.0), proto, tmp_path / "out")
    shards = manifest["splits"]["train"]["shards"]
    assert [shard["file"] for shard in shards] == ["train-00000.tfrecord.gz"]
    parse = record_parser(64, manifest["tokenizer"]["token_dtype"], manifest["extra_keys"])
    prepared = [parse(record)[1] for record in tf.data.TFRecordDataset(
        str(tmp_path / "out" / "train-00000.tfrecord.gz"), compression_type="GZIP")]
    shard_seed = int(np.random.SeedSequence([7, 0, 0]).generate_state(1)[0])
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    in_memory, count = pretraining_examples(
        lambda: corpus_documents([corpus], data), processor, data, shard_seed)
    assert count == len(prepared) == manifest["splits"]["train"]["examples"]
    for mine, theirs in zip(in_memory.as_numpy_iterator(), prepared, strict=True):
        for key in ("token_ids", "segment_ids", "padding_mask", "trimmed", "random_next"):
            np.testing.assert_array_equal(mine[key], theirs[key].numpy(), err_msg=key)
    signal = manifest["signal"]
    assert signal["documents"] == 120 and sum(signal["pair_kinds"].values()) >= count
    assert signal["sentences_per_document"] > 2.0
    # Every Chinese piece is a word of its own (Google's rule).
    assert 0.12 <= signal["masked_share"] <= 0.18 and signal["tokens_per_word_unit"] == 1.0
