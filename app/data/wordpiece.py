"""BERT's WordPiece (`vocab.txt`) as ALBERT's tokenizer, as Chinese ALBERT checkpoints ship it.

keras-hub's BertTokenizer (WordPieceTokenizer) falls short of transformers' BertTokenizerFast, the
reference for these checkpoints: it lower-cases with `tf_text.case_fold_utf8`, NFKC case folding,
which also turns full-width forms (，！？ＡＢＣ１) into ASCII; it splits words at control and format
characters and keeps U+FFFD and private-use characters, where BERT drops all of them (joining what
is around them); its CJK ranges are google-research/bert's, not those of the `tokenizers` library;
and it maps words over 100 *bytes* to [UNK] (BERT: over 100 characters).

AlbertWordPieceTokenizer runs BertTokenizerFast's steps (tokenizers' BertNormalizer,
BertPreTokenizer, WordPiece) in TensorFlow ops, so it runs in tf.data, tf.function and a
SavedModel, and reuses keras-hub's vocabulary handling, special-token ids, assets and presets.
WordPieceEncoder is the same tokenizer on the Python side (`tokenizers`), for corpus preparation.
"""

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import keras
import keras_hub
import tensorflow as tf
import tensorflow_text
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from app.data.text.word_units import is_cjk
from app.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# train_wordpiece's ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4. bert-base-chinese's are 0,
# 100, 101, 102, 103: a vocabulary's ids are read from it, never assumed.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_FILE = "vocab.txt"
MAX_CHARS_PER_WORD = 100  # tokenizers' WordPiece `max_input_chars_per_word`: longer is [UNK]
# Rust's char::is_whitespace: where tokenizers' WhitespaceSplit splits, and what its WordPiece
# vocabulary reader strips from line ends.
WHITESPACE = ("\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
              + "\u2028\u2029\u202f\u205f\u3000")


def _char_class(ranges) -> str:
    """An RE2 character class of inclusive code-point ranges."""
    return "[" + "".join(f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in ranges) + "]"


# What BertNormalizer's clean_text drops: NUL, U+FFFD and its `is_control` (Cc, Cf and Co of the
# Unicode tables it carries; not \t \n \r), measured code point by code point on tokenizers 0.23.
CONTROL = _char_class([
    (0x0, 0x8), (0xB, 0xC), (0xE, 0x1F), (0x7F, 0x9F), (0xAD, 0xAD), (0x600, 0x605),
    (0x61C, 0x61C), (0x6DD, 0x6DD), (0x70F, 0x70F), (0x180E, 0x180E), (0x200B, 0x200F),
    (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0xE000, 0xF8FF), (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB), (0xFFFD, 0xFFFD), (0x110BD, 0x110BD), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F), (0xF0000, 0xFFFFD),
    (0x100000, 0x10FFFD),
])
# What clean_text makes a space: the whitespace left after the control characters went.
SPACE = _char_class([(ord(c), ord(c)) for c in WHITESPACE if c not in "\v\f\x85"])
# tokenizers' `is_chinese_char` (handle_chinese_chars). transformers' Python `_is_chinese_char`
# and google-research/bert start the fifth range at U+2B820, tokenizers at U+2B920.
CJK = _char_class([
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
])
# BertPreTokenizer's `is_bert_punc`: ASCII 33-47, 58-64, 91-96, 123-126 or Unicode category P*.
PUNCTUATION = r"[!-/:-@\[-`{-~\p{P}]"


@keras.saving.register_keras_serializable(package="app")
class AlbertWordPieceTokenizer(keras_hub.models.BertTokenizer):
    """A BertTokenizer that gives transformers' BertTokenizerFast's ids, in TensorFlow ops.

    The steps, in tokenizers' order: drop control characters (CONTROL), whitespace to a space;
    `split_on_cjk`: a space either side of each CJK ideograph; `strip_accents`: NFD, then marks
    (Mn) removed; `lowercase`: each character lower-cased alone; split at spaces, punctuation
    kept as words; words over 100 characters become [UNK]; greedy longest-match-first WordPiece.

    Args:
        vocabulary: the tokens (a list, index = id) or a vocab.txt path.
        lowercase: lower-case (transformers' `do_lower_case`).
        strip_accents: remove accents; None follows `lowercase`, as in transformers.
        split_on_cjk: split out each CJK ideograph (transformers' `tokenize_chinese_chars`).
        **kwargs: keras-hub's BertTokenizer arguments (`sequence_length`, `dtype`, ...).
    """

    def __init__(self, vocabulary=None, lowercase: bool = True,
                 strip_accents: bool | None = None, split_on_cjk: bool = True, **kwargs):
        if kwargs.get("special_tokens_in_strings"):
            raise ValueError("`special_tokens_in_strings=True` is not supported: special tokens "
                             "in the text are tokenized as text. Received: True")
        super().__init__(vocabulary=vocabulary, lowercase=lowercase,
                         strip_accents=lowercase if strip_accents is None else strip_accents,
                         split_on_cjk=split_on_cjk, **kwargs)

    def set_vocabulary(self, vocabulary):
        super().set_vocabulary(vocabulary)
        # keras-hub's own FastWordpieceTokenizer stops at 100 bytes a word, BERT at 100
        # characters (4 bytes each at most); longer words are handled in `tokenize`.
        self._word_piece = None if self.vocabulary is None else (
            tensorflow_text.FastWordpieceTokenizer(
                vocab=self.vocabulary, suffix_indicator=self.suffix_indicator,
                max_bytes_per_word=4 * MAX_CHARS_PER_WORD, token_out_type=self.compute_dtype,
                unknown_token=self.oov_token, no_pretokenization=True))

    def normalize(self, inputs) -> tf.Tensor:
        """The text (strings or a string tensor) as tokenizers' BertNormalizer leaves it."""
        with tf.device("cpu"):
            text = tf.convert_to_tensor(inputs, dtype=tf.string)
            text = tf.strings.regex_replace(tf.strings.regex_replace(text, CONTROL, ""),
                                            SPACE, " ")
            if self.split_on_cjk:
                text = tf.strings.regex_replace(text, CJK, r" \0 ")
            if self.strip_accents:
                text = tf.strings.regex_replace(
                    tensorflow_text.normalize_utf8(text, "NFD"), r"\p{Mn}", "")
            if self.lowercase:
                # Character by character, as Rust's char::to_lowercase: ICU's only context rule
                # without a locale (final sigma: "ΟΔΟΣ" -> "οδος") is undone by lowering Σ first.
                text = tf.strings.lower(tf.strings.regex_replace(text, "Σ", "σ"),
                                        encoding="utf-8")
        return text

    def words(self, inputs) -> tf.RaggedTensor:
        """The normalized words of each text (BertPreTokenizer), over-long ones as [UNK]."""
        text = self.normalize(inputs)
        with tf.device("cpu"):
            words = tensorflow_text.regex_split(text, f" |{PUNCTUATION}", PUNCTUATION)
            return tf.ragged.map_flat_values(
                lambda w: tf.where(tf.strings.length(w, unit="UTF8_CHAR") > MAX_CHARS_PER_WORD,
                                   self.oov_token, w), words)

    def tokenize(self, inputs):
        """Token ids (ragged for a batch, dense for one string; `sequence_length` pads)."""
        # Replaces keras-hub's tokenize, whose pretokenization (NFKC case folding, its own
        # splitting) never runs: `lowercase`, `strip_accents` and `split_on_cjk` mean BERT's here.
        # TensorFlow ops in eager mode too (keras-hub's eager path is Python, with a byte limit).
        if self._word_piece is None:
            raise ValueError("No vocabulary has been set for AlbertWordPieceTokenizer.")
        with tf.device("cpu"):
            text = tf.convert_to_tensor(inputs, dtype=tf.string)
            words = self.words(text)  # [1, words] for one string
            tokens = self._word_piece.tokenize(words).merge_dims(-2, -1)
            if self.sequence_length:
                shape = tokens.shape.as_list()
                tokens = tokens.to_tensor(shape=[*shape[:-1], self.sequence_length])
            return tokens[0] if text.shape.rank == 0 else tokens

    def get_config(self):
        return {**super().get_config(), "split_on_cjk": self.split_on_cjk}


def _read_vocab(data: bytes, source) -> list[str]:
    """The tokens of a vocab.txt (one a line, UTF-8), as tokenizers reads them (line ends and
    trailing whitespace stripped); ConfigError on an empty file or a duplicate token."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"WordPiece vocabulary '{source}' is not UTF-8: {error}") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    tokens = [line.rstrip(WHITESPACE) for line in lines]
    if not any(tokens):
        raise ConfigError(f"WordPiece vocabulary '{source}' is empty; expected one token a line")
    first: dict[str, int] = {}
    for number, token in enumerate(tokens, start=1):
        if token in first:
            raise ConfigError(f"WordPiece vocabulary '{source}' repeats {token!r} on line "
                              f"{number} (first on line {first[token]}); expected unique tokens")
        first[token] = number
    return tokens


def load_wordpiece(vocab_file: str | Path, lowercase: bool = True,
                   strip_accents: bool | None = None,
                   split_on_cjk: bool = True) -> AlbertWordPieceTokenizer:
    """Load a BERT vocab.txt as an AlbertWordPieceTokenizer, checking BERT's special tokens.

    Args:
        vocab_file: the vocab.txt (UTF-8, one token a line, line number - 1 = id).
        lowercase: lower-case (transformers' `do_lower_case`).
        strip_accents: remove accents; None follows `lowercase`.
        split_on_cjk: split out each CJK ideograph (`tokenize_chinese_chars`).
    """
    path = Path(vocab_file)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"Cannot read WordPiece vocabulary '{path}': {error}") from None
    tokens = _read_vocab(data, path)
    missing = sorted(set(SPECIAL_TOKENS) - set(tokens), key=SPECIAL_TOKENS.index)
    if missing:
        raise ConfigError(f"WordPiece vocabulary '{path}' lacks BERT's special tokens {missing}; "
                          f"expected all of {list(SPECIAL_TOKENS)}")
    return AlbertWordPieceTokenizer(vocabulary=tokens, lowercase=lowercase,
                                    strip_accents=strip_accents, split_on_cjk=split_on_cjk)


def _bert_tokenizer(vocab: dict | None, lowercase: bool, strip_accents: bool | None,
                    split_on_cjk: bool) -> Tokenizer:
    """tokenizers' BERT pipeline (BertTokenizerFast's), without special tokens."""
    model = (models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_CHARS_PER_WORD)
             if vocab else models.WordPiece(unk_token="[UNK]"))
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=split_on_cjk, strip_accents=strip_accents,
        lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def train_wordpiece(texts: Iterable[str], out_dir: str | Path, vocab_size: int,
                    lowercase: bool = True) -> Path:
    """Train a WordPiece vocabulary with BERT's normalization; write `<out_dir>/vocab.txt`.

    Every CJK ideograph is a word of its own, so it needs no `##` twin: the alphabet (the most
    frequent characters) holds every distinct CJK character that fits, plus half of the rest of
    the vocabulary for other characters, so they and their `##` continuations fit in `vocab_size`
    (a Chinese character missing from the vocabulary would read as [UNK]).

    Args:
        texts: training texts.
        out_dir: the folder to write.
        vocab_size: the most tokens, SPECIAL_TOKENS first (ids 0-4).
        lowercase: lower-case (and strip accents) before training, as the tokenizer will.

    Returns:
        The path of the vocab.txt (written atomically).
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"`vocab_size` must be > {len(SPECIAL_TOKENS)}. Received: {vocab_size}")
    tokenizer = _bert_tokenizer(None, lowercase, None, True)
    texts = list(texts)  # read twice: the CJK characters, then the trainer
    budget = vocab_size - len(SPECIAL_TOKENS)
    cjk = min(len({c for text in texts for c in text if is_cjk(c)}), budget)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        limit_alphabet=cjk + (budget - cjk) // 2, continuing_subword_prefix="##")
    tokenizer.train_from_iterator(texts, trainer)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if len(vocab) == len(SPECIAL_TOKENS):
        raise DataError("The texts for the WordPiece vocabulary are empty; expected some text")
    assert [token for token, _ in vocab[:len(SPECIAL_TOKENS)]] == list(SPECIAL_TOKENS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="\n", dir=out_dir,
                                     prefix=f".{VOCAB_FILE}.", delete=False) as file:
        file.write("".join(f"{token}\n" for token, _ in vocab))
    os.replace(file.name, out_dir / VOCAB_FILE)
    log.info("WordPiece vocabulary: %d tokens in %s", len(vocab), out_dir / VOCAB_FILE)
    return out_dir / VOCAB_FILE


class WordPieceEncoder:
    """AlbertWordPieceTokenizer's ids on the Python side (tokenizers), with the part of
    sentencepiece's SentencePieceProcessor that corpus preparation uses.

    Pickles as its vocabulary bytes and flags (workers rebuild it in milliseconds).

    Args:
        vocab: the vocab.txt's bytes, or its path.
        lowercase: lower-case.
        strip_accents: remove accents; None follows `lowercase`.
        split_on_cjk: split out each CJK ideograph.
    """

    def __init__(self, vocab: bytes | str | Path, lowercase: bool = True,
                 strip_accents: bool | None = None, split_on_cjk: bool = True):
        self.vocab = vocab if isinstance(vocab, bytes) else Path(vocab).read_bytes()
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.split_on_cjk = split_on_cjk
        source = "<bytes>" if isinstance(vocab, bytes) else vocab
        self.tokens = _read_vocab(self.vocab, source)
        if "[UNK]" not in self.tokens:
            raise ConfigError(f"WordPiece vocabulary '{source}' lacks '[UNK]'")
        self.tokenizer = _bert_tokenizer({token: i for i, token in enumerate(self.tokens)},
                                         lowercase, self.strip_accents, split_on_cjk)
        self._unk = self.tokens.index("[UNK]")

    def __reduce__(self):
        return type(self), (self.vocab, self.lowercase, self.strip_accents, self.split_on_cjk)

    def encode(self, texts: str | list[str]) -> list[int] | list[list[int]]:
        """Token ids of a text, or of each text of a list."""
        if isinstance(texts, str):
            return self.tokenizer.encode(texts, add_special_tokens=False).ids
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def piece_to_id(self, piece: str) -> int:
        """The id of a token; unk_id() when it is not in the vocabulary."""
        token_id = self.tokenizer.token_to_id(piece)
        return self._unk if token_id is None else token_id

    def id_to_piece(self, token_id: int) -> str:
        """The token of an id."""
        return self.tokens[token_id]

    def unk_id(self) -> int:
        """The id of [UNK]."""
        return self._unk

    def get_piece_size(self) -> int:
        """The vocabulary size."""
        return len(self.tokens)


def normalization_from_transformers(tokenizer_config: dict) -> dict:
    """AlbertWordPieceTokenizer's normalization arguments for a BERT tokenizer_config.json."""
    return {
        "lowercase": bool(tokenizer_config.get("do_lower_case", True)),
        "strip_accents": tokenizer_config.get("strip_accents"),
        "split_on_cjk": bool(tokenizer_config.get("tokenize_chinese_chars", True)),
    }


def transformers_tokenizer_config(tokenizer: AlbertWordPieceTokenizer,
                                  model_max_length: int | None = None) -> dict:
    """A transformers tokenizer_config.json for `tokenizer` (to sit next to its vocab.txt)."""
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(tokenizer.lowercase),
        "strip_accents": bool(tokenizer.strip_accents),
        "tokenize_chinese_chars": bool(tokenizer.split_on_cjk),
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return config
