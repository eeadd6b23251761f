"""tf.data pipelines for pretraining: stream corpus -> tokenize -> pairs (cached) -> order, mask.

Reading, sentence splitting and SentencePiece tokenization run once, in a Python generator
(streaming; the packed pairs are cached in memory). Shuffling, the sentence-order swap and n-gram
masking run every epoch in tf.data ops, so both are fresh each epoch and reproducible from the seed.
"""

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import tensorflow as tf
from omegaconf import DictConfig

from app.data.pretraining.corpus import iter_documents
from app.data.pretraining.pairs import SpecialIds, iter_examples
from app.data.text.word_units import mark_word_continuations, segmenter
from app.data.tokenizer import SPECIAL_PIECES
from app.data.wordpiece import SPECIAL_TOKENS
from app.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROGRESS_DOCUMENTS = 10_000  # documents between progress lines of the first pass


@dataclass
class CorpusStats:
    """What a pass over the corpus saw (filled while the generator runs)."""

    documents: int = 0
    sentences: int = 0
    multi_sentence_documents: int = 0
    examples: int = 0
    files: list[str] = field(default_factory=list)


def special_ids(processor, source: str) -> SpecialIds:
    """ALBERT's special ids in a SentencePiece model (`<pad>`) or a WordPiece vocabulary
    (`[PAD]`); ConfigError naming `source` if any is missing."""
    known = processor.piece_to_id("<pad>") != processor.unk_id()
    pad, specials = ("<pad>", SPECIAL_PIECES) if known else ("[PAD]", SPECIAL_TOKENS)
    missing = [p for p in (pad, "[CLS]", "[SEP]", "[MASK]")
               if processor.piece_to_id(p) == processor.unk_id()]
    if missing:
        raise ConfigError(
            f"The tokenizer from {source} lacks ALBERT's special pieces {missing}; pretraining "
            f"needs all of {list(specials)} ([MASK] for masked-LM). Train one with "
            f"`python -m app.tokenizer input=<corpus>`"
        )
    piece = processor.piece_to_id
    return SpecialIds(pad=piece(pad), cls=piece("[CLS]"), sep=piece("[SEP]"),
                      mask=piece("[MASK]"))


def corpus_documents(
    files: list[Path], data: DictConfig, holdout: bool | None = None
) -> Iterator[list[str]]:
    """Documents of the corpus; with `data.eval_fraction`, every k-th one is held out.

    Args:
        files: the corpus files.
        data: the `data` config (`document_pattern`, `document_per_line`, `skip_pattern`,
            `eval_fraction`).
        holdout: None: all documents; True: only the held-out ones; False: all others.
    """
    every = round(1 / data.eval_fraction) if data.eval_fraction else 0
    documents = iter_documents(files, data.document_pattern, data.skip_pattern, data.text_column,
                               data.get("document_per_line", False))
    for index, document in enumerate(documents):
        if holdout is None or not every or (index % every == every - 1) == holdout:
            yield document


def corpus_sentences(files: list[Path], data: DictConfig) -> Iterator[str]:
    """Every sentence of the training documents (for tokenizer training)."""
    for document in corpus_documents(files, data, holdout=False if data.eval_fraction else None):
        yield from document


def _tokenized(documents, processor, stats: CorpusStats, description: str, segment=None):
    """Token ids of each document's sentences; a progress line every PROGRESS_DOCUMENTS.

    With a word segmenter (`segment`), ids continuing one of its words carry WHOLE_WORD_FLAG.
    """
    for document in documents:
        stats.documents += 1
        encoded = processor.encode(document)
        if segment is not None:
            encoded = [
                mark_word_continuations(sentence, ids, [processor.id_to_piece(i) for i in ids],
                                        segment)
                for sentence, ids in zip(document, encoded, strict=True)]
        sentences = [ids for ids in encoded if ids]
        stats.sentences += len(sentences)
        stats.multi_sentence_documents += len(sentences) > 1
        if stats.documents % PROGRESS_DOCUMENTS == 0:
            log.info("%s: read and tokenized %d documents, %d sentences so far", description,
                     stats.documents, stats.sentences)
        yield sentences


def _signature(sequence_length: int) -> dict:
    row, flag = tf.TensorSpec([sequence_length], tf.int32), tf.TensorSpec([], tf.int32)
    return {"token_ids": row, "segment_ids": row, "padding_mask": row, "trimmed": flag,
            "random_next": flag}


def pretraining_examples(
    documents_fn,
    processor,
    data: DictConfig,
    seed: int,
    max_examples: int | None = None,
    description: str = "corpus",
    stats: CorpusStats | None = None,
) -> tuple[tf.data.Dataset, int]:
    """Packed in-order sentence pairs (unmasked), cached in memory, and their number.

    Reading, sentence splitting and tokenizing happen once, while counting fills the cache; the
    sentence order and the masks are drawn afterwards (`masked_eval_batches`, or per epoch with
    `order_and_mask` through app.data.pipeline.epoch_stream for training).

    Args:
        documents_fn: a callable returning a fresh iterator of documents (lists of sentences).
        processor: the tokenizer's Python-side encoder (SentencePiece's processor, or
            app.data.wordpiece.WordPieceEncoder).
        data: the `data` config (`sequence_length`, `short_seq_prob`, `whole_word_segmenter`).
        seed: the pairs (target lengths, split points) derive from it.
        max_examples: stop after this many examples.
        description: names the data in errors.
        stats: filled with what reading the corpus saw (documents, sentences), if given.

    Raises:
        DataError: the corpus has no text, or no document with two or more sentences.
    """
    ids = special_ids(processor, description)
    stats = CorpusStats() if stats is None else stats

    name = data.get("whole_word_segmenter")
    segment = segmenter(name) if name else None

    def examples():
        documents = _tokenized(documents_fn(), processor, stats, description, segment)
        yield from iter_examples(documents, data.sequence_length, ids, data.short_seq_prob, seed)

    dataset = tf.data.Dataset.from_generator(
        examples, output_signature=_signature(data.sequence_length))
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    dataset = dataset.cache()
    # Counting fills the cache: the corpus is read and tokenized once.
    count, ordered = (int(n) for n in dataset.reduce(
        (0, 0), lambda n, example: (n[0] + 1, n[1] + 1 - example["random_next"])))
    if stats.sentences == 0:
        raise DataError(f"The {description} has no text: read {stats.documents} documents and "
                        f"0 sentences; expected documents of one or more sentences")
    if ordered == 0 and stats.multi_sentence_documents:  # pairs with a random B only
        raise DataError(
            f"The {description} yields no sentence-order pair: {stats.multi_sentence_documents} "
            f"of its {stats.documents} documents have two or more sentences, but no two "
            f"consecutive sentences fit together in `data.sequence_length` "
            f"{data.sequence_length}; expected a longer sequence length or shorter sentences"
        )
    if ordered == 0:
        raise DataError(
            f"The {description} yields no sentence-order pair: none of its {stats.documents} "
            f"documents has two or more sentences ({stats.sentences} sentences in all). Expected "
            f"documents of several sentences, separated by blank lines or by "
            f"`data.document_pattern` headings"
        )
    log.info("%s: %d documents (%d with 2+ sentences), %d sentences -> %d examples (%d with "
             "a random B)", description, stats.documents, stats.multi_sentence_documents,
             stats.sentences, count, count - ordered)
    return dataset.apply(tf.data.experimental.assert_cardinality(count)), count


def masked_eval_batches(
    examples: tf.data.Dataset, per_example: Callable, batch_size: int, seed: int
) -> tf.data.Dataset:
    """Evaluation batches in corpus order, with the same sentence orders and masks every epoch
    (`per_example(example, seed)`, e.g. `order_and_mask(masker)`, seeded by position)."""
    eval_seed = tf.constant(seed + 1, tf.int64)
    return (
        examples.enumerate()
        .map(lambda i, example: per_example(example, tf.stack([eval_seed, i])),
             num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
