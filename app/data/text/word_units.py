"""Which tokens start a word, for whole-word (n-gram) masking, per tokenizer kind and script.

google-research/albert's create_pretraining_data.py (`_is_start_piece_sp`, `_is_start_piece_bert`):
- SentencePiece: a piece starts a word when it starts with "▁", is punctuation, or holds any
  character outside a-z ("for foreign characters, we always treat them as a whole piece"), so
  every Chinese piece is a word of its own while "▁un" "believ" "able" stay one English word.
- WordPiece: every piece but a `##` continuation starts a word (CJK characters are split out by
  the tokenizer, so each is a word).
Without the first rule, text without spaces has almost no "▁" pieces and a masker that waits
for them sees one huge word: on ChnSentiCorp it masked 2.9% of the tokens instead of 15%.

Chinese whole-word masking (`data.whole_word_segmenter=jieba`, as transformers'
`run_chinese_ref.py` + `DataCollatorForWholeWordMask`): a segmenter's words group the
characters, so 酒店 is masked whole. It only marks which tokens continue a word, in a flag bit
of the token id (`WHOLE_WORD_FLAG`) that the masker reads and removes: inputs and labels are
the tokenizer's ids, whatever the segmenter says.
"""

import logging
import re
import string

from app.errors import ConfigError

SENTENCEPIECE_WORD_START = "\u2581"
WORDPIECE_CONTINUATION = "##"
_LETTERS = frozenset(string.ascii_lowercase)
_PUNCTUATION = frozenset(string.punctuation) | {"€", "£"}
# Characters of scripts written without spaces between words (Han, kana, Hangul syllables) and
# their punctuation and full-width forms: a regex character-class body.
_CJK_RANGES = [(0x3000, 0x303F), (0x3040, 0x30FF), (0x3100, 0x312F), (0x3400, 0x4DBF),
               (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF),
               (0x20000, 0x2FA1F)]
CJK_CHARS = "".join(f"{chr(low)}-{chr(high)}" for low, high in _CJK_RANGES)




def words(text: str) -> list[str]:
    """The whitespace-separated words of `text`, every CJK character a word of its own.

    Example:
        >>> words("房间很好 nice view")
        ['房', '间', '很', '好', 'nice', 'view']
    """
    return [text[start:end] for start, end in word_spans(text)]


# A word: a CJK character, or a run of other non-space characters.
_WORD = re.compile(f"(?!\\s)[{CJK_CHARS}]|[^\\s{CJK_CHARS}]+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) character offsets of `words(text)` in `text`.

    Example:
        >>> word_spans("房间 nice")
        [(0, 1), (1, 2), (3, 7)]
    """
    return [match.span() for match in _WORD.finditer(text)]


WHOLE_WORD_FLAG = 1 << 30  # set on a token id that continues a segmenter's word
SEGMENTERS = ("jieba",)


def segmenter(name: str):
    """The word segmenter `name` (`text -> words`); a ConfigError when it is not installed."""
    if name not in SEGMENTERS:
        raise ConfigError(f"`data.whole_word_segmenter` must be one of {list(SEGMENTERS)} or "
                          f"null. Received: {name!r}")
    try:
        import jieba
    except ImportError as error:
        raise ConfigError("`data.whole_word_segmenter=jieba` needs the jieba package: "
                          "pip install 'albert-trainer[chinese]' (or pip install jieba)") from error
    jieba.setLogLevel(logging.WARNING)
    return lambda text: list(jieba.cut(text, HMM=True))


def mark_word_continuations(sentence: str, ids: list[int], pieces: list[str],
                            segment) -> list[int]:
    """`ids` with WHOLE_WORD_FLAG on each CJK token that continues a word of `segment(sentence)`.

    A token whose text (without "▁" or "##") is CJK is found in the sentence after the previous
    one; it continues a word when it does not start at a word's first character. Other tokens
    keep their own rule (they are never flagged).
    """
    starts, position = set(), 0
    for word in segment(sentence):
        starts.add(position)
        position += len(word)
    marked, cursor = [], 0
    for token, piece in zip(ids, pieces, strict=True):
        text = piece.removeprefix(SENTENCEPIECE_WORD_START).removeprefix(WORDPIECE_CONTINUATION)
        found = sentence.find(text, cursor) if text and all(map(is_cjk, text)) else -1
        if found >= 0:
            cursor = found + len(text)
            token |= WHOLE_WORD_FLAG if found not in starts else 0
        marked.append(token)
    return marked


def is_cjk(char: str) -> bool:
    """Whether `char` belongs to a script written without spaces (or its punctuation)."""
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def is_sentencepiece_word_start(piece: str) -> bool:
    """Google's `_is_start_piece_sp`: "▁"-initial, `<...>`, punctuation, or not plain a-z."""
    if piece.startswith((SENTENCEPIECE_WORD_START, "<")) or piece in _PUNCTUATION:
        return True
    return not all(c.lower() in _LETTERS or c in _PUNCTUATION for c in piece)


def is_wordpiece_word_start(piece: str) -> bool:
    """Google's `_is_start_piece_bert`: every piece but a `##` continuation."""
    return not piece.startswith(WORDPIECE_CONTINUATION)


def word_starts(vocabulary: list[str]) -> list[bool]:
    """For each id of `vocabulary`, whether its piece starts a word.

    The rule follows the vocabulary's kind: WordPiece when it holds `##` pieces or BERT's
    `[PAD]`/`[UNK]`, else SentencePiece.
    """
    wordpiece = "[UNK]" in vocabulary or any(
        p.startswith(WORDPIECE_CONTINUATION) and len(p) > 2 for p in vocabulary)
    rule = is_wordpiece_word_start if wordpiece else is_sentencepiece_word_start
    return [rule(piece) for piece in vocabulary]
