"""Sentence pairs as in ALBERT: pack a document's consecutive sentences into segments A, B.

Following ALBERT's `create_pretraining_data.py`: consecutive sentences of one document are
gathered up to a target length (`sequence_length - 3`, or a random shorter one with
`short_seq_prob`) and split at a random sentence boundary into A and B. Pairs never span two
documents. They are kept in order here; app.data.pretraining.sentence_order swaps half of them,
drawn afresh every epoch.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of ALBERT's special pieces."""

    pad: int
    cls: int
    sep: int
    mask: int


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator):
    """Trim the longer segment, from its front or back at random, until both fit."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def document_pairs(
    document: list[list[int]],
    max_tokens: int,
    short_seq_prob: float,
    rng: np.random.Generator,
) -> Iterator[tuple[list[int], list[int]]]:
    """(segment A, segment B) pairs, in document order, from one tokenized document.

    Args:
        document: the document's sentences as token ids.
        max_tokens: room for A and B together (sequence length minus [CLS] and two [SEP]).
        short_seq_prob: probability of a random shorter target length.
        rng: the source of randomness (seeded by the caller).
    """
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    chunk: list[list[int]] = []
    length = 0
    for index, sentence in enumerate(document):
        chunk.append(sentence)
        length += len(sentence)
        if index == len(document) - 1 or length >= target:
            if len(chunk) >= 2:
                split = int(rng.integers(1, len(chunk)))
                a = [t for s in chunk[:split] for t in s]
                b = [t for s in chunk[split:] for t in s]
                _truncate_pair(a, b, max_tokens, rng)
                if a and b:
                    yield a, b
            chunk, length = [], 0
            target = max_tokens
            if rng.random() < short_seq_prob:
                target = int(rng.integers(2, max_tokens + 1))


def pack_pair(
    a: list[int], b: list[int], sequence_length: int, ids: SpecialIds
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[CLS] A [SEP] B [SEP]` padded to `sequence_length`: token ids, segment ids, padding mask."""
    tokens = [ids.cls, *a, ids.sep, *b, ids.sep]
    segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    padding = sequence_length - len(tokens)
    token_ids = np.array(tokens + [ids.pad] * padding, dtype=np.int32)
    segment_ids = np.array(segments + [0] * padding, dtype=np.int32)
    padding_mask = np.array([1] * len(tokens) + [0] * padding, dtype=np.int32)
    return token_ids, segment_ids, padding_mask


def iter_examples(
    documents: Iterable[list[list[int]]],
    sequence_length: int,
    ids: SpecialIds,
    short_seq_prob: float,
    seed: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Packed in-order pairs from tokenized documents, reproducible from `seed`.

    Yields dicts of `token_ids`, `segment_ids`, `padding_mask` (int32, `sequence_length`).
    """
    rng = np.random.default_rng(seed)
    for document in documents:
        for a, b in document_pairs(document, sequence_length - 3, short_seq_prob, rng):
            token_ids, segment_ids, padding_mask = pack_pair(a, b, sequence_length, ids)
            yield {"token_ids": token_ids, "segment_ids": segment_ids,
                   "padding_mask": padding_mask}
