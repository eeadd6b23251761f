"""Sequence length and bucket boundaries chosen from the training split's token lengths.

Pure functions over a list of lengths (pieces plus special tokens per example, as packed), so
they run without TensorFlow.

Example:
    >>> choose_sequence_length([10] * 99 + [300], cap=512)
    16
    >>> choose_boundaries([5] * 50 + [20] * 50, sequence_length=32)
    [8, 24]
"""

import itertools
import math
from collections import Counter
from collections.abc import Sequence

COVERAGE = 0.99  # share of the training examples the chosen length holds whole
MULTIPLE = 8     # lengths and boundaries are multiples of this (tensor-core friendly shapes)
BUCKETS = 4      # at most this many boundaries: batches take at most BUCKETS + 1 shapes


def round_up(length: int, multiple: int = MULTIPLE) -> int:
    """`length` rounded up to a multiple of `multiple` (at least one `multiple`)."""
    return max(multiple, math.ceil(length / multiple) * multiple)


def quantile(lengths: Sequence[int], share: float) -> int:
    """The smallest length that at least `share` of `lengths` do not exceed."""
    ordered = sorted(lengths)
    return int(ordered[max(0, math.ceil(share * len(ordered)) - 1)])


def choose_sequence_length(lengths: Sequence[int], cap: int, coverage: float = COVERAGE,
                           minimum: int = MULTIPLE) -> int:
    """The shortest multiple of MULTIPLE holding at least `coverage` of the examples whole,
    at least `minimum` and at most `cap` (the model's position table).

    Args:
        lengths: each training example's packed length (special tokens counted).
        cap: the longest sequence the model takes.
        coverage: the share of examples that must fit.
        minimum: the shortest length allowed (e.g. a tagging window's stride + 2).
    """
    if len(lengths) == 0:
        raise ValueError("no lengths to choose a sequence length from")
    return min(cap, max(round_up(minimum), round_up(quantile(lengths, coverage))))


def choose_boundaries(lengths: Sequence[int], sequence_length: int,
                      buckets: int = BUCKETS) -> list[int]:
    """The at most `buckets` boundaries (ascending multiples of MULTIPLE below
    `sequence_length`) that pad the examples least, each example padded to the smallest
    boundary holding it, else to `sequence_length` (empty: one shape, no bucketing).

    Exact, by dynamic programming over the distinct padded sizes (at most sequence_length /
    MULTIPLE of them). Batches are cut to their longest example; length bucketing sorts
    windows of batches by length, so that each batch's examples are of similar lengths.

    Args:
        lengths: each training example's packed length.
        sequence_length: the full length, the last bucket.
        buckets: at most this many boundaries.
    """
    counts = Counter(min(round_up(length), sequence_length) for length in lengths)
    sizes = sorted(size for size in counts if size < sequence_length)
    # below[b]: how many examples a boundary at b holds (those of padded size <= b).
    below = dict(zip(sizes, itertools.accumulate(counts[size] for size in sizes), strict=True))
    best = (sequence_length * len(lengths), [])
    # last[b]: (padded tokens of the examples held, boundaries) with the highest boundary at b.
    last = {b: (b * below[b], [b]) for b in sizes}
    for _ in range(buckets):
        best = min([best, *((cost + sequence_length * (len(lengths) - below[b]), chosen)
                            for b, (cost, chosen) in last.items())])
        last = {b: min((cost + b * (below[b] - below[a]), [*chosen, b])
                       for a, (cost, chosen) in last.items() if a < b)
                for b in sizes if any(a < b for a in last)}
    return best[1]


def truncated(lengths: Sequence[int], sequence_length: int) -> int:
    """How many examples are longer than `sequence_length`."""
    return int(sum(length > sequence_length for length in lengths))
