"""Token classification data: the CoNLL and JSONL readers, tag schemes and tag sets."""

import inspect
import json
import logging
import random
import re
import time

import pytest
from conftest import shared_data

from app.data.tagged import (
    SCHEMES,
    TaggedSentence,
    check_iob2,
    check_known_tags,
    entity_types,
    iter_sentences,
    read_tagged,
    tag_vocabulary,
    to_iob2,
)
from app.errors import ConfigError, DataError


def write(path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def where(path, line: int | None = None) -> str:
    """The regex of an error's `file:line:` start."""
    return re.escape(f"{path}:{line}:" if line is not None else f"{path}:")


def jsonl(path, *rows):
    return write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def conll(path, *sentences, end="\n"):
    """A CoNLL file of (token, tag) sentences, a blank line after each."""
    return write(path, "".join("".join(f"{t}\t{g}{end}" for t, g in s) + end for s in sentences))


def sentences_of(*tag_lists) -> list[TaggedSentence]:
    return [TaggedSentence(tokens=tuple(f"w{i}" for i in range(len(tags))), tags=tuple(tags),
                           line=1 + 10 * n) for n, tags in enumerate(tag_lists)]


# === CoNLL ===


def test_conll_reads_tabs_spaces_blank_runs_and_a_missing_last_blank_line(tmp_path):
    path = write(tmp_path / "a.conll",
                 "\n\nEU\tB-ORG\nrejects\tO\n\n\n\nPeter   B-PER\n  Blackburn I-PER  \n"
                 "\nNew York\tB-LOC")
    got = list(iter_sentences(path, "conll"))
    assert got == [
        TaggedSentence(("EU", "rejects"), ("B-ORG", "O"), 3),
        TaggedSentence(("Peter", "Blackburn"), ("B-PER", "I-PER"), 8),
        TaggedSentence(("New York",), ("B-LOC",), 11),  # with a tab, a column may hold spaces
    ]
    assert got[1].token_line(1) == 9


def test_conll_crlf_and_bom(tmp_path):
    path = write(tmp_path / "a.conll", "\ufeff北\tB-LOC\r\n京\tI-LOC\r\n\r\n好\tO\r\n".encode())
    got = list(iter_sentences(path, "conll"))
    assert [(s.tokens, s.tags, s.line) for s in got] == [
        (("北", "京"), ("B-LOC", "I-LOC"), 1), (("好",), ("O",), 4)]


def test_conll_docstart_lines_are_skipped_and_make_no_empty_sentence(tmp_path):
    path = write(tmp_path / "a.conll", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n"
                 "rejects VBZ B-VP O\n\n-DOCSTART- -X- -X- O\n\nGerman JJ B-NP B-MISC\n")
    got = list(iter_sentences(path, "conll"))
    assert [(s.tokens, s.tags, s.line) for s in got] == [
        (("EU", "rejects"), ("B-ORG", "O"), 3), (("German",), ("B-MISC",), 8)]
    pos = list(iter_sentences(path, "conll", token_column=0, tag_column=1))
    assert pos[0].tags == ("NNP", "VBZ")
    chunks = list(iter_sentences(path, "conll", token_column=-4, tag_column=-2))
    assert chunks[0].tokens == ("EU", "rejects") and chunks[0].tags == ("B-NP", "B-VP")


def test_conll_without_tags_reads_one_column(tmp_path):
    path = write(tmp_path / "a.conll", "EU\nrejects\n\nPeter\n")
    got = list(iter_sentences(path, "conll", with_tags=False))
    assert got == [TaggedSentence(("EU", "rejects"), None, 1), TaggedSentence(("Peter",), None, 4)]


def test_conll_too_few_columns(tmp_path):
    path = write(tmp_path / "a.conll", "EU\tB-ORG\nrejects\n")
    with pytest.raises(DataError, match=where(path, 2) + r" 1 column; expected at least 2 for "
                       r"token_column=0, tag_column=-1"):
        list(iter_sentences(path, "conll"))
    path = write(tmp_path / "b.conll", "EU\tNNP\tB-ORG\n")
    with pytest.raises(DataError, match=where(path, 1) + r" 3 columns; expected at least 5 "
                       r"for token_column=3, tag_column=-1"):
        list(iter_sentences(path, "conll", token_column=3))


def test_conll_columns_that_meet_on_one_line(tmp_path):
    # token_column=1 and tag_column=-2 are different columns in 2 columns, the same in 3.
    path = write(tmp_path / "a.conll", "x\tEU\nx\tEU\tB-ORG\n")
    with pytest.raises(DataError, match=where(path, 2) + r" 3 columns, in which "
                       r"token_column=1, tag_column=-2 name the same column; expected the "
                       r"token and the tag in different columns"):
        list(iter_sentences(path, "conll", token_column=1, tag_column=-2))
    with pytest.raises(ConfigError, match="name the same column"):
        iter_sentences(path, "conll", token_column=1, tag_column=1)


def test_conll_empty_token(tmp_path):
    path = write(tmp_path / "a.conll", "EU\tB-ORG\n\tO\n")
    with pytest.raises(DataError, match=where(path, 2) + " empty token in column 0"):
        list(iter_sentences(path, "conll"))


def test_conll_not_utf8(tmp_path):
    path = write(tmp_path / "a.conll", b"EU\tB-ORG\n\ncaf\xe9\tO\n")
    with pytest.raises(DataError, match=where(path, 3) + " bytes that are not UTF-8"):
        list(iter_sentences(path, "conll"))


def test_files_with_no_sentence(tmp_path):
    for name, text in (("empty", ""), ("blank", "\n \n\n"), ("docstart", "-DOCSTART- O\n\n")):
        path = write(tmp_path / f"{name}.conll", text)
        with pytest.raises(DataError, match=where(path) + " no sentences; expected one token "
                           "per line"):
            list(iter_sentences(path, "conll"))
    path = write(tmp_path / "empty.jsonl", "\n\n")
    with pytest.raises(DataError, match=where(path) + " no sentences; expected one JSON object"):
        list(iter_sentences(path, "jsonl"))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="Data file does not exist: .*nope.conll"):
        iter_sentences(tmp_path / "nope.conll", "conll")
    with pytest.raises(ConfigError, match=r"data.format.*Received: 'tsv'"):
        iter_sentences(tmp_path / "nope.conll", "tsv")


def test_jsonl_read_as_conll(tmp_path):
    path = jsonl(tmp_path / "a.conll", {"tokens": ["EU"], "tags": ["B-ORG"]})
    with pytest.raises(DataError, match=where(path, 1) + " .*looks like JSONL; expected "
                       "data.format=jsonl"):
        list(iter_sentences(path, "conll"))
    # A brace as a token is no JSON object.
    path = write(tmp_path / "b.conll", "{\tO\nx\tO\n}\tO\n")
    assert next(iter_sentences(path, "conll")).tokens == ("{", "x", "}")


# === JSONL ===


def test_jsonl_reads_tokens_and_tags(tmp_path):
    path = write(tmp_path / "a.jsonl",
                 '\ufeff{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"], "id": 1}\r\n\n'
                 '{"tokens": ["a b"], "tags": ["O"]}\n')
    got = list(iter_sentences(path, "jsonl"))
    assert got == [TaggedSentence(("EU", "rejects"), ("B-ORG", "O"), 1),
                   TaggedSentence(("a b",), ("O",), 3)]
    assert got[0].token_line(1) == 1  # JSONL: the sentence's line
    path = jsonl(tmp_path / "b.jsonl", {"words": ["北京"], "labels": ["S-LOC"]})
    got = list(iter_sentences(path, "jsonl", tokens_field="words", tags_field="labels"))
    assert got == [TaggedSentence(("北京",), ("S-LOC",), 1)]
    got = list(iter_sentences(path, "jsonl", tokens_field="words", with_tags=False))
    assert got == [TaggedSentence(("北京",), None, 1)]


@pytest.mark.parametrize(("line", "message"), [
    ('{"tokens": ["a", "b"]', r"not valid JSON: Expecting ',' delimiter$"),
    ("EU\tB-ORG", r"not valid JSON: .*; the line looks like CoNLL .*expected data.format=conll"),
    ("EU B-ORG", r"not valid JSON: .*; the line looks like CoNLL"),
    ('["EU"]', r"expected a JSON object, found list"),
    ('{"tokens": ["EU"]}', r"missing field 'tags'; found \['tokens'\]"),
    ('{"tokens": "EU", "tags": ["O"]}', r"field 'tokens' is str; expected a list of strings"),
    ('{"tokens": ["EU", 3], "tags": ["O", "O"]}',
     r"field 'tokens', item 1 is int; expected a list of strings"),
    ('{"tokens": ["EU"], "tags": [null]}',
     r"field 'tags', item 0 is NoneType; expected a list of strings"),
    ('{"tokens": ["a", "b", "c"], "tags": ["O", "O"]}', r"3 tokens but 2 tags; expected one tag "
     r"per token in field 'tags'"),
    ('{"tokens": [], "tags": []}', r"empty sentence: field 'tokens' is an empty list"),
    ('{"tokens": ["a", ""], "tags": ["O", "O"]}', r"token 1 is empty"),
    ('{"tokens": ["\\ud800"], "tags": ["O"]}', r"field 'tokens', item 0 holds a lone surrogate"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "a.jsonl", '{"tokens": ["ok"], "tags": ["O"]}\n\n' + line + "\n")
    with pytest.raises(DataError, match=where(path, 3) + " " + message):
        list(iter_sentences(path, "jsonl"))


def test_jsonl_not_utf8(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"tokens": ["ok"], "tags": ["O"]}\n{"tokens": ["\xff"]}\n')
    with pytest.raises(DataError, match=where(path, 2) + " bytes that are not UTF-8"):
        list(iter_sentences(path, "jsonl"))


# === Streaming ===


@pytest.mark.parametrize("fmt", ["conll", "jsonl"])
def test_reading_streams_and_fails_late(tmp_path, fmt):
    good = [[("w", "O")]] * 50
    if fmt == "conll":
        path = write(tmp_path / "a.conll",
                     "".join("w\tO\n\n" for _ in good) + "w\tO\nlate\n")
        bad_line = 102
    else:
        path = jsonl(tmp_path / "a.jsonl", *[{"tokens": ["w"], "tags": ["O"]}] * 50,
                     {"tokens": ["late"]})
        bad_line = 51
    sentences = iter_sentences(path, fmt)
    assert inspect.isgenerator(sentences)
    read = []
    with pytest.raises(DataError, match=where(path, bad_line)):
        for sentence in sentences:
            read.append(sentence)
    assert len(read) == 50
    converted = to_iob2(iter_sentences(path, fmt), "iob1", path)
    assert inspect.isgenerator(converted)
    assert next(converted).tags == ("O",)


# === Tag schemes ===


def test_iob1_to_iob2():
    given = sentences_of(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG", "O"],
                         ["O", "B-MISC", "I-MISC", "I-PER", "B-PER"])
    got = [s.tags for s in to_iob2(given, "iob1", "f")]
    assert got == [("B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG", "O"),
                   ("O", "B-MISC", "I-MISC", "B-PER", "B-PER")]


def test_bioes_and_bmes_to_iob2():
    bioes = sentences_of(["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "B-ORG", "E-ORG", "S-ORG"])
    assert [s.tags for s in to_iob2(bioes, "bioes", "f")] == [
        ("B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "B-ORG", "I-ORG", "B-ORG")]
    bmes = sentences_of(["B-W", "M-W", "E-W", "S-W", "B-W", "E-W", "O"])
    assert [s.tags for s in to_iob2(bmes, "bmes", "f")] == [
        ("B-W", "I-W", "I-W", "B-W", "B-W", "I-W", "O")]
    iob2 = sentences_of(["B-PER", "I-PER", "O", "I-LOC"])
    assert list(to_iob2(iob2, "iob2", "f")) == iob2  # kept, even the I- start


def test_conversion_keeps_tokens_lines_and_untagged_sentences(tmp_path):
    path = conll(tmp_path / "a.conll", [("a", "S-X"), ("b", "O")])
    [sentence] = to_iob2(iter_sentences(path, "conll"), "bioes", path)
    assert sentence == TaggedSentence(("a", "b"), ("B-X", "O"), 1)
    assert sentence.token_line(1) == 2
    untagged = TaggedSentence(("a",), None, 3)
    assert list(to_iob2([untagged], "bmes", path)) == [untagged]


def iob2_to_bioes(tags):
    """IOB2 -> BIOES: a one-token entity is S-, the last token of a longer one E-."""
    out = []
    for i, tag in enumerate(tags):
        following = tags[i + 1] if i + 1 < len(tags) else "O"
        ends = following != f"I-{tag[2:]}"
        if tag.startswith("B-"):
            out.append(("S-" if ends else "B-") + tag[2:])
        elif tag.startswith("I-"):
            out.append(("E-" if ends else "I-") + tag[2:])
        else:
            out.append(tag)
    return out


def random_iob2(rng: random.Random, length: int) -> list[str]:
    tags, current = [], None
    for _ in range(length):
        choice = rng.random()
        if current and choice < 0.4:
            tags.append(f"I-{current}")
        elif choice < 0.7:
            current = rng.choice(["PER", "LOC", "ORG-X"])
            tags.append(f"B-{current}")
        else:
            current = None
            tags.append("O")
    return tags


def test_bioes_round_trip():
    rng = random.Random(0)
    iob2 = sentences_of(*(random_iob2(rng, rng.randint(1, 30)) for _ in range(300)))
    bioes = [TaggedSentence(s.tokens, tuple(iob2_to_bioes(s.tags)), s.line) for s in iob2]
    assert any("E-ORG-X" in s.tags for s in bioes) and any("S-PER" in s.tags for s in bioes)
    assert list(to_iob2(bioes, "bioes", "f")) == iob2
    bmes = [TaggedSentence(s.tokens, tuple(t.replace("I-", "M-") for t in s.tags), s.line)
            for s in bioes]
    assert list(to_iob2(bmes, "bmes", "f")) == iob2
    # IOB1 writes B- only where an entity follows one of the same type.
    iob1 = [TaggedSentence(s.tokens, tuple(
        t if t.startswith("B-") and i and s.tags[i - 1][2:] == t[2:] else
        t.replace("B-", "I-") for i, t in enumerate(s.tags)), s.line) for s in iob2]
    assert list(to_iob2(iob1, "iob1", "f")) == iob2


@pytest.mark.parametrize(("scheme", "tag", "message"), [
    ("iob2", "E-PER", r"tag 'E-PER' is not an iob2 tag; expected O or B-/I-<type> "
                      r"\(data.tag_scheme=iob2\); E- tags belong to bioes, bmes"),
    ("iob1", "S-PER", r"tag 'S-PER' is not an iob1 tag; expected O or B-/I-<type>"),
    ("bioes", "M-W", r"tag 'M-W' is not a bioes tag; expected O or B-/I-/E-/S-<type> "
                     r"\(data.tag_scheme=bioes\); M- tags belong to bmes"),
    ("bmes", "I-W", r"tag 'I-W' is not a bmes tag; expected O or B-/M-/E-/S-<type>"),
    ("bmes", "B", r"tag 'B' is not a bmes tag; .*; write B-W style tags"),
    ("bioes", "S", r"tag 'S' is not a bioes tag; .*; write B-W style tags"),
    ("iob2", "B-", r"tag 'B-' is not an iob2 tag"),
    ("iob2", "per", r"tag 'per' is not an iob2 tag"),
    ("iob2", "", r"tag '' is not an iob2 tag"),
])
def test_tags_outside_the_scheme(tmp_path, scheme, tag, message):
    path = write(tmp_path / "a.conll", f"a\tO\n\nb\tO\nc\t{tag}\n")
    with pytest.raises(DataError, match=where(path, 4) + " " + message):
        list(to_iob2(iter_sentences(path, "conll"), scheme, path))
    path = jsonl(tmp_path / "a.jsonl", {"tokens": ["a"], "tags": ["O"]},
                 {"tokens": ["b", "c"], "tags": ["O", tag]})
    with pytest.raises(DataError, match=where(path, 2) + " " + message):
        list(to_iob2(iter_sentences(path, "jsonl"), scheme, path))


def test_unknown_scheme():
    assert SCHEMES == ("iob2", "iob1", "bioes", "bmes")
    with pytest.raises(ConfigError, match=r"data.tag_scheme.*Received: 'bilou'"):
        to_iob2([], "bilou", "f")


def test_i_tags_that_start_an_entity_are_counted_and_kept(tmp_path):
    path = conll(tmp_path / "a.conll",
                 [("a", "O"), ("b", "B-PER"), ("c", "I-PER")],
                 [("d", "O"), ("e", "I-PER"), ("f", "I-ORG")],  # line 6: 1 sentence
                 [("g", "I-ORG")],
                 [("h", "B-LOC"), ("i", "I-PER")])
    sentences, warning = check_iob2(iter_sentences(path, "conll"), path)
    assert len(sentences) == 4 and sentences[1].tags == ("O", "I-PER", "I-ORG")
    assert warning == (f"{path}: 3 sentences have an I- tag that starts an entity (first at "
                       f"line 6: I-PER); kept as is: seqeval's strict IOB2 scoring does not "
                       f"count them as entities")
    assert check_iob2(sentences_of(["B-X", "I-X", "O"]), "f") == (
        sentences_of(["B-X", "I-X", "O"]), None)
    _, one = check_iob2(sentences_of(["I-X"]), "f")
    assert one.startswith("f: 1 sentence has an I- tag")


def test_read_tagged_converts_and_warns_once(tmp_path, caplog):
    path = conll(tmp_path / "a.conll", [("a", "E-PER")], [("b", "S-PER"), ("c", "E-LOC")])
    with caplog.at_level(logging.WARNING, logger="app.data.tagged"):
        got = read_tagged(path, "conll", "bioes")
    assert [s.tags for s in got] == [("I-PER",), ("B-PER", "I-LOC")]
    assert len(caplog.records) == 1
    assert re.fullmatch(where(path) + r" 2 sentences have an I- tag that starts an entity "
                        r"\(first at line 1: I-PER\); kept as is: .*", caplog.messages[0])
    caplog.clear()
    path = jsonl(tmp_path / "a.jsonl", {"w": ["a", "b"], "t": ["I-X", "I-X"]})
    with caplog.at_level(logging.WARNING, logger="app.data.tagged"):
        got = read_tagged(path, "jsonl", "iob1", tokens_field="w", tags_field="t")
    assert got == [TaggedSentence(("a", "b"), ("B-X", "I-X"), 1)] and not caplog.records
    got = read_tagged(path, "jsonl", "bmes", tokens_field="w", with_tags=False)
    assert got == [TaggedSentence(("a", "b"), None, 1)]


# === Tag sets ===


def test_tag_vocabulary_and_entity_types():
    sentences = sentences_of(["I-PER", "B-PER", "O"], ["B-LOC", "I-ORG"], ["B-ORG", "I-LOC"])
    sentences.append(TaggedSentence(("x",), None, 99))
    tags = tag_vocabulary(sentences)
    assert tags == ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")
    assert tag_vocabulary(reversed(sentences)) == tags
    assert tag_vocabulary(sentences_of(["B-X"])) == ("B-X",)
    assert entity_types(tags) == ("LOC", "ORG", "PER")
    assert entity_types(["O", "NN", "B-A-B", "I-A-B"]) == ("A-B",)


def test_check_known_tags(tmp_path):
    train = ("O", "B-PER", "I-PER")
    check_known_tags(sentences_of(["O", "B-PER"], ["I-PER"]), train, "dev")
    path = conll(tmp_path / "dev.conll", [("a", "O"), ("b", "B-PER")],
                 [("c", "B-LOC"), ("d", "I-LOC"), ("e", "B-DATE")])
    with pytest.raises(DataError, match=where(path, 4) + r" 3 tags the training split does "
                       r"not have: B-DATE, B-LOC, I-LOC; expected tags of the training "
                       r"split: O, B-PER, I-PER$"):
        check_known_tags(iter_sentences(path, "conll"), train, path)
    many = sentences_of(["O"], [f"B-T{i:02d}" for i in range(12)])
    with pytest.raises(DataError, match=r"f:11: 12 tags .*: B-T00, .*, B-T09 and 2 more;"):
        check_known_tags(many, train, "f")


# === Real data (../shared/data) ===


@pytest.mark.parametrize(("name", "sentences", "tokens"),
                         [("msra-ner", 10_000, 423_878), ("conll2003", 14_041, 203_621)])
def test_real_data(caplog, name, sentences, tokens):
    path = shared_data(name) / "train.conll"
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="app.data.tagged"):
        got = read_tagged(path, "conll", "iob2")
    seconds = time.perf_counter() - start
    assert len(got) == sentences and sum(len(s.tokens) for s in got) == tokens
    assert seconds < 30
    tags = tag_vocabulary(got)
    check_known_tags(iter_sentences(shared_data(name) / "dev.conll", "conll"), tags, "dev")
    if name == "msra-ner":
        assert tags == ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER")
        [message] = caplog.messages
        assert re.match(where(path) + r" 4 sentences have an I- tag that starts an entity "
                        r"\(first at line \d+: I-PER\)", message)
    else:
        assert entity_types(tags) == ("LOC", "MISC", "ORG", "PER")
        assert not caplog.messages
