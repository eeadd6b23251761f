"""Stream documents of sentences from raw text files (globs, `.gz` too) and TSV text columns.

Documents are separated by blank lines, or, with `document_pattern`, start at heading lines
(WikiText's ` = Title = `), or, with `document_per_line`, are one line each (a review per
line). A TSV file (`*.tsv`, header row) gives its `text_column` (a task's own texts for
task-adaptive pretraining), each row a document of its sentences: consecutive rows are unrelated
texts, so no sentence-order pair spans two rows (a one-sentence row gets a random
B, see app.data.pretraining.pairs). Nothing is held in memory beyond one document.
"""

import glob
import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from app.data.readers import iter_tables
from app.data.text import split_sentences
from app.errors import ConfigError, DataError


def expand_files(directory: str | Path, patterns: str, key: str) -> list[Path]:
    """Files matching comma-separated glob `patterns` (relative to `directory`), sorted.

    Raises ConfigError naming `key` when nothing matches.
    """
    files: list[Path] = []
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        full = pattern if Path(pattern).is_absolute() else str(Path(directory) / pattern)
        files.extend(Path(p) for p in sorted(glob.glob(full, recursive=True)) if Path(p).is_file())
    if not files:
        raise ConfigError(
            f"`{key}` matches no file. Received: {patterns!r} in '{directory}'; "
            f"expected a file name or glob such as '*.txt' or 'books/**/*.txt.gz'"
        )
    return files


def read_lines(path: Path, text_column: str = "sentence") -> Iterator[str]:
    """Lines of a UTF-8 text file (gzip-compressed when named `*.gz`), newline stripped; of a
    TSV file (`*.tsv`), the `text_column` value of each row."""
    if path.suffix == ".tsv":
        for table in iter_tables(path, "tsv", [text_column]):
            yield from table.columns[text_column]
        return
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                yield line.rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"Cannot read corpus file '{path}': {error}") from error


def iter_documents(
    files: list[Path],
    document_pattern: str | None = None,
    skip_pattern: str | None = None,
    text_column: str = "sentence",
    document_per_line: bool = False,
) -> Iterator[list[str]]:
    """Yield each document as a list of sentences, streaming through `files` in order.

    Args:
        files: text files; each file also ends a document (each row of a TSV file is one).
        document_pattern: regex of lines that start a new document (the line itself is dropped);
            None: blank lines separate documents.
        skip_pattern: regex of lines to drop (e.g. WikiText's `= = Section = =` headings).
        text_column: the column read from TSV files.
        document_per_line: each line is a document of its own (the patterns do not apply but
            `skip_pattern`).
    """
    heading = re.compile(document_pattern) if document_pattern else None
    skip = re.compile(skip_pattern) if skip_pattern else None
    for path in files:
        if path.suffix == ".tsv" or document_per_line:
            lines = read_lines(path, text_column)
            kept = (line for line in lines if not (skip and skip.match(line)))
            yield from filter(None, map(split_sentences, kept))
            continue
        sentences: list[str] = []
        for line in read_lines(path, text_column):
            starts_document = heading.match(line) if heading else not line.strip()
            if starts_document:
                if sentences:
                    yield sentences
                sentences = []
                continue
            if not line.strip() or (skip and skip.match(line)):
                continue
            sentences.extend(split_sentences(line))
        if sentences:
            yield sentences
