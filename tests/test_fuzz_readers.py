"""Readers under fuzz: random bytes, quoting, long lines, line endings, BOMs and unicode.

Every outcome must be parsed rows or a DataError naming the file: never another exception,
never a hang (each call runs under an alarm).
"""

import contextlib
import csv
import gzip
import io
import json
import re
import signal
import string
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.data.pretraining import corpus
from app.data.readers import read_table
from app.errors import DataError

NAMES = ["sentence", "label"]
FORMATS = ("tsv", "csv", "jsonl")
SECONDS = 5  # far above any legitimate call below: reaching it means a hang
FUZZ = settings(max_examples=60, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Characters Python's str.splitlines() breaks lines at, besides \n and \r (see the xfail below).
SPLITLINES_EXTRA = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
TRICKY = ["\t", ",", '"', "'", "\n", "\r", "\r\n", "\ufeff", "{", "}", "[", "]", ":", "\\",
          "\x00", "\u2028", "\x85", "é", "日本", "😀", "\u200f", "sentence", "label", "1", " ",
          "null", "NaN", '{"sentence": "x", "label": 1}', '"a,b"', "\t\t", "\n\n"]


@contextlib.contextmanager
def no_hang(seconds: float = SECONDS):
    """Raise TimeoutError when the block runs longer than `seconds` (SIGALRM, main thread)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_or_clear_error(path: Path, fmt: str):
    """read_table's rows, or None after a DataError that names the file."""
    with no_hang():
        try:
            table = read_table(path, fmt, NAMES)
        except DataError as error:
            assert str(path) in str(error)
            assert "\n" not in str(error).strip()
            return None
    assert len(table) >= 1
    assert all(len(values) == len(table) for values in table.columns.values())
    assert all(v.strip() for values in table.columns.values() for v in values)
    return table


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(fmt=st.sampled_from(FORMATS), data=st.binary(max_size=3000))
def test_random_bytes(folder, fmt, data):
    path = folder / f"random.{fmt}"
    path.write_bytes(data)
    read_or_clear_error(path, fmt)


@FUZZ
@given(fmt=st.sampled_from(FORMATS), bom=st.booleans(), header=st.booleans(),
       pieces=st.lists(st.sampled_from(TRICKY) | st.text(max_size=8), max_size=80))
def test_random_quoting_line_endings_and_unicode(folder, fmt, bom, header, pieces):
    head = {"tsv": "sentence\tlabel\n", "csv": "sentence,label\r\n", "jsonl": ""}[fmt]
    text = ("\ufeff" if bom else "") + (head if header else "") + "".join(pieces)
    path = folder / f"tricky.{fmt}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    read_or_clear_error(path, fmt)


def cell(forbidden: str = ""):
    """A non-blank value of any unicode (no surrogates) without the `forbidden` characters."""
    return st.text(st.characters(exclude_categories=("Cs",), exclude_characters=forbidden),
                   min_size=1, max_size=40).filter(lambda v: v.strip() != "")


ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])


def write_rows(fmt: str, rows, endings: list[str], ensure_ascii: bool) -> str:
    """The file a user's tool would write for `rows`, each line with its own line ending."""
    if fmt == "jsonl":
        lines = [json.dumps({"sentence": s, "label": label}, ensure_ascii=ensure_ascii)
                 for s, label in rows]
    elif fmt == "tsv":
        lines = [f"{s}\t{label}" for s, label in [NAMES, *rows]]
    else:
        def line(values):
            out = io.StringIO()
            csv.writer(out, lineterminator="\r\n").writerow(values)  # quotes \r and \n
            return out.getvalue()[:-2]
        lines = [line(values) for values in [NAMES, *rows]]
    return "".join(line + ending for line, ending in zip(lines, endings, strict=False))


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(FORMATS), bom=st.booleans(),
       ensure_ascii=st.booleans())
def test_files_written_by_other_tools_round_trip(folder, data, fmt, bom, ensure_ascii):
    # TSV (GLUE) has no quoting: its values cannot hold tabs or line breaks. JSONL values
    # avoid the characters of the splitlines bug below.
    forbidden = {"tsv": "\t\r\n", "csv": "", "jsonl": SPLITLINES_EXTRA}[fmt]
    rows = data.draw(st.lists(st.tuples(cell(forbidden), cell(forbidden + "\r\n")),
                              min_size=1, max_size=12))
    endings = data.draw(st.lists(ENDINGS, min_size=len(rows) + 1, max_size=len(rows) + 1))
    if fmt == "csv":
        # A lone \r ends a CSV line only outside quotes; keep endings a CSV writer could emit.
        endings = ["\r\n" if e == "\r" else e for e in endings]
    path = folder / f"roundtrip.{fmt}"
    text = ("\ufeff" if bom else "") + write_rows(fmt, rows, endings, ensure_ascii)
    path.write_text(text, encoding="utf-8", newline="")
    table = read_or_clear_error(path, fmt)
    assert table is not None
    assert list(zip(table.columns["sentence"], table.columns["label"], strict=True)) == rows


@pytest.mark.parametrize("fmt", FORMATS)
def test_very_long_lines(folder, fmt):
    path = folder / f"long.{fmt}"
    short = {"tsv": "x\t1\n", "csv": "x,1\n", "jsonl": '{"sentence": "x", "label": 1}\n'}[fmt]
    head = {"tsv": "sentence\tlabel\n", "csv": "sentence,label\n", "jsonl": ""}[fmt]
    for length in (100_000, 5_000_000):
        sentence = ("word " * length)[:length].strip()
        long_row = {"tsv": f"{sentence}\t1\n", "csv": f"{sentence},1\n",
                    "jsonl": json.dumps({"sentence": sentence, "label": 1}) + "\n"}[fmt]
        path.write_text(head + short + long_row + short * 3, encoding="utf-8")
        table = read_or_clear_error(path, fmt)
        if table is None:  # csv's field limit (131072 characters): a DataError naming line 3
            with pytest.raises(DataError, match=r":3: .*field limit"):
                read_table(path, fmt, NAMES)
        else:
            assert table.columns["sentence"][1] == sentence and len(table) == 5


def test_many_short_lines_are_fast(folder):
    path = folder / "many.tsv"
    path.write_text("sentence\tlabel\n" + "a b c\t1\n" * 300_000, encoding="utf-8")
    assert len(read_or_clear_error(path, "tsv")) == 300_000


def clear_error(path: Path, fmt: str, message: str) -> DataError:
    """The one-line DataError read_table must raise for `path`: `<path>:<line>: <message>`."""
    with no_hang(), pytest.raises(DataError) as error:
        read_table(path, fmt, NAMES)
    assert re.fullmatch(f"{re.escape(str(path))}:{message}", str(error.value)), error.value
    return error.value


def test_deeply_nested_json_is_a_clear_error(folder):
    path = folder / "deep.jsonl"
    path.write_text('{"sentence": "x", "label": 1}\n'
                    '{"sentence": ' + "[" * 100_000 + "]" * 100_000 + ', "label": 1}\n')
    error = clear_error(path, "jsonl", r"2: JSON nested too deeply or a number too long "
                                       r"\(RecursionError\)")
    assert isinstance(error.__cause__, RecursionError)


def test_huge_json_integer_is_a_clear_error(folder):
    # Python refuses to parse an int of more than sys.get_int_max_str_digits() digits (4300
    # unless PYTHONINTMAXSTRDIGITS or sys.set_int_max_str_digits says otherwise): pin it.
    path = folder / "bigint.jsonl"
    path.write_text('{"sentence": "x", "label": 1}\n'
                    '{"sentence": "x", "label": ' + "9" * 5000 + "}\n")
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(4300)
    try:
        error = clear_error(path, "jsonl", r"2: JSON nested too deeply or a number too long "
                                           r"\(ValueError\)")
    finally:
        sys.set_int_max_str_digits(limit)
    assert "5000 digits" in str(error.__cause__)


@pytest.mark.parametrize("char", ["\u2028", "\x85"])  # json.dumps escapes \x0b, \x0c, \x1c-\x1e
def test_json_strings_may_hold_unicode_line_separators(folder, char):
    path = folder / "separators.jsonl"
    path.write_text(json.dumps({"sentence": f"a{char}b", "label": 1}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    table = read_or_clear_error(path, "jsonl")
    assert table is not None and table.columns["sentence"] == [f"a{char}b"]


# ---------------------------------------------------------------- raw text (pretraining corpus)

def documents_or_clear_error(path: Path, seconds: float = SECONDS):
    with no_hang(seconds):
        try:
            documents = list(corpus.iter_documents([path]))
        except DataError as error:
            assert str(path) in str(error)
            return None
    assert all(doc and all(isinstance(s, str) and s.strip() for s in doc) for doc in documents)
    return documents


@FUZZ
@given(data=st.binary(max_size=3000), gz=st.booleans())
def test_raw_text_random_bytes(folder, data, gz):
    path = folder / ("corpus.txt.gz" if gz else "corpus.txt")
    path.write_bytes(data)
    documents_or_clear_error(path)


@FUZZ
@given(pieces=st.lists(st.sampled_from(TRICKY + [". ", "! ", "? ", "Mr. ", "A. ", " = T = "])
                       | st.text(max_size=12), max_size=120),
       gz=st.booleans())
def test_raw_text_tricky_text(folder, pieces, gz):
    text = "".join(pieces).encode("utf-8", errors="surrogatepass")
    path = folder / ("tricky.txt.gz" if gz else "tricky.txt")
    path.write_bytes(gzip.compress(text) if gz else text)
    documents = documents_or_clear_error(path)
    assert documents is not None  # valid UTF-8 (or replaced), valid gzip: always readable


def test_raw_text_long_line_of_prose(folder):
    path = folder / "long.txt"
    words = (string.ascii_lowercase * 40_000)[:1_000_000]
    path.write_text(" ".join(words[i:i + 7] for i in range(0, len(words), 7)) + ".\n")
    assert len(documents_or_clear_error(path)) == 1


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_raw_text_corrupt_gzip_is_a_clear_error(folder, damage):
    data = bytearray(gzip.compress(b"Hello there. General Kenobi.\n\nSecond doc.\n" * 100))
    if damage == "corrupt":
        data[30:60] = bytes(range(30))
    else:
        del data[len(data) // 2:]
    path = folder / f"{damage}.txt.gz"
    path.write_bytes(bytes(data))
    # A gzip stream has no lines to name: the error names the file and what zlib/gzip found.
    with no_hang(), pytest.raises(DataError) as error:
        list(corpus.iter_documents([path]))
    assert str(error.value).startswith(f"Cannot read corpus file '{path}': ")
    assert "\n" not in str(error.value)
    reasons = {"corrupt": r"Error -3 while decompressing data|CRC check failed",
               "truncated": r"Compressed file ended before the end-of-stream marker"}
    assert re.search(reasons[damage], str(error.value)), error.value


def test_raw_text_long_run_of_initials_is_not_a_hang(folder):
    path = folder / "initials.txt"
    path.write_text("a. B " * 20_000 + "\n")  # 100 kB: seconds per MB would be fine, hours not
    documents_or_clear_error(path, seconds=2)
