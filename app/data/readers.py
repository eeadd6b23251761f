"""Readers for labelled tables: GLUE-style TSV, quoted TSV, CSV and JSONL, with named columns.

Files are streamed: `iter_tables` yields the rows in chunks, so memory does not grow with the
file; `read_table` joins the chunks of a file that fits in memory. Every problem is reported as
a DataError that names the file, the line and what was expected.

TSV comes in two flavours, told apart by the header row:
- GLUE TSV (any header not starting with a double quote): tab-separated, no quoting at all, so a
  value holds any character but a tab or a line break, and quotes are ordinary characters.
- quoted TSV (the header's first name is in double quotes, as `app.data.writers` writes it):
  tab-separated with CSV quoting (a value holding a tab, line break or quote is in double quotes,
  its quotes doubled), so a value holds any text. `csv.reader(f, delimiter="\\t")` reads it too.
"""

import codecs
import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.errors import DataError

CHUNK_ROWS = 10_000
_BOM = codecs.BOM_UTF8
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Table:
    """Columns of one data file (or one chunk of it), as strings, with the source line of each
    row."""

    path: Path
    columns: dict[str, list[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.lines)


def _open(path: Path):
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError as error:
        raise DataError(f"Data file does not exist: '{path}'") from error
    except OSError as error:
        raise DataError(f"Cannot read data file '{path}': {error.strerror}") from error


def not_utf8(path: Path) -> DataError:
    """The DataError for a file that is not UTF-8: the first bad byte and its line, found by
    decoding the file again block by block (never the whole file in memory)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    with path.open("rb") as stream:
        while True:
            block = stream.read(1 << 20)
            pending = decoder.getstate()[0]  # an incomplete character, never a newline
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                data = pending + block
                start = offset - len(pending) + error.start
                line = newlines + data[: error.start].count(b"\n") + 1
                # As `bytes.decode("utf-8-sig")` counts: after the byte-order mark.
                start -= len(_BOM) if _starts_with_bom(path) else 0
                return DataError(f"{path}:{line}: bytes that are not UTF-8 (at byte {start}); "
                                 f"expected a UTF-8 text file")
            if not block:
                return DataError(f"{path}: bytes that are not UTF-8; expected a UTF-8 text file")
            offset += len(block)
            newlines += block.count(b"\n")


def _starts_with_bom(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(len(_BOM)) == _BOM


def _quoted_tsv(path: Path) -> bool:
    """Whether a TSV file is quoted TSV: its header row starts with a double quote."""
    try:
        with path.open("rb") as stream:
            head = stream.read(len(_BOM) + 1)
    except OSError:
        return False  # `_open` reports it
    return head.removeprefix(_BOM).startswith(b'"')


def _delimited_rows(path: Path, stream, names: list[str], fmt: str) -> Iterator[tuple[int, dict]]:
    if fmt == "csv":
        dialect = {"delimiter": ",", "quoting": csv.QUOTE_MINIMAL}
    elif _quoted_tsv(path):
        dialect = {"delimiter": "\t", "quoting": csv.QUOTE_MINIMAL}
    else:
        dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    reader = csv.reader(stream, **dialect)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; expected a header row and data rows")
        _check_header(path, header, names)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: expected {len(header)} fields "
                    f"({', '.join(header)}), found {len(row)}"
                )
            yield reader.line_num, dict(zip(header, row, strict=True))
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: malformed row: {error}") from error


def _check_header(path: Path, header: list[str], names: list[str]) -> None:
    missing = [name for name in names if name not in header]
    if missing:
        raise DataError(
            f"{path}:1: column {missing[0]!r} not found; the header has {header}. "
            f"Set the `data.*_column` keys to the file's column names"
        )


def _jsonl_rows(path: Path, stream, names: list[str]) -> Iterator[tuple[int, dict]]:
    # A text stream with newline="" splits at \n, \r and \r\n only: str.splitlines() also
    # splits at U+2028, U+0085, ... which may stand unescaped inside a JSON string; a raw CR or
    # LF never can.
    for line, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{line}: not valid JSON: {error.msg}") from error
        except (RecursionError, ValueError) as error:
            raise DataError(f"{path}:{line}: JSON nested too deeply or a number too long "
                            f"({type(error).__name__})") from error
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line}: expected a JSON object, found {type(row).__name__}")
        missing = [name for name in names if row.get(name) is None]
        if missing:
            raise DataError(f"{path}:{line}: missing field {missing[0]!r}; found {sorted(row)}")
        values = {name: _json_value(path, line, name, row[name]) for name in names}
        if _SURROGATE_ESCAPE.search(raw):  # an escaped surrogate: fine in pairs, not alone
            for name, value in values.items():
                if any(_SURROGATE.search(item) for item in
                       (value if isinstance(value, list) else [value])):
                    raise DataError(f"{path}:{line}: field {name!r} holds a lone surrogate "
                                    f"escape (\\ud800-\\udfff); expected valid Unicode text")
        yield line, values


def _json_value(path: Path, line: int, name: str, value) -> str | list[str]:
    """A JSONL field as text, or a list of strings as it is (a multi-label row's labels)."""
    if not isinstance(value, list):
        return str(value)
    if not all(isinstance(item, str) for item in value):
        raise DataError(f"{path}:{line}: field {name!r} holds a list with items that are not "
                        f"strings; expected text or a list of strings")
    return value


def iter_tables(path: str | Path, fmt: str, names: list[str],
                chunk_rows: int = CHUNK_ROWS) -> Iterator[Table]:
    """Read the named columns of a TSV, CSV or JSONL file, `chunk_rows` rows at a time.

    The file is streamed: memory holds one chunk, whatever the file's size. A problem anywhere
    raises DataError (`file:line: ...`) when the reading reaches it, so chunks before it have
    been yielded already.

    Args:
        path: the file to read.
        fmt: "tsv" (GLUE or quoted TSV, see the module's docstring), "csv" (RFC 4180) or
            "jsonl".
        names: the columns to return; each must exist, non-blank, in every row (JSONL: a
            value may be a list of strings, kept as a list).
        chunk_rows: rows per yielded Table.

    Example:
        >>> for chunk in iter_tables("sst2/train.tsv", "tsv", ["sentence", "label"]):
        ...     print(len(chunk), chunk.lines[0])
    """
    path = Path(path)
    stream = _open(path)
    rows = (_jsonl_rows(path, stream, names) if fmt == "jsonl"
            else _delimited_rows(path, stream, names, fmt))
    lines: list[int] = []
    columns: dict[str, list[str]] = {name: [] for name in names}
    total = 0
    with stream:
        try:
            for line, row in rows:
                for name in names:
                    value = row[name]
                    if not value or isinstance(value, str) and value.strip() == "":
                        raise DataError(f"{path}:{line}: empty value in column {name!r}")
                    columns[name].append(row[name])
                lines.append(line)
                if len(lines) == chunk_rows:
                    total += len(lines)
                    yield Table(path=path, columns=columns, lines=lines)
                    lines, columns = [], {name: [] for name in names}
        except UnicodeDecodeError as error:
            raise not_utf8(path) from error
        except OSError as error:
            raise DataError(f"Cannot read data file '{path}': {error.strerror}") from error
    if lines:
        yield Table(path=path, columns=columns, lines=lines)
    elif total == 0:
        raise DataError(f"{path}: no data rows; expected at least one example")


def read_table(path: str | Path, fmt: str, names: list[str]) -> Table:
    """Read the named columns of a TSV, CSV or JSONL file, all rows at once.

    TSV follows GLUE (tab-separated, a header row, no quoting) unless the header's first name is
    in double quotes (quoted TSV, as `app.data.writers` writes). CSV follows RFC 4180.

    Args:
        path: the file to read.
        fmt: "tsv", "csv" or "jsonl".
        names: the columns to return; each must exist in every row.

    Example:
        >>> table = read_table("sst2/dev.tsv", "tsv", ["sentence", "label"])
    """
    chunks = list(iter_tables(path, fmt, names))
    if len(chunks) == 1:
        return chunks[0]
    return Table(
        path=Path(path),
        columns={name: [v for chunk in chunks for v in chunk.columns[name]] for name in names},
        lines=[line for chunk in chunks for line in chunk.lines],
    )


def count_lines(path: str | Path) -> int:
    """Line breaks in a file (the larger of its \\n and \\r counts, plus an unterminated last
    line), read in 1 MiB blocks: a cheap upper bound of its rows, for progress bars."""
    newlines = returns = 0
    last = b"\n"
    with Path(path).open("rb") as stream:
        while block := stream.read(1 << 20):
            newlines += block.count(b"\n")
            returns += block.count(b"\r")
            last = block[-1:]
    return max(newlines, returns) + (last not in (b"\n", b"\r"))
