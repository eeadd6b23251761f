"""Sentence pairs as in ALBERT: pack a document's whole sentences into segments A, B.

Following ALBERT's `create_pretraining_data.py`: consecutive sentences of one document are
gathered up to a target length (`sequence_length - 3`, or a random shorter one with
`short_seq_prob`) and split at a random sentence boundary into A and B. Unlike ALBERT, a chunk is
closed *before* the sentence that would overflow the target, and that sentence starts the next
chunk, so a pair of two or more sentences is never cut; only a chunk of one sentence longer than
the room is trimmed. (ALBERT closes after the overflowing sentence and trims: at length 64 most
pairs then had a segment cut mid-sentence, and which one was cut gave the order away.)

A chunk of one sentence gets a random B as in ALBERT (`len(current_chunk) == 1`): consecutive
whole sentences of another document, from a random start, labelled "not in order"
(`Pair.random_next`, see app.data.pretraining.sentence_order). ALBERT draws them from any
document of the corpus held in memory; here documents arrive as a stream, so B comes from a
bounded buffer of the latest sentences of *earlier* documents (`RecentSentences`, seeded through
the caller's generator). Until the first document has gone by the buffer is empty and
one-sentence chunks are dropped, as they are with `recent_sentences=0`.

Pairs are kept in order here; app.data.pretraining.sentence_order swaps half of the
sentence-order pairs, drawn afresh every epoch.
"""

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

RECENT_SENTENCES = 1000  # sentences of earlier documents kept as the source of random B segments


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of ALBERT's special pieces."""

    pad: int
    cls: int
    sep: int
    mask: int


@dataclass(frozen=True)
class Pair:
    """Segments A and B of one example; unpacks as `a, b = pair`.

    Attributes:
        a, b: token ids.
        trimmed: tokens were cut off A or B to fit (a sentence cut mid-way).
        random_next: B comes from another document (ALBERT's `is_random_next`).
    """

    a: list[int]
    b: list[int]
    trimmed: bool = False
    random_next: bool = False

    def __iter__(self):
        return iter((self.a, self.b))


class RecentSentences:
    """The latest `capacity` sentences of the documents added so far: where random Bs come from.

    Args:
        capacity: sentences kept (memory stays bounded on a corpus of any size).
    """

    def __init__(self, capacity: int = RECENT_SENTENCES):
        self._sentences: deque[tuple[int, list[int]]] = deque(maxlen=capacity)
        self._documents = 0

    def add(self, document: list[list[int]]) -> None:
        """Keep a finished document's sentences (the oldest ones kept fall out)."""
        self._sentences.extend((self._documents, sentence) for sentence in document)
        self._documents += 1

    def segment(self, room: int, rng: np.random.Generator) -> list[int] | None:
        """Consecutive whole sentences of one document from a random start, as many as fit in
        `room` (at least the first, whatever its length); None while nothing is kept."""
        if not self._sentences:
            return None
        start = int(rng.integers(len(self._sentences)))
        document, first = self._sentences[start]
        tokens = list(first)
        for owner, sentence in itertools.islice(self._sentences, start + 1, None):
            if owner != document or len(tokens) + len(sentence) > room:
                break
            tokens.extend(sentence)
        return tokens


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator):
    """Trim the longer segment (either one on a tie), from its front or back at random, until
    both fit."""
    while len(a) + len(b) > max_tokens:
        if len(a) == len(b):
            longer = a if rng.random() < 0.5 else b
        else:
            longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def _chunk_pair(
    chunk: list[list[int]],
    target: int,
    max_tokens: int,
    rng: np.random.Generator,
    recent: RecentSentences | None,
) -> Pair | None:
    """A, B from one chunk: split at a random sentence boundary, or A plus a random B."""
    if len(chunk) >= 2:
        split = int(rng.integers(1, len(chunk)))
        a = [t for s in chunk[:split] for t in s]
        b = [t for s in chunk[split:] for t in s]
        random_next = False
    else:
        a = list(chunk[0])
        b = recent.segment(target - len(a) if target > len(a) else max_tokens - len(a),
                           rng) if recent is not None else None
        if b is None:
            return None
        random_next = True
    trimmed = len(a) + len(b) > max_tokens
    _truncate_pair(a, b, max_tokens, rng)
    return Pair(a, b, trimmed, random_next) if a and b else None


def document_pairs(
    document: list[list[int]],
    max_tokens: int,
    short_seq_prob: float,
    rng: np.random.Generator,
    recent: RecentSentences | None = None,
) -> Iterator[Pair]:
    """Pairs (A, B), in document order, from one tokenized document.

    Args:
        document: the document's sentences as token ids.
        max_tokens: room for A and B together (sequence length minus [CLS] and two [SEP]).
        short_seq_prob: probability of a random shorter target length.
        rng: the source of randomness (seeded by the caller).
        recent: sentences of other documents for the random B of one-sentence chunks; None:
            one-sentence chunks are dropped.
    """

    def draw_target() -> int:
        return int(rng.integers(2, max_tokens + 1)) if rng.random() < short_seq_prob \
            else max_tokens

    target = draw_target()
    chunk: list[list[int]] = []
    length = 0
    for sentence in document:
        if chunk and length + len(sentence) > target:
            # Close before the sentence that would overflow; it starts the next chunk.
            pair = _chunk_pair(chunk, target, max_tokens, rng, recent)
            if pair is not None:
                yield pair
            chunk, length, target = [], 0, draw_target()
        chunk.append(sentence)
        length += len(sentence)
        if length >= target:
            pair = _chunk_pair(chunk, target, max_tokens, rng, recent)
            if pair is not None:
                yield pair
            chunk, length, target = [], 0, draw_target()
    if chunk:
        pair = _chunk_pair(chunk, target, max_tokens, rng, recent)
        if pair is not None:
            yield pair


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
    recent_sentences: int = RECENT_SENTENCES,
) -> Iterator[dict[str, np.ndarray]]:
    """Packed in-order pairs from tokenized documents, reproducible from `seed`.

    Random Bs come from the last `recent_sentences` sentences of the documents before (0: none,
    one-sentence chunks dropped), so the examples depend on the documents' order in the stream.

    Yields dicts of `token_ids`, `segment_ids`, `padding_mask` (int32, `sequence_length`) and
    the int32 scalars `trimmed` and `random_next` (see `Pair`; not model inputs).
    """
    rng = np.random.default_rng(seed)
    recent = RecentSentences(recent_sentences)
    for document in documents:
        for pair in document_pairs(document, sequence_length - 3, short_seq_prob, rng, recent):
            token_ids, segment_ids, padding_mask = pack_pair(pair.a, pair.b, sequence_length, ids)
            yield {"token_ids": token_ids, "segment_ids": segment_ids,
                   "padding_mask": padding_mask, "trimmed": np.int32(pair.trimmed),
                   "random_next": np.int32(pair.random_next)}
        recent.add(document)
