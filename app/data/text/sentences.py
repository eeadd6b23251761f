"""Sentence splitting for English prose and for text written without spaces (Chinese, Japanese).

One function, `split_sentences`, for every script. In order:
1. A newline is always a boundary.
2. The CJK rule: a run of `。！？；` (or of `!?;….` right after a CJK character) ends a
   sentence, with the closing quotes and brackets after it (`”’」』）》`); no space is needed.
3. The English rule: `.`/`!`/`?` (and closing quotes) then spaces and an upper-case letter or a
   digit or a CJK character; not after a known abbreviation or an initial; a period standing
   alone (tokenized text such as WikiText's "word .") always ends one.
4. A sentence longer than `max_chars` is cut at its last comma or space before the limit, or at
   the limit (reviews that run on with `，` would otherwise be one over-long "sentence").
"""

import re

from app.data.text.word_units import CJK_CHARS

# Abbreviations after which a period does not end a sentence (lower-cased, without the period).
_ABBREVIATIONS = (
    "mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e inc ltd co corp no nos fig figs vol "
    "jan feb mar apr jun jul aug sep sept oct nov dec gen col lt sgt capt rev u.s u.k approx "
    "ca lit cf al op ed eds"
)
ABBREVIATIONS = frozenset(_ABBREVIATIONS.split())
# A candidate English boundary: ., ! or ? (optionally followed by closing quotes/brackets),
# spaces, then something that can start a sentence.
_ENGLISH_BOUNDARY = re.compile(
    rf"""([.!?]+["')\]]*)\s+(?=(?:["'(\[“「]\s?)?[A-Z0-9{CJK_CHARS}])""")
CLOSERS = "”’」』）》〉】〕\"')\\]"
# A CJK boundary: a run with a full-width terminator, or a half-width one after a CJK character.
_CJK_BOUNDARY = re.compile(
    rf"(?:[!?;.…]*[。！？；．][。！？；．!?;…]*|(?<=[{CJK_CHARS}])(?:[!?;…]+|\.+(?!\d)))[{CLOSERS}]*")
MAX_SENTENCE_CHARS = 256
_CUT_AFTER = "，,、：:" + " "
LAST_WORD_WINDOW = 64
_LAST_WORD = re.compile(r"(\S+)\s*$")


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Split text of any script into sentences (see the module docstring for the rules).

    Args:
        text: a line, paragraph or document.
        max_chars: the longest sentence kept whole.

    Example:
        >>> split_sentences("Dr. Who left. It rained ! 房间很大。服务好！“下次还来。”好")
        ['Dr. Who left.', 'It rained !', '房间很大。', '服务好！', '“下次还来。”', '好']
    """
    sentences = []
    for line in text.splitlines():
        for piece in _split_cjk(line):
            for sentence in _split_english(piece):
                sentences.extend(_cut_long(sentence, max_chars))
    return sentences


def _split_cjk(text: str) -> list[str]:
    """Cut after CJK terminators (and their closing quotes); pieces stripped, none empty."""
    pieces, start = [], 0
    for match in _CJK_BOUNDARY.finditer(text):
        pieces.append(text[start:match.end()])
        start = match.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def _split_english(text: str) -> list[str]:
    """Cut English prose at `.`/`!`/`?` before an upper-case start (not after abbreviations)."""
    sentences, start = [], 0
    for match in _ENGLISH_BOUNDARY.finditer(text):
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


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    """`sentence` in pieces of at most `max_chars`, cut after a comma or space where there is one
    in the second half of the window, else at the limit."""
    pieces = []
    while len(sentence) > max_chars:
        window = sentence[:max_chars]
        cut = max(window.rfind(c) for c in _CUT_AFTER) + 1
        cut = cut if cut > max_chars // 2 else max_chars
        pieces.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    return [p for p in (*pieces, sentence) if p]
