"""Readers for labelled tables: GLUE-style TSV, CSV and JSONL, with named columns.

Every problem is reported as a DataError that names the file, the line and what was expected.
"""

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from app.errors import DataError


@dataclass(frozen=True)
class Table:
    """Columns of one data file, as strings, with the source line of each row."""

    path: Path
    columns: dict[str, list[str]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.lines)


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise DataError(f"Data file does not exist: '{path}'") from error
    except OSError as error:
        raise DataError(f"Cannot read data file '{path}': {error.strerror}") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: bytes that are not UTF-8 (at byte {error.start}); "
            f"expected a UTF-8 text file"
        ) from error


def _read_delimited(path: Path, text: str, names: list[str], delimiter: str, quoting: int):
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows = []
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
            rows.append((reader.line_num, dict(zip(header, row, strict=True))))
    except csv.Error as error:
        raise DataError(f"{path}:{reader.line_num}: malformed row: {error}") from error
    return rows


def _check_header(path: Path, header: list[str], names: list[str]) -> None:
    missing = [name for name in names if name not in header]
    if missing:
        raise DataError(
            f"{path}:1: column {missing[0]!r} not found; the header has {header}. "
            f"Set the `data.*_column` keys to the file's column names"
        )


def _read_jsonl(path: Path, text: str, names: list[str]):
    rows = []
    # Split at \n and \r only: str.splitlines() also splits at U+2028, U+0085, ... which may
    # stand unescaped inside a JSON string; a raw CR or LF never can.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for line, raw in enumerate(lines, start=1):
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
        rows.append((line, {name: str(row[name]) for name in names}))
    return rows


def read_table(path: str | Path, fmt: str, names: list[str]) -> Table:
    """Read the named columns of a TSV, CSV or JSONL file.

    TSV follows GLUE: tab-separated, a header row, no quoting. CSV follows RFC 4180.

    Args:
        path: the file to read.
        fmt: "tsv", "csv" or "jsonl".
        names: the columns to return; each must exist in every row.

    Example:
        >>> table = read_table("sst2/dev.tsv", "tsv", ["sentence", "label"])
    """
    path = Path(path)
    text = _decode(path)
    if fmt == "jsonl":
        rows = _read_jsonl(path, text, names)
    else:
        delimiter, quoting = ("\t", csv.QUOTE_NONE) if fmt == "tsv" else (",", csv.QUOTE_MINIMAL)
        rows = _read_delimited(path, text, names, delimiter, quoting)
    if not rows:
        raise DataError(f"{path}: no data rows; expected at least one example")
    for line, row in rows:
        for name in names:
            if row[name].strip() == "":
                raise DataError(f"{path}:{line}: empty value in column {name!r}")
    return Table(
        path=path,
        columns={name: [row[name] for _, row in rows] for name in names},
        lines=[line for line, _ in rows],
    )
