"""Stream documents of sentences from raw text files (globs, `.gz` too) and TSV text columns.

Documents are separated by blank lines, or, with `document_pattern`, start at heading lines
(WikiText's ` = Title = `). A TSV file (`*.tsv`, header row) gives its `text_column` (a task's
own texts for task-adaptive pretraining), each row a document of its sentences: consecutive rows
are unrelated texts, so no sentence-order pair spans two rows (a one-sentence row gets a random
B, see app.data.pretraining.pairs). Nothing is held in memory beyond one document.
"""

import glob
import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from app.data.readers import iter_tables
from app.errors import ConfigError, DataError

# Abbreviations after which a period does not end a sentence (lower-cased, without the period).
_ABBREVIATIONS = (
    "mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e inc ltd co corp no nos fig figs vol "
    "jan feb mar apr jun jul aug sep sept oct nov dec gen col lt sgt capt rev u.s u.k approx "
    "ca lit cf al op ed eds"
)
ABBREVIATIONS = frozenset(_ABBREVIATIONS.split())
# A candidate boundary: ., ! or ? (optionally followed by closing quotes/brackets), spaces,
# then something that can start a sentence.
_BOUNDARY = re.compile(r"""([.!?]+["')\]]*)\s+(?=(?:["'(\[]\s?)?[A-Z0-9])""")
LAST_WORD_WINDOW = 64
_LAST_WORD = re.compile(r"(\S+)\s*$")


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


def split_sentences(text: str) -> list[str]:
    """Split English prose into sentences (rule-based: `.`/`!`/`?` then an upper-case start).

    A period right after a known abbreviation or a single letter (initials) is not a boundary;
    a period standing alone (tokenized text such as WikiText's "word .") always is.

    Example:
        >>> split_sentences("Dr. Who left. It rained ! Then J. R. R. Tolkien wrote.")
        ['Dr. Who left.', 'It rained !', 'Then J. R. R. Tolkien wrote.']
    """
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        # The last word only: a bounded window keeps long runs of initials linear.
        before = text[max(start, match.start() - LAST_WORD_WINDOW):match.start()]
        last = _LAST_WORD.search(before)
        word = last.group(1).lower().rstrip(".") if last else ""
        attached = bool(before) and not before[-1].isspace()   # "Dr." but not "Dr ."
        if attached and match.group(1).startswith(".") and (
            word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())
        ):
            continue
        sentence = text[start:match.end(1)].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def iter_documents(
    files: list[Path],
    document_pattern: str | None = None,
    skip_pattern: str | None = None,
    text_column: str = "sentence",
) -> Iterator[list[str]]:
    """Yield each document as a list of sentences, streaming through `files` in order.

    Args:
        files: text files; each file also ends a document (each row of a TSV file is one).
        document_pattern: regex of lines that start a new document (the line itself is dropped);
            None: blank lines separate documents.
        skip_pattern: regex of lines to drop (e.g. WikiText's `= = Section = =` headings).
        text_column: the column read from TSV files.
    """
    heading = re.compile(document_pattern) if document_pattern else None
    skip = re.compile(skip_pattern) if skip_pattern else None
    for path in files:
        if path.suffix == ".tsv":
            yield from filter(None, map(split_sentences, read_lines(path, text_column)))
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
