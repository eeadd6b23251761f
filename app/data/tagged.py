"""Token classification data (named entities, word segmentation, part of speech): the CoNLL and
JSONL readers and the tag-scheme checks.

- CoNLL: one token per line, its columns separated by a tab (then every tab separates, and a
  column may hold spaces) or by runs of spaces; a blank line ends a sentence; `-DOCSTART-`
  lines are skipped. `token_column`/`tag_column` pick the columns (negative: from the end).
- JSONL: one object per line, a list of token strings and a list of tag strings of the same
  length under `tokens_field` and `tags_field`.

Tags are converted to IOB2 (`B-X` starts every entity, `I-X` continues it, `O` outside) from the
scheme the file uses (`iob2`, `iob1`, `bioes`, `bmes`); an `I-X` that still starts an entity
after the conversion is kept and counted, and `read_tagged` logs one warning for all of them.
Files are streamed; every problem is a DataError naming `file:line` and what was expected.

Example:
    >>> sentences = read_tagged("msra-ner/train.conll", "conll", "iob2")
    >>> tags = tag_vocabulary(sentences)  # ('O', 'B-LOC', 'I-LOC', 'B-ORG', ...)
"""

import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("conll", "jsonl")
SCHEMES = ("iob2", "iob1", "bioes", "bmes")
DOCSTART = "-DOCSTART-"

# Per scheme: the prefix letters it allows and the IOB2 prefix each becomes.
_PREFIXES = {
    "iob2": {"B": "B", "I": "I"},
    "iob1": {"B": "B", "I": "I"},
    "bioes": {"B": "B", "I": "I", "E": "I", "S": "B"},
    "bmes": {"B": "B", "M": "I", "E": "I", "S": "B"},
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONLL_SHAPE = re.compile(r"[^\s{\[]\S* +\S+")  # a token, spaces, a tag (JSONL hint)
_SHOWN = 10  # unknown tags named in an error


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence: its tokens, their tags (None when read without tags) and its source line.

    `line` is the 1-based line of the first token (CoNLL) or of the JSON object (JSONL);
    `token_lines` is True when token i sits on line `line + i` (CoNLL). It takes no part in
    comparisons.
    """

    tokens: tuple[str, ...]
    tags: tuple[str, ...] | None
    line: int
    token_lines: bool = field(default=False, compare=False, repr=False)

    def token_line(self, index: int) -> int:
        """The source line of token `index`: its own line in CoNLL, the sentence's in JSONL."""
        return self.line + index if self.token_lines else self.line


# === Reading ===


def iter_sentences(path: str | Path, fmt: str, *, token_column: int = 0, tag_column: int = -1,
                   tokens_field: str = "tokens", tags_field: str = "tags",
                   with_tags: bool = True) -> Iterator[TaggedSentence]:
    """Stream the sentences of a CoNLL or JSONL file (see the module's docstring).

    The file is read lazily, one sentence in memory at a time; a problem raises DataError
    (`file:line: ...`) when the reading reaches it, after the sentences before it were yielded.

    Args:
        path: the file to read (UTF-8, a byte-order mark allowed).
        fmt: "conll" or "jsonl".
        token_column: CoNLL: the token's column (0-based; negative counts from the end).
        tag_column: CoNLL: the tag's column.
        tokens_field: JSONL: the field holding the list of tokens.
        tags_field: JSONL: the field holding the list of tags.
        with_tags: False to read tokens only (prediction input): `tags` is None, and a CoNLL
            file needs only the token column.

    Example:
        >>> for sentence in iter_sentences("conll2003/dev.conll", "conll"):
        ...     print(sentence.line, sentence.tokens, sentence.tags)
    """
    if fmt not in FORMATS:
        raise ConfigError(f"`data.format` for token classification must be one of "
                          f"{', '.join(FORMATS)}: Received: {fmt!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file does not exist: '{path}'")
    if fmt == "conll" and with_tags and token_column == tag_column:
        raise ConfigError(f"`data.token_column` and `data.tag_column` name the same column: "
                          f"Received: {token_column} and {tag_column}")
    if fmt == "conll":
        return _conll_sentences(path, token_column, tag_column if with_tags else None)
    return _jsonl_sentences(path, tokens_field, tags_field if with_tags else None)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The numbered lines of a UTF-8 file without their line ends, read lazily."""
    try:
        stream = path.open(encoding="utf-8-sig", newline="")
    except OSError as error:
        raise DataError(f"Cannot read data file '{path}': {error.strerror}") from error
    with stream:
        try:
            for number, raw in enumerate(stream, start=1):
                yield number, raw.rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise _not_utf8(path) from error
        except OSError as error:
            raise DataError(f"Cannot read data file '{path}': {error.strerror}") from error


def _not_utf8(path: Path) -> DataError:
    """The DataError for a file that is not UTF-8, naming the line of its first bad byte (a
    UTF-8 character never holds the byte of a line feed, so lines decode on their own)."""
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return DataError(f"{path}:{number}: bytes that are not UTF-8 (at byte "
                                 f"{error.start} of the line); expected a UTF-8 text file")
    return DataError(f"{path}: bytes that are not UTF-8; expected a UTF-8 text file")


def _fits(count: int, indices: tuple[int, ...]) -> bool:
    """Whether a line of `count` columns has every index, each naming a different column."""
    return (all(-count <= i < count for i in indices)
            and len({i % count for i in indices}) == len(indices))


def _conll_sentences(path: Path, token_column: int,
                     tag_column: int | None) -> Iterator[TaggedSentence]:
    indices = (token_column,) if tag_column is None else (token_column, tag_column)
    needed = next(n for n in range(1, max(abs(i) for i in indices) + 3) if _fits(n, indices))
    named = (f"token_column={token_column}" if tag_column is None
             else f"token_column={token_column}, tag_column={tag_column}")
    fits: dict[int, bool] = {}  # column count -> whether it fits
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    first = True
    count = 0
    for number, line in _lines(path):
        if not line.strip():
            if tokens:
                count += 1
                yield _sentence(tokens, tags, start, tag_column)
                tokens, tags = [], []
            continue
        if first:
            first = False
            if line.lstrip().startswith("{") and _json_object(line):
                raise DataError(f"{path}:{number}: the line is a JSON object: the file looks "
                                f"like JSONL; expected data.format=jsonl, or one token per "
                                f"line for data.format=conll")
        fields = (line.split("\t") if "\t" in line
                  else [part for part in line.split(" ") if part])
        fit = fits.get(len(fields))
        if fit is None:
            fit = fits[len(fields)] = _fits(len(fields), indices)
        if not fit:
            plural = "column" if len(fields) == 1 else "columns"
            if len(fields) >= needed:
                raise DataError(f"{path}:{number}: {len(fields)} {plural}, in which {named} name "
                                f"the same column; expected the token and the tag in different "
                                f"columns (separated by a tab or spaces)")
            raise DataError(f"{path}:{number}: {len(fields)} {plural}; expected at least "
                            f"{needed} for {named} (columns are separated by a tab or spaces)")
        token = fields[token_column].strip(" ")
        if token == DOCSTART:
            if tokens:
                count += 1
                yield _sentence(tokens, tags, start, tag_column)
                tokens, tags = [], []
            continue
        if not token.strip():
            raise DataError(f"{path}:{number}: empty token in column {token_column}; expected "
                            f"a non-blank token")
        if not tokens:
            start = number
        tokens.append(token)
        if tag_column is not None:
            tags.append(fields[tag_column].strip(" "))
    if tokens:
        count += 1
        yield _sentence(tokens, tags, start, tag_column)
    if count == 0:
        raise DataError(f"{path}: no sentences; expected one token per line and a blank line "
                        f"after each sentence (data.format=conll)")


def _sentence(tokens: list[str], tags: list[str], start: int,
              tag_column: int | None) -> TaggedSentence:
    return TaggedSentence(tokens=tuple(tokens), tags=None if tag_column is None else tuple(tags),
                          line=start, token_lines=True)


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _jsonl_sentences(path: Path, tokens_field: str,
                     tags_field: str | None) -> Iterator[TaggedSentence]:
    count = 0
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            hint = ""
            if "\t" in raw.strip() or _CONLL_SHAPE.fullmatch(raw.strip()):
                hint = ("; the line looks like CoNLL (token and tag columns): expected "
                        "data.format=conll")
            raise DataError(f"{path}:{number}: not valid JSON: {error.msg}{hint}") from error
        except (RecursionError, ValueError) as error:
            raise DataError(f"{path}:{number}: JSON nested too deeply or a number too long "
                            f"({type(error).__name__})") from error
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, found "
                            f"{type(row).__name__}")
        tokens = _strings(path, number, row, tokens_field, raw)
        if not tokens:
            raise DataError(f"{path}:{number}: empty sentence: field {tokens_field!r} is an "
                            f"empty list; expected at least one token")
        for index, token in enumerate(tokens):
            if not token.strip():
                raise DataError(f"{path}:{number}: token {index} is empty; expected non-blank "
                                f"tokens in field {tokens_field!r}")
        tags = None
        if tags_field is not None:
            tags = _strings(path, number, row, tags_field, raw)
            if len(tags) != len(tokens):
                raise DataError(f"{path}:{number}: {len(tokens)} tokens but {len(tags)} tags; "
                                f"expected one tag per token in field {tags_field!r}")
        count += 1
        yield TaggedSentence(tokens=tokens, tags=tags, line=number)
    if count == 0:
        fields = f"{tokens_field!r}" + ("" if tags_field is None else f" and {tags_field!r}")
        raise DataError(f"{path}: no sentences; expected one JSON object per line with lists "
                        f"{fields} (data.format=jsonl)")


def _strings(path: Path, number: int, row: dict, name: str, raw: str) -> tuple[str, ...]:
    """The list of strings under `name`, or a DataError."""
    if name not in row:
        raise DataError(f"{path}:{number}: missing field {name!r}; found {sorted(row)}")
    values = row[name]
    if not isinstance(values, list):
        raise DataError(f"{path}:{number}: field {name!r} is {type(values).__name__}; expected "
                        f"a list of strings")
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{path}:{number}: field {name!r}, item {index} is "
                            f"{type(value).__name__}; expected a list of strings")
        if "\\u" in raw and _SURROGATE.search(value):
            raise DataError(f"{path}:{number}: field {name!r}, item {index} holds a lone "
                            f"surrogate escape (\\ud800-\\udfff); expected valid Unicode text")
    return tuple(values)


# === Tag schemes ===


def _scheme_prefixes(scheme: str) -> dict[str, str]:
    if scheme not in _PREFIXES:
        raise ConfigError(f"`data.tag_scheme` must be one of {', '.join(SCHEMES)}: "
                          f"Received: {scheme!r}")
    return _PREFIXES[scheme]


def _bad_tag(path, line: int, tag: str, scheme: str) -> DataError:
    prefixes = _PREFIXES[scheme]
    article = "an" if scheme[0] in "aeiou" else "a"
    expected = "/".join(f"{prefix}-" for prefix in prefixes)
    message = (f"{path}:{line}: tag {tag!r} is not {article} {scheme} tag; expected O or "
               f"{expected}<type> (data.tag_scheme={scheme})")
    prefix, dash, kind = tag.partition("-")
    others = [name for name, letters in _PREFIXES.items() if prefix in letters]
    if tag in ("B", "I", "M", "E", "S"):
        message += "; write B-W style tags (a prefix, a dash and a type, e.g. B-W, E-W)"
    elif dash and kind and others and prefix not in prefixes:
        message += (f"; {prefix}- tags belong to {', '.join(others)}: set data.tag_scheme to "
                    f"the file's scheme")
    return DataError(message)


def to_iob2(sentences: Iterable[TaggedSentence], scheme: str,
            path: str | Path) -> Iterator[TaggedSentence]:
    """Convert the tags of sentences to IOB2, lazily, checking every tag against the scheme.

    iob1: an `I-X` that starts an entity (first tag, after `O` or after another type) becomes
    `B-X`. bioes: `S-X`, `B-X` -> `B-X`; `I-X`, `E-X` -> `I-X`. bmes: `S-X`, `B-X` -> `B-X`;
    `M-X`, `E-X` -> `I-X`. iob2: unchanged. Sentences without tags pass through.

    Args:
        sentences: as `iter_sentences` yields them.
        scheme: one of SCHEMES, the file's scheme (`data.tag_scheme`).
        path: the file, for error messages.

    Raises:
        DataError: `file:line: tag 'X' is not a <scheme> tag; ...` at the first tag that is not
            `O` or `<prefix>-<type>` with a prefix of the scheme (the token's line in CoNLL).
    """
    prefixes = _scheme_prefixes(scheme)
    return _converted(sentences, scheme, prefixes, path)


def _converted(sentences: Iterable[TaggedSentence], scheme: str, prefixes: dict[str, str],
               path) -> Iterator[TaggedSentence]:
    parsed: dict[str, tuple[str, str] | None] = {"O": None}  # tag -> (IOB2 prefix, type)
    for sentence in sentences:
        if sentence.tags is None:
            yield sentence
            continue
        tags = []
        previous = None  # the type of the tag before, None after O or at the start
        for index, tag in enumerate(sentence.tags):
            if tag not in parsed:
                prefix, _, kind = tag.partition("-")
                if prefix not in prefixes or not kind:
                    raise _bad_tag(path, sentence.token_line(index), tag, scheme)
                parsed[tag] = (prefixes[prefix], kind)
            value = parsed[tag]
            if value is None:
                tags.append("O")
                previous = None
                continue
            prefix, kind = value
            if scheme == "iob1" and prefix == "I" and previous != kind:
                prefix = "B"
            tags.append(f"{prefix}-{kind}")
            previous = kind
        if scheme == "iob2":
            yield sentence
        else:
            yield TaggedSentence(tokens=sentence.tokens, tags=tuple(tags), line=sentence.line,
                                 token_lines=sentence.token_lines)


def check_iob2(sentences: Iterable[TaggedSentence],
               path: str | Path) -> tuple[list[TaggedSentence], str | None]:
    """Count the sentences in which an `I-X` starts an entity (first tag, after `O` or after
    another type), keeping their tags as they are.

    Returns:
        The sentences, as a list, and the warning to log (None when there is none), e.g.
        "<path>: 4 sentences have an I- tag that starts an entity (first at line 123: I-PER);
        kept as is: seqeval's strict IOB2 scoring does not count them as entities".
    """
    kept = []
    flagged = 0
    first: tuple[int, str] | None = None
    for sentence in sentences:
        kept.append(sentence)
        if sentence.tags is None:
            continue
        previous = None
        for index, tag in enumerate(sentence.tags):
            if tag.startswith("I-") and tag[2:] != previous:
                flagged += 1
                if first is None:
                    first = (sentence.token_line(index), tag)
                break
            previous = tag[2:] if tag[:2] in ("B-", "I-") else None
    if first is None:
        return kept, None
    have = "sentence has" if flagged == 1 else "sentences have"
    return kept, (f"{path}: {flagged} {have} an I- tag that starts an entity (first at line "
                  f"{first[0]}: {first[1]}); kept as is: seqeval's strict IOB2 scoring does not "
                  f"count them as entities")


def read_tagged(path: str | Path, fmt: str, scheme: str, **columns) -> list[TaggedSentence]:
    """Read a tagged file, convert its tags to IOB2 and log one warning for the `I-` tags that
    start an entity (see `check_iob2`).

    Args:
        path: the file.
        fmt: "conll" or "jsonl".
        scheme: the file's tag scheme, one of SCHEMES.
        **columns: passed to `iter_sentences` (token_column, tag_column, tokens_field,
            tags_field, with_tags).

    Example:
        >>> train = read_tagged("msra-ner/train.conll", "conll", "iob2")
    """
    sentences, warning = check_iob2(to_iob2(iter_sentences(path, fmt, **columns), scheme, path),
                                    path)
    if warning:
        log.warning(warning)
    return sentences


# === Tag sets ===


def _tag_key(tag: str) -> tuple[str, int, str]:
    prefix, dash, kind = tag.partition("-")
    if not dash:
        return (tag, -1, "")
    return (kind, {"B": 0, "I": 1}.get(prefix, 2), prefix)


def tag_vocabulary(sentences: Iterable[TaggedSentence]) -> tuple[str, ...]:
    """The tags of the sentences: "O" first (when present), then the others sorted by type, B
    before I.

    Example:
        >>> tag_vocabulary(read_tagged("conll2003/train.conll", "conll", "iob2"))
        ('O', 'B-LOC', 'I-LOC', 'B-MISC', 'I-MISC', 'B-ORG', 'I-ORG', 'B-PER', 'I-PER')
    """
    seen: set[str] = set()
    for sentence in sentences:
        if sentence.tags is not None:
            seen.update(sentence.tags)
    head = ("O",) if "O" in seen else ()
    return head + tuple(sorted(seen - {"O"}, key=_tag_key))


def check_known_tags(sentences: Iterable[TaggedSentence], tags: Sequence[str],
                     path: str | Path) -> None:
    """Raise DataError when the sentences hold tags that are not in `tags` (the training
    split's), naming them (sorted, up to 10), the first one's `file:line` and the known tags."""
    known = set(tags)
    unknown: set[str] = set()
    first = None
    for sentence in sentences:
        if sentence.tags is None:
            continue
        for index, tag in enumerate(sentence.tags):
            if tag not in known:
                unknown.add(tag)
                if first is None:
                    first = sentence.token_line(index)
    if not unknown:
        return
    names = sorted(unknown, key=_tag_key)
    shown = ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more"
                                         if len(names) > _SHOWN else "")
    raise DataError(f"{path}:{first}: {len(names)} tag{'s' if len(names) > 1 else ''} the "
                    f"training split does not have: {shown}; expected tags of the training "
                    f"split: {', '.join(tags)}")


def entity_types(tags: Iterable[str]) -> tuple[str, ...]:
    """The sorted distinct types of the B-/I- tags, e.g. ('LOC', 'MISC', 'ORG', 'PER')."""
    return tuple(sorted({tag[2:] for tag in tags if tag[:2] in ("B-", "I-") and tag[2:]}))
