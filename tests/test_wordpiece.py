"""Token-id parity with transformers' BertTokenizerFast: AlbertWordPieceTokenizer (TensorFlow),
WordPieceEncoder (Python), load_wordpiece, train_wordpiece and the tokenizer_config.json mapping,
on vocabularies built in the test."""

import collections
import itertools
import json
import pickle
import random

import keras
import keras_hub
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from app.data.wordpiece import (
    SPECIAL_TOKENS,
    VOCAB_FILE,
    AlbertWordPieceTokenizer,
    WordPieceEncoder,
    load_wordpiece,
    normalization_from_transformers,
    train_wordpiece,
    transformers_tokenizer_config,
)
from app.errors import ConfigError, DataError

transformers = pytest.importorskip(
    "transformers", reason="parity is checked against transformers' BertTokenizerFast")
tokenizers = pytest.importorskip("tokenizers", reason="BertTokenizerFast runs on tokenizers")

# (lowercase, strip_accents, split_on_cjk); strip_accents None follows lowercase.
FLAGS = list(itertools.product([True, False], [None, True, False], [True, False]))
HAN = ("我们你他的是在不了有和人这中大为上个国说們這個說時國會為學來對臺灣氣價錢"
       "习京今价元全北天好学年很文日月格气爱習角豈")
WORDS = ["Hello", "world", "World", "Python", "TensorFlow", "THE", "quick", "Brown", "fox",
         "Café", "naïve", "Ångström", "señor", "ÉLODIE", "façade", "ΟΔΟΣ", "Σοφία", "İstanbul",
         "2024", "1,234.56", "３月", "ＡＢＣ", "ａｂｃ", "１２３", "ＡＢＣ１２３",
         "カタカナ", "ひらがな", "テキスト", "한국어", "안녕하세요", "텍스트", "😀", "👍🏽",
         "，", "。", "！", "（", "）", "(", ")", "—", "…", "«", "»", "!", "?"]
# Tokens the texts below need, whether or not training found them.
EXTRA_TOKENS = ["x", "##x", "é", "##é", "e", "##e", "안", "##안", "ａ", "Ａ", "，", "！", "？",
                "\U0002b820", "\U0002b920", "\U00020000", "豈", "\u0890"]
LONG = "我们在北京大学学习中文，Hello World! Café ＡＢＣ１２３ 안녕하세요 " * 120
TEXTS = {
    "simplified": "我们在北京大学学习中文，今天天气很好。",
    "traditional": "我們在臺灣大學學習中文，今天天氣很好。",
    "full-width": "ＡＢＣ１２３，！？ａｂｃ（全角）",
    "english in chinese": "我爱Python和TensorFlow，HelloWorld!  Pythonfox",
    "digits": "2024年3月15日，价格是1,234.56元，３月",
    "emoji": "很好😀👍🏽❤️ok",
    "kana": "カタカナとひらがなのテキスト",
    "hangul": "한국어 텍스트입니다 안녕하세요",
    "accents": "Café naïve Ångström señor ÉLODIE façade Caféfaçade",
    "decomposed accents": "Cafe\u0301 A\u030angstro\u0308m",
    "greek and dotted i": "ΟΔΟΣ Σοφία İstanbul STRAẞE",
    "control characters": "a\x00b\ufffdc\x0bd\x85e\x7ff\u200bg\u00adh\ue000i\u202aj\U000e0041k",
    "odd whitespace": " a\tb\nc\r\nd\u3000e\xa0f\u2028g\u2003h\u202fi ",
    "punctuation": "(a)[b]{c}<d>@e#f$g%h^i&j*k~l`m|n\\o—p…q«r»s·t",
    "cjk range edges": "\U0002b820\U0002b920\U00020000豈x\u0890y",
    "word of 101 characters": "x" * 101 + " ok",
    "word of 100 characters": "x" * 100,
    "100 characters in 200 bytes": "é" * 100,
    "40 hangul syllables": "안" * 40,
    "long text": LONG,
    "empty": "",
    "only spaces": " \t\u3000 ",
}
PAIRS = [("我们在北京", "Hello World！"), ("Café ＡＢＣ", "안녕하세요 😀"), ("", "今天天气很好")]
# Unicode blocks where BertTokenizerFast and TensorFlow agree character by character (see
# test_documented_differences): Latin, Greek, Cyrillic, Armenian; Latin and Greek extended,
# punctuation and symbols; CJK symbols, kana, Bopomofo, CJK, Yi; Hangul; private use,
# compatibility ideographs, presentation and full-width forms; emoji; CJK extensions; tags and
# variation selectors; private-use planes.
BLOCKS = [(0x0, 0x58F), (0x1E00, 0x2BFF), (0x2E00, 0x2E42), (0x3000, 0xA4CF), (0xAC00, 0xD7FF),
          (0xE000, 0xFFFF), (0x1F000, 0x1FAFF), (0x20000, 0x323AF), (0xE0000, 0xE01EF),
          (0xF0000, 0xF00FF), (0x10FF00, 0x10FFFF)]


def corpus(seed: int = 0, size: int = 600) -> list[str]:
    """Mixed sentences: Chinese without spaces, with English, accented, kana, Hangul words."""
    rng = random.Random(seed)
    return ["".join(rng.choices(HAN, k=rng.randint(3, 12))) + " ".join(rng.choices(WORDS, k=4))
            + "".join(rng.choices(HAN, k=rng.randint(0, 5))) for _ in range(size)]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    """A cased vocabulary trained on `corpus()`, with EXTRA_TOKENS appended."""
    path = train_wordpiece(corpus(), tmp_path_factory.mktemp("vocab"), 800, lowercase=False)
    tokens = path.read_text(encoding="utf-8").split("\n")[:-1]
    tokens += [token for token in EXTRA_TOKENS if token not in tokens]
    path.write_text("".join(f"{token}\n" for token in tokens), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair(vocab_file):
    """(app tokenizer, BertTokenizerFast) for the flags, each built once."""
    vocab = {token: i for i, token in enumerate(vocab_file.read_text("utf-8").split("\n")[:-1])}
    cache = {}

    def get(lowercase=True, strip_accents=None, split_on_cjk=True):
        flags = lowercase, strip_accents, split_on_cjk
        if flags not in cache:
            cache[flags] = (
                load_wordpiece(vocab_file, *flags),
                transformers.BertTokenizerFast(vocab=vocab, do_lower_case=lowercase,
                                               strip_accents=strip_accents,
                                               tokenize_chinese_chars=split_on_cjk))
        return cache[flags]

    return get


def ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(tf.constant(texts)).to_list()


def hf_ids(hf, texts: list[str]) -> list[list[int]]:
    return hf(texts, add_special_tokens=False)["input_ids"]


def test_vocabulary_is_meaningful(pair):
    """The texts reach real tokens: few [UNK], words split into `##` pieces."""
    tokenizer, _ = pair(False, False, True)
    texts = list(TEXTS.values())
    flat = [tokenizer.id_to_token(i) for row in ids(tokenizer, texts) for i in row]
    assert flat.count("[UNK]") < 0.1 * len(flat)
    assert sum(token.startswith("##") for token in flat) > 10
    assert tokenizer(TEXTS["100 characters in 200 bytes"]).numpy().tolist() == (
        [tokenizer.token_to_id("é")] + [tokenizer.token_to_id("##é")] * 99)


@pytest.mark.parametrize("flags", FLAGS, ids=lambda flags: "-".join(map(str, flags)))
def test_ids_match_bert_tokenizer_fast(pair, flags):
    tokenizer, hf = pair(*flags)
    texts = list(TEXTS.values())
    assert dict(zip(TEXTS, ids(tokenizer, texts), strict=True)) == dict(
        zip(TEXTS, hf_ids(hf, texts), strict=True))


def test_flags_change_the_ids(pair):
    """Each flag matters on these texts (so the parity above tests each of them)."""
    texts = list(TEXTS.values())
    results = {flags: str(ids(pair(*flags)[0], texts)) for flags in FLAGS}
    assert results[(True, None, True)] != results[(False, None, True)]  # lowercase
    assert results[(False, True, True)] != results[(False, False, True)]  # strip_accents
    assert results[(True, None, True)] != results[(True, None, False)]  # split_on_cjk
    assert results[(True, None, True)] == results[(True, True, True)]  # None follows lowercase


def no_special(text: str) -> bool:
    """No special token: transformers matches them in the raw text (see below)."""
    return not any(token in text for token in SPECIAL_TOKENS)


PIECES = [st.characters(min_codepoint=lo, max_codepoint=hi) for lo, hi in BLOCKS]
PIECES.append(st.sampled_from(list(HAN) + WORDS + [" ", "\t", "\u3000", "\x00", "\u0301", "Σ"]))


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(text=st.lists(st.one_of(*PIECES), max_size=40).map("".join).filter(no_special),
       flags=st.sampled_from(FLAGS))
def test_random_text_matches_bert_tokenizer_fast(pair, text, flags):
    tokenizer, hf = pair(*flags)
    assert ids(tokenizer, [text]) == hf_ids(hf, [text])


@pytest.mark.parametrize("flags", [(True, None, True), (False, False, False), (False, True, True),
                                   (True, False, True)])
def test_normalization_and_words_match_tokenizers_per_character(flags):
    """Every code point of BLOCKS, between '#' separators: BertNormalizer's text, then
    BertPreTokenizer's words."""
    lowercase, strip_accents, split_on_cjk = flags
    tokenizer = AlbertWordPieceTokenizer(list(SPECIAL_TOKENS), *flags)
    normalizer = tokenizers.normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=split_on_cjk, strip_accents=strip_accents,
        lowercase=lowercase)
    chars = [chr(c) for lo, hi in BLOCKS for c in range(lo, hi + 1)
             if not 0xD800 <= c < 0xE000 and chr(c) != "#"]
    text = "#".join(chars)
    expected = normalizer.normalize_str(text)
    normalized = tokenizer.normalize(text).numpy().decode()
    assert len(normalized.split("#")) == len(chars)
    assert {c: n for c, n, e in zip(chars, normalized.split("#"), expected.split("#"),
                                    strict=True) if n != e} == {}
    words = [word for word, _ in tokenizers.pre_tokenizers.BertPreTokenizer().pre_tokenize_str(
        expected)]
    assert [w.decode() for w in tokenizer.words([text]).to_list()[0]] == words


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_pairs_match_bert_tokenizer_fast(pair, first, second):
    tokenizer, hf = pair()
    preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(tokenizer,
                                                                     sequence_length=32)
    features = preprocessor(x=([first], [second]))  # by keyword: a tuple would be (x, y)
    expected = hf(first, second, padding="max_length", max_length=32)
    assert sum(expected["attention_mask"]) < 32  # not truncated: strategies differ
    assert features["token_ids"][0].numpy().tolist() == expected["input_ids"]
    assert features["segment_ids"][0].numpy().tolist() == expected["token_type_ids"]
    assert features["padding_mask"][0].numpy().tolist() == list(map(bool,
                                                                     expected["attention_mask"]))


def test_special_ids_and_vocabulary(pair, vocab_file):
    tokenizer, _ = pair()
    tokens = vocab_file.read_text("utf-8").split("\n")[:-1]
    assert tokenizer.get_vocabulary() == tokens and tokenizer.vocabulary_size() == len(tokens)
    assert (tokenizer.pad_token_id, tokenizer.start_token_id, tokenizer.end_token_id,
            tokenizer.mask_token_id) == (0, 2, 3, 4)
    assert [tokenizer.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert tokenizer.token_to_id("[UNK]") == 1
    features = keras_hub.models.AlbertTextClassifierPreprocessor(tokenizer, sequence_length=16)(
        ["我们"])
    body = tokenizer("我们").numpy().tolist()
    assert features["token_ids"][0].numpy().tolist() == [2, *body, 3] + [0] * (14 - len(body))
    masked, _, _ = keras_hub.models.AlbertMaskedLMPreprocessor(
        tokenizer, sequence_length=16, mask_selection_rate=1.0, random_token_rate=0.0,
        mask_token_rate=1.0)(["我们在北京"])
    assert set(masked["token_ids"][0].numpy().tolist()[1:6]) == {4}


@pytest.mark.slow
def test_tf_data_graph_and_saved_model_match_eager(pair, tmp_path):
    tokenizer, hf = pair()
    texts = [TEXTS[name] for name in ["simplified", "full-width", "control characters",
                                      "greek and dotted i", "40 hangul syllables"]]
    expected = hf_ids(hf, texts)
    assert ids(tokenizer, texts) == expected
    assert [tokenizer(text).numpy().tolist() for text in texts] == expected
    dataset = tf.data.Dataset.from_tensor_slices(texts)
    assert [row.tolist() for row in dataset.map(tokenizer).as_numpy_iterator()] == expected
    assert [row.tolist() for row in dataset.batch(2).map(tokenizer).unbatch()
            .as_numpy_iterator()] == expected
    graph = tf.function(tokenizer)
    assert graph(tf.constant(texts)).to_list() == expected
    assert graph(tf.constant(texts[0])).numpy().tolist() == expected[0]

    class Serving(tf.Module):
        def __init__(self, tokenizer):
            super().__init__()
            self.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def tokenize(self, texts):
            return self.tokenizer(texts).to_tensor(default_value=-1)

    tf.saved_model.save(Serving(tokenizer), str(tmp_path / "saved_model"))
    served = tf.saved_model.load(str(tmp_path / "saved_model")).tokenize(tf.constant(texts))
    assert [[i for i in row if i >= 0] for row in served.numpy().tolist()] == expected


def test_config_serialization_and_preset_round_trip(vocab_file, tmp_path):
    tokenizer = load_wordpiece(vocab_file, lowercase=False, strip_accents=True,
                               split_on_cjk=False)
    config = tokenizer.get_config()
    assert (config["lowercase"], config["strip_accents"], config["split_on_cjk"]) == (
        False, True, False)
    text = "我们 Café ＡＢＣ ΟΔΟΣ"
    restored = [AlbertWordPieceTokenizer.from_config(config),
                keras.saving.deserialize_keras_object(
                    keras.saving.serialize_keras_object(tokenizer), safe_mode=True)]
    tokenizer.save_assets(tmp_path)  # the vocabulary travels as an asset, not in the config
    for copy in restored:
        assert type(copy) is AlbertWordPieceTokenizer and copy.get_config() == config
        copy.load_assets(tmp_path)
        assert ids(copy, [text]) == ids(tokenizer, [text]) != ids(load_wordpiece(vocab_file),
                                                                   [text])
    preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(tokenizer,
                                                                     sequence_length=16)
    preset = tmp_path / "preset"
    keras_hub.models.AlbertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=1, num_heads=1, num_groups=1,
        embedding_dim=8, hidden_dim=8, intermediate_dim=8, max_sequence_length=16,
    ).save_to_preset(str(preset))  # from_preset needs a backbone config
    preprocessor.save_to_preset(str(preset))
    reloaded = keras_hub.models.AlbertTextClassifierPreprocessor.from_preset(str(preset))
    assert type(reloaded.tokenizer) is AlbertWordPieceTokenizer
    assert reloaded.tokenizer.get_config() == config
    for x in [[text, "안녕하세요"], ([text, "안녕하세요"], ["Hello", ""])]:
        for name, value in preprocessor(x=x).items():
            assert reloaded(x=x)[name].numpy().tolist() == value.numpy().tolist(), name


@pytest.mark.parametrize("flags", [(True, None, True), (False, False, False), (False, True, True)])
def test_encoder_matches_tokenizer_and_pickles(pair, vocab_file, flags):
    tokenizer, _ = pair(*flags)
    encoder = WordPieceEncoder(vocab_file.read_bytes(), *flags)
    texts = list(TEXTS.values())
    assert encoder.encode(texts) == ids(tokenizer, texts)
    assert encoder.encode(texts[0]) == ids(tokenizer, texts[:1])[0]
    copy = pickle.loads(pickle.dumps(encoder))
    assert copy.encode(texts) == encoder.encode(texts)
    assert WordPieceEncoder(vocab_file, *flags).encode(texts[:3]) == encoder.encode(texts[:3])
    assert encoder.get_piece_size() == tokenizer.vocabulary_size()
    assert (encoder.unk_id(), encoder.piece_to_id("[MASK]"), encoder.piece_to_id("<pad>")) == (
        1, 4, 1)
    assert [encoder.id_to_piece(i) for i in range(5)] == list(SPECIAL_TOKENS)


def write_vocab(path, tokens) -> str:
    path.write_text("".join(f"{token}\n" for token in tokens), encoding="utf-8")
    return str(path)


def test_load_wordpiece_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"'.*no_mask\.txt' lacks .*\['\[MASK\]'\]"):
        load_wordpiece(write_vocab(tmp_path / "no_mask.txt", [*SPECIAL_TOKENS[:4], "a"]))
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"'.*empty\.txt' is empty"):
        load_wordpiece(tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match=r"repeats 'a' on line 7 \(first on line 6\)"):
        load_wordpiece(write_vocab(tmp_path / "twice.txt", [*SPECIAL_TOKENS, "a", "a"]))
    (tmp_path / "latin1.txt").write_bytes("[PAD]\né\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_wordpiece(tmp_path / "latin1.txt")
    with pytest.raises(ConfigError, match="Cannot read"):
        load_wordpiece(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match=r"'<bytes>' is empty"):
        WordPieceEncoder(b"\n \n")
    with pytest.raises(ConfigError, match=r"lacks '\[UNK\]'"):
        WordPieceEncoder(b"[PAD]\na\n")
    # Read as tokenizers reads it: CRLF line ends and trailing spaces go.
    path = tmp_path / "crlf.txt"
    path.write_bytes("\r\n".join([*SPECIAL_TOKENS, "a ", "b"]).encode())
    assert load_wordpiece(path).get_vocabulary() == [*SPECIAL_TOKENS, "a", "b"]


def test_train_wordpiece_on_chinese_without_spaces(tmp_path):
    rng = random.Random(1)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 600)]
    texts = ["".join(rng.choices(chars, [1 / (i + 1) for i in range(600)], k=40))
             + "，今天。" for _ in range(300)]
    counts = collections.Counter("".join(texts))
    path = train_wordpiece(texts, tmp_path / "zh", vocab_size=2000)
    assert path == tmp_path / "zh" / VOCAB_FILE and not list(path.parent.glob(".*"))
    tokens = path.read_text("utf-8").split("\n")[:-1]
    assert tokens[:5] == list(SPECIAL_TOKENS)
    assert {c for c, n in counts.items() if n >= 2} <= set(tokens)
    assert not [t for t in tokens if len(t) > 1 and any(c in chars for c in t)]  # no ## either
    tokenizer = load_wordpiece(path)
    assert tokenizer(texts[0]).numpy().tolist() == [tokens.index(c) for c in texts[0]]
    small = train_wordpiece(texts, tmp_path / "small", vocab_size=105).read_text("utf-8")
    small_tokens = small.split("\n")[:-1]
    assert len(small_tokens) <= 105  # the alphabet keeps the most frequent characters
    assert {c for c, _ in counts.most_common(40)} <= set(small_tokens)
    words = ["Hello", "world", "Python", "quick", "Brown", "fox", "lazy", "banana", "gamma"]
    with pytest.raises(DataError, match="empty"):
        train_wordpiece(iter(["", " "]), tmp_path / "none", vocab_size=100)
    with pytest.raises(ConfigError, match="must be > 5"):
        train_wordpiece(texts, tmp_path / "tiny", vocab_size=5)
    english = [" ".join(random.Random(i).choices(words, k=10)) for i in range(300)]
    tokens = train_wordpiece(english, tmp_path / "en", 300).read_text("utf-8").split("\n")
    assert {"hello", "world", "python", "##a"} <= set(tokens) and "Hello" not in tokens


def test_every_chinese_character_fits_a_vocabulary_sized_for_them(tmp_path):
    """1,500 distinct characters (MSRA's train has 3,793) in a vocabulary of 1,600: each is a
    token (a missing one would read as [UNK]); English words share what is left."""
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 1500)]
    texts = ["".join(chars[i:i + 30]) + " New York ." for i in range(0, 1500, 30)] * 2
    tokens = set(train_wordpiece(texts, tmp_path / "zh", vocab_size=1600).read_text(
        "utf-8").split("\n"))
    assert set(chars) <= tokens
    assert {"new", "york", "."} <= tokens


def test_transformers_config_round_trip(vocab_file, tmp_path):
    texts = list(TEXTS.values())
    for flags in [(True, None, True), (False, False, False), (False, True, True)]:
        tokenizer = load_wordpiece(vocab_file, *flags)
        folder = tmp_path / "-".join(map(str, flags))
        folder.mkdir()
        (folder / VOCAB_FILE).write_bytes(vocab_file.read_bytes())
        config = transformers_tokenizer_config(tokenizer, model_max_length=512)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        hf = transformers.AutoTokenizer.from_pretrained(folder)
        assert [[2, *row, 3] for row in ids(tokenizer, texts)] == hf(texts)["input_ids"]
        assert hf("a", "b")["token_type_ids"] == [0, 0, 0, 1, 1]
        settings = normalization_from_transformers(config)
        assert [getattr(tokenizer, key) for key in settings] == [
            getattr(load_wordpiece(folder / VOCAB_FILE, **settings), key) for key in settings]
    assert config == {
        "tokenizer_class": "BertTokenizer", "do_lower_case": False, "strip_accents": True,
        "tokenize_chinese_chars": True, "unk_token": "[UNK]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "model_max_length": 512}


def test_normalization_from_transformers(vocab_file):
    bert_base_chinese = {"do_lower_case": True, "tokenize_chinese_chars": True,
                         "model_max_length": 512, "tokenizer_class": "BertTokenizer"}
    assert normalization_from_transformers(bert_base_chinese) == {
        "lowercase": True, "strip_accents": None, "split_on_cjk": True}
    assert load_wordpiece(vocab_file, **normalization_from_transformers(
        bert_base_chinese)).strip_accents is True  # None follows lowercase, as in transformers
    assert normalization_from_transformers({}) == {
        "lowercase": True, "strip_accents": None, "split_on_cjk": True}
    assert normalization_from_transformers({"do_lower_case": True, "strip_accents": False,
                                            "tokenize_chinese_chars": False}) == {
        "lowercase": True, "strip_accents": False, "split_on_cjk": False}


def hf_words(hf, text: str) -> list[str]:
    """BertTokenizerFast's words: its normalizer, then its pre-tokenizer."""
    backend = hf.backend_tokenizer
    normalized = backend.normalizer.normalize_str(text)
    return [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]


@pytest.mark.parametrize(("flags", "text"), [
    # Marks newer than Unicode 9.0 (tokenizers' category tables): TensorFlow strips them.
    ((True, None, True), "xa\u1abfx"),
    # Punctuation newer than Unicode 9.0: TensorFlow splits there.
    ((False, False, True), "x\u2e43x"),
    # Case pairs and decompositions newer than TensorFlow's ICU: tokenizers maps them.
    ((True, False, True), "x\u2c2f"),
    ((False, True, True), "\U000105c9"),
])
def test_documented_differences(pair, flags, text):
    tokenizer, hf = pair(*flags)
    assert [w.decode() for w in tokenizer.words([text]).to_list()[0]] != hf_words(hf, text)


def test_special_tokens_in_text_differ(pair):
    """transformers matches its special tokens in the raw text; the app tokenizes them as text
    (as it does with SentencePiece)."""
    tokenizer, hf = pair()
    assert ids(tokenizer, ["a [MASK] b"]) != hf_ids(hf, ["a [MASK] b"])
