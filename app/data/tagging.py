"""Words to model inputs for token classification: pieces, first-piece labels, windows.

Each word is tokenized on its own (as transformers does with `is_split_into_words`); its first
piece carries the word's tag, later pieces carry IGNORE (no loss, no metric). A sentence whose
pieces do not fit one sequence is cut into overlapping windows that start at word boundaries,
`stride` pieces apart at most, so every word is in at least one window. Predictions of a word
seen in several windows are merged by one fixed rule: the window where the word has the most
context, i.e. the largest min(pieces before it, pieces after it) in that window; on a tie the
earlier window (BERT's "max context" rule for overlapping spans).

Example:
    >>> windows = cut_windows([[[5], [6, 7]]], [[1, 0]], sequence_length=8, stride=None,
    ...                       specials=Specials(cls=2, sep=3, pad=0, unk=1))
    >>> windows.token_ids[0].tolist(), windows.labels[0].tolist()
    ([2, 5, 6, 7, 3, 0, 0, 0], [-1, 1, 0, -1, -1, -1, -1, -1])
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

IGNORE = -1  # the label of a piece that carries no loss and no metric
TOKENIZE_CHUNK = 4096  # distinct words tokenized per tokenizer call


@dataclass(frozen=True)
class Specials:
    """The tokenizer's special ids a window is packed with."""

    cls: int
    sep: int
    pad: int
    unk: int


@dataclass(frozen=True)
class Windows:
    """Fixed-length model inputs cut from sentences, and where each word's first piece is.

    Attributes:
        token_ids: [windows, sequence_length] `[CLS] pieces [SEP]` then padding.
        padding_mask: [windows, sequence_length] 1 on `[CLS] pieces [SEP]`.
        labels: [windows, sequence_length] a word's tag id at its first piece, IGNORE elsewhere
            (all IGNORE when read without tags).
        sentence: [windows] the sentence each window comes from.
        word: [windows, sequence_length] the word's index in its sentence at its first piece, -1
            elsewhere.
        context: [windows, sequence_length] min(pieces before, pieces after) the word in this
            window, at its first piece (the merge rule's score).
    """

    token_ids: np.ndarray
    padding_mask: np.ndarray
    labels: np.ndarray
    sentence: np.ndarray
    word: np.ndarray
    context: np.ndarray

    def __len__(self) -> int:
        return len(self.sentence)

    def features(self) -> dict[str, np.ndarray]:
        """The backbone's inputs (one segment)."""
        return {"token_ids": self.token_ids, "segment_ids": np.zeros_like(self.token_ids),
                "padding_mask": self.padding_mask}


def word_windows(lengths: list[int], width: int, stride: int) -> list[tuple[int, int]]:
    """(first word, end word) of each window over words of these piece `lengths`.

    A window holds whole words, at most `width` pieces (a longer word alone is cut to `width`);
    the next window starts at the first word at least `stride` pieces after the current start,
    or at the current window's end if that comes first, so no word is skipped.
    """
    starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    windows, first, count = [], 0, len(lengths)
    while True:
        end = first + 1
        while end < count and starts[end + 1] - starts[first] <= width:
            end += 1
        windows.append((first, end))
        if end >= count:
            return windows
        following = first + 1
        while following < end and starts[following] - starts[first] < stride:
            following += 1
        first = following


def cut_windows(pieces: list[list[list[int]]], tag_ids: list[list[int]] | None,
                sequence_length: int, stride: int | None, specials: Specials) -> Windows:
    """Pack tokenized sentences into windows of `sequence_length` (see the module docstring).

    Args:
        pieces: per sentence, per word, the word's piece ids (an empty word becomes `[UNK]`).
        tag_ids: per sentence, per word, the tag id (None: unlabelled, for prediction).
        sequence_length: the model's sequence length (pieces per window + 2).
        stride: pieces between window starts (None: half a window).
        specials: the `[CLS]`, `[SEP]`, padding and unknown ids.
    """
    width = sequence_length - 2
    stride = stride or max(width // 2, 1)
    rows = []
    for index, words in enumerate(pieces):
        words = [(word or [specials.unk])[:width] for word in words]
        lengths = [len(word) for word in words]
        tags = tag_ids[index] if tag_ids is not None else None
        for first, end in word_windows(lengths, width, stride):
            rows.append(_window(words, tags, first, end, index, sequence_length, specials))
    if not rows:
        empty = np.zeros((0, sequence_length), "int32")
        return Windows(empty, empty, empty, np.zeros(0, "int32"), empty, empty)
    columns = list(zip(*rows, strict=True))
    return Windows(*(np.stack(column).astype("int32") for column in columns[:3]),
                   np.array(columns[3], "int32"),
                   *(np.stack(column).astype("int32") for column in columns[4:]))


def _window(words, tags, first: int, end: int, sentence: int, sequence_length: int,
            specials: Specials) -> tuple:
    """One packed window: token ids, mask, labels, sentence, word index, context."""
    token_ids = np.full(sequence_length, specials.pad)
    labels = np.full(sequence_length, IGNORE)
    word = np.full(sequence_length, -1)
    context = np.zeros(sequence_length)
    total = sum(len(w) for w in words[first:end])
    position, before = 1, 0
    for index in range(first, end):
        length = len(words[index])
        token_ids[position:position + length] = words[index]
        word[position] = index
        context[position] = min(before, total - before - length)
        if tags is not None:
            labels[position] = tags[index]
        position += length
        before += length
    token_ids[0], token_ids[position] = specials.cls, specials.sep
    mask = (np.arange(sequence_length) <= position).astype("int32")
    return token_ids, mask, labels, sentence, word, context


def merge_windows(windows: Windows, outputs: np.ndarray, word_counts: list[int]) -> list:
    """Per sentence, one output row per word: from the window where the word has the most
    context (ties: the earlier window).

    Args:
        windows: the windows the outputs are for.
        outputs: [windows, sequence_length, tags] the model's outputs.
        word_counts: the number of words of each sentence.

    Returns:
        One [words, tags] array per sentence.
    """
    offsets = np.concatenate([[0], np.cumsum(word_counts)])
    rows, positions = np.nonzero(windows.word >= 0)
    flat = offsets[windows.sentence[rows]] + windows.word[rows, positions]
    order = np.lexsort((rows, -windows.context[rows, positions], flat))
    first = order[np.concatenate([[True], np.diff(flat[order]) != 0])] if len(order) else order
    merged = np.zeros((offsets[-1], outputs.shape[-1]), outputs.dtype)
    merged[flat[first]] = outputs[rows[first], positions[first]]
    return [merged[offsets[i]:offsets[i + 1]] for i in range(len(word_counts))]


def specials_of(tokenizer) -> Specials:
    """The special ids of a keras-hub ALBERT tokenizer (SentencePiece or WordPiece)."""
    vocabulary = tokenizer.get_vocabulary()
    unk = vocabulary.index("[UNK]" if "[UNK]" in vocabulary else "<unk>")
    return Specials(cls=tokenizer.cls_token_id, sep=tokenizer.sep_token_id,
                    pad=tokenizer.pad_token_id, unk=unk)


def word_pieces(tokenizer, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """Per sentence, per word, the piece ids of the word tokenized on its own; each distinct
    word is tokenized once, many per call."""
    distinct = sorted({word for words in sentences for word in words})
    ids: dict[str, list[int]] = {}
    for start in range(0, len(distinct), TOKENIZE_CHUNK):
        chunk = distinct[start:start + TOKENIZE_CHUNK]
        pieces = tokenizer(tf.constant(chunk, dtype=tf.string))  # eager: lists of ids
        pieces = pieces.to_list() if isinstance(pieces, tf.RaggedTensor) else pieces
        ids.update(zip(chunk, pieces, strict=True))
    return [[ids[word] for word in words] for words in sentences]


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, end word) of each entity in IOB2 tags, by seqeval's strict rule: a
    `B-X` and the `I-X` right after it; an `I-X` that starts an entity starts none.

    Example:
        >>> entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"])
        [('PER', 0, 2), ('LOC', 4, 5)]
    """
    spans, open_span = [], None
    for index, tag in enumerate([*tags, "O"]):
        if open_span and tag != f"I-{open_span[0]}":
            spans.append((open_span[0], open_span[1], index))
            open_span = None
        if tag.startswith("B-"):
            open_span = (tag[2:], index)
    return spans
