"""Writers for tables: quoted TSV, CSV and JSONL that any text survives, written atomically.

Each format reads back with `app.data.readers` to the same strings, whatever they hold (quotes,
tabs, line breaks, carriage returns, backslashes, any Unicode):
- TSV is *quoted TSV*: tab-separated, a value holding a tab, \\n, \\r or `"` is in double quotes
  with its quotes doubled, and the header's first name is always quoted, which tells the readers
  to honour quotes (a GLUE TSV, whose header is never quoted, is read with no quoting at all).
  Python's `csv.reader(f, delimiter="\\t")` reads it as well.
- CSV follows RFC 4180 (quotes as above, with commas), lines end with \\n.
- JSONL: one JSON object per line, non-ASCII as is (U+2028 too: the readers split lines at \\n
  and \\r only).
- CoNLL (token classification output): a row is a sentence (`tokens`, `tags`), written as one
  `token<TAB>tag` line per token and a blank line after the sentence.

`atomic_table` writes to a temporary file in the target's folder and renames it over the
target only once every row is written: on any error the temporary file is removed and an
existing file at the target is left as it was.
"""

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.errors import DataError

FORMATS = ("tsv", "csv", "jsonl", "conll")
_NEEDS_QUOTES = {"tsv": ("\t", "\n", "\r", '"'), "csv": (",", "\n", "\r", '"')}


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class TableWriter:
    """Rows out to an open text stream in one of FORMATS.

    Args:
        stream: a text stream opened with `newline=""` and UTF-8.
        fmt: "tsv", "csv" or "jsonl".
        columns: the column names, in order (TSV/CSV header; JSONL rows are written as given).
        name: the file's name for error messages.
    """

    def __init__(self, stream, fmt: str, columns: Sequence[str], name: str = "output"):
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}. Received: {fmt!r}")
        self.stream, self.fmt, self.columns, self.name = stream, fmt, list(columns), name
        self.rows = 0
        if fmt in ("tsv", "csv"):
            self.delimiter = "\t" if fmt == "tsv" else ","
            self.specials = _NEEDS_QUOTES[fmt]
            self.limit = csv.field_size_limit()
            header = [self._field(c) for c in self.columns]
            if fmt == "tsv" and header and not header[0].startswith('"'):
                header[0] = _quote(header[0])  # the mark of quoted TSV
            with _os_errors(Path(name)):
                stream.write(self.delimiter.join(header) + "\n")

    def _field(self, value: Any) -> str:
        if not isinstance(value, str):
            return str(value)  # numbers: repr-exact (str(float) round-trips)
        if len(value) > self.limit:
            raise DataError(f"{self.name}: a value of {len(value)} characters is over the "
                            f"{self.fmt.upper()} field limit ({self.limit}) the readers accept; "
                            f"write .jsonl instead")
        if value == "" or any(c in value for c in self.specials):
            return _quote(value)
        return value

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write rows: mappings over `columns` (TSV/CSV), any JSON-able mappings (JSONL), or
        sentences with `tokens` and `tags` (CoNLL)."""
        if self.fmt == "jsonl":
            lines = [json.dumps(row, ensure_ascii=False) for row in rows]
        elif self.fmt == "conll":  # a row is a sentence: one `token<TAB>tag` line per token
            lines = ["".join(f"{token}\t{tag}\n" for token, tag in
                             zip(row["tokens"], row["tags"], strict=True)) for row in rows]
        else:
            field, columns, delimiter = self._field, self.columns, self.delimiter
            lines = [delimiter.join([field(row[c]) for c in columns]) for row in rows]
        if lines:
            with _os_errors(Path(self.name)):
                self.stream.write("\n".join(lines) + "\n")
            self.rows += len(lines)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _os_errors(path: Path) -> Iterator[None]:
    """OSError (no space, no permission, a file where a folder should be) as a DataError."""
    try:
        yield
    except OSError as error:
        raise DataError(f"Cannot write '{path}': {error.strerror or error}; nothing was "
                        f"written and any existing file there is unchanged") from error


@contextlib.contextmanager
def atomic_table(path: str | Path, fmt: str, columns: Sequence[str]) -> Iterator[TableWriter]:
    """A TableWriter whose file appears at `path` only when the block ends without an error.

    Args:
        path: the file to write; its folder is created if missing.
        fmt: "tsv", "csv" or "jsonl".
        columns: the column names.

    Raises:
        DataError: the folder or file cannot be written (no space, no permission, a file
            where a folder should be). On this or any error raised in the block, the temporary
            file is removed and `path` is untouched.

    Example:
        >>> with atomic_table("preds.tsv", "tsv", ["sentence", "label"]) as out:
        ...     out.write_rows([{"sentence": 'a "quoted"\\ttext', "label": "positive"}])
    """
    path = Path(path)
    with _os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    stream = os.fdopen(fd, "w", encoding="utf-8", newline="")
    try:
        yield TableWriter(stream, fmt, columns, name=str(path))
        with _os_errors(path):
            stream.flush()
            os.fsync(stream.fileno())
            stream.close()
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from others
            os.replace(temp, path)
        temp = None
    finally:
        with contextlib.suppress(OSError):
            stream.close()
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)
