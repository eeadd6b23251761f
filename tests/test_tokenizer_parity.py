"""Token-id parity with transformers' AlbertTokenizer: AlbertTextTokenizer, load_tokenizer and the
tokenizer_config.json mapping both ways, on SentencePiece models trained in the test."""

import itertools
import json
import random
import shutil
import unicodedata

import keras
import keras_hub
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from app.data.tokenizer import (
    WHITESPACE,
    AlbertTextTokenizer,
    load_tokenizer,
    normalization_from_transformers,
    train_sentencepiece,
    transformers_tokenizer_config,
)

transformers = pytest.importorskip(
    "transformers", reason="parity is checked against transformers' AlbertTokenizer")
pre_tokenizers = pytest.importorskip(
    "tokenizers.pre_tokenizers", reason="transformers' AlbertTokenizer runs on tokenizers")

FLAGS = ("lowercase", "strip_accents", "remove_space")
ALBERT_BASE_V2 = (True, True, True)  # do_lower_case, not keep_accents, remove_space
SYLLABLES = ["ka", "to", "ri", "mé", "ça", "zü", "ño", "ål", "στ", "ολ", "γα", "ΑΘ", "Σο", "qu",
             "Th", "EN", "ÉL", "ße", "ph", "ïa", "ù", "ξ", "ω", "ές"]
EXTRA = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "1,000,000", "9,",
         "3.14", '"hi"', "'x'", ",", ".", "!", "?", "Café", "naïve", "ΟΔΟΣ"]
LONG = " ".join(["The Café in ZÜRICH serves déjà-vu ΟΔΟΣ coffee, 1,000,000 cups;"] * 60)
TEXTS = {
    "mixed case": "The Quick BROWN fox",
    "accents composed": "Café naïve Ångström ÉLODIE façade",
    "accents decomposed": "Cafe\u0301 nai\u0308ve A\u030angstro\u0308m",
    "greek": "ΟΔΟΣ Σοφία λόγος ΑΘΗΝΑ",
    "quotes": "``quoted'' and \"plain\" and '''three''' and `single'",
    "spaces": "  leading,   inner   and trailing  ",
    "tabs and newlines": "one\ttwo\nthree\r\nfour\x0bfive\x0csix",
    "unicode spaces": "non\u00a0breaking\u3000ideographic\u2003em\u202fnarrow\u1680ogham\x85nel",
    "unknown characters": "emoji 😀🙈 and CJK 中文字 mixed",
    "digits with commas": "1,000,000 and 9, 42,",
    "nul": "a\x00B c",
    "empty": "",
    "only spaces": " \t\u3000 ",
    "long": LONG,
}
PAIRS = [("The Café", "ΟΔΟΣ naïve"), ("", "b"), ("  x  ", "1,000,000 9,"), (LONG, "ΣΟΦΙΑ")]


def hf_tokenizer(folder, proto, tokenizer):
    """transformers' AlbertTokenizer from a folder with spiece.model and the exported config."""
    folder.mkdir()
    shutil.copy(proto, folder / "spiece.model")
    config = transformers_tokenizer_config(tokenizer, model_max_length=512)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return transformers.AlbertTokenizer.from_pretrained(folder)


def ids(tokenizer, text) -> list[int]:
    return [int(i) for i in tokenizer(text)]


@pytest.fixture(scope="module")
def proto(tmp_path_factory):
    """A cased (nmt_nfkc, like albert-base-v2's) model on mixed-case, accented and Greek text."""
    rng = random.Random(0)

    def word():
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        return w.upper() if rng.random() < 0.1 else w.capitalize() if rng.random() < 0.3 else w

    texts = [" ".join(word() if rng.random() < 0.7 else rng.choice(EXTRA) for _ in range(12))
             for _ in range(3000)]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("cased") / "spiece", 400,
                               lowercase=False)


@pytest.fixture(scope="module")
def pair(proto, tmp_path_factory):
    """(app tokenizer, transformers tokenizer) for the normalization flags, each built once."""
    cache = {}

    def get(*flags):
        if flags not in cache:
            tokenizer = load_tokenizer(proto, *flags)
            folder = tmp_path_factory.mktemp("hf") / "tokenizer"
            cache[flags] = tokenizer, hf_tokenizer(folder, proto, tokenizer)
        return cache[flags]

    return get


@pytest.mark.parametrize("name", TEXTS)
def test_ids_match_transformers(pair, name):
    tokenizer, hf = pair(*ALBERT_BASE_V2)
    text = TEXTS[name]
    expected = hf(text)["input_ids"]
    assert [2, *ids(tokenizer, text), 3] == expected
    preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
        tokenizer, sequence_length=len(expected) + 3)
    features = preprocessor([text])
    mask = features["padding_mask"][0].numpy()
    assert features["token_ids"][0].numpy()[mask].tolist() == expected


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_pair_ids_match_transformers(pair, first, second):
    tokenizer, hf = pair(*ALBERT_BASE_V2)
    expected = hf(first, second)
    preprocessor = keras_hub.models.AlbertTextClassifierPreprocessor(
        tokenizer, sequence_length=len(expected["input_ids"]) + 3)
    features = preprocessor(x=([first], [second]))  # by keyword: a tuple would be (x, y)
    mask = features["padding_mask"][0].numpy()
    assert features["token_ids"][0].numpy()[mask].tolist() == expected["input_ids"]
    assert features["segment_ids"][0].numpy()[mask].tolist() == expected["token_type_ids"]


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_each_flag_combination_matches_transformers(pair, flags):
    tokenizer, hf = pair(*flags)
    assert (type(tokenizer) is keras_hub.models.AlbertTokenizer) == (not any(flags))
    # No U+0085, `` or '' here: see test_documented_differences.
    for text in ["The Café ΟΔΟΣ", "Cafe\u0301 NAI\u0308VE", "  a\tb\nc\u00a0d\u3000e\x0bf  ",
                 "1,000,000 9, 😀 中文", "İstanbul STRAẞE"]:
        assert [2, *ids(tokenizer, text), 3] == hf(text)["input_ids"], text


def test_app_native_tokenizers_export_to_transformers(tmp_path):
    """A model trained with lowercase=True (nmt_nfkc_cf), plain and normalizing."""
    texts = [" ".join(random.Random(i).choices(EXTRA, k=10)) for i in range(500)]
    proto = train_sentencepiece(texts, tmp_path / "spm", 120, lowercase=True,
                                hard_vocab_limit=False)
    for flags in [(False, False, False), (False, True, True), (True, True, True)]:
        tokenizer = load_tokenizer(proto, *flags)
        hf = hf_tokenizer(tmp_path / "-".join(map(str, flags)), proto, tokenizer)
        for text in ["The QUICK Café, ΟΔΟΣ", "  lazy\tDOG\u3000 9, 1,000,000 "]:
            assert [2, *ids(tokenizer, text), 3] == hf(text)["input_ids"], (flags, text)


def no_special(text: str) -> bool:
    """No '[' or '<': a literal "[MASK]" or "<unk>" is a special token to transformers only."""
    return "[" not in text and "<" not in text


def no_mark(text: str) -> bool:
    """No combining mark or format character (see test_documented_differences)."""
    return no_special(text) and not any(
        unicodedata.category(c)[0] == "M" or unicodedata.category(c) == "Cf" for c in text)


PIECES = [
    st.characters(min_codepoint=0x20, max_codepoint=0x24F),  # ASCII, Latin-1, Latin Extended
    st.characters(min_codepoint=0x370, max_codepoint=0x52F),  # Greek, Cyrillic
    st.characters(min_codepoint=0x1E00, max_codepoint=0x1FFF),  # Latin and Greek precomposed
    st.characters(min_codepoint=0x2000, max_codepoint=0x206F),  # spaces, punctuation, format
    st.characters(min_codepoint=0xFB00, max_codepoint=0xFB4F),  # ligatures
    st.characters(min_codepoint=0xFF00, max_codepoint=0xFFEF),  # fullwidth forms
    st.characters(max_codepoint=0x1F),  # control characters
    st.sampled_from([*WHITESPACE, "``", "''", "中文", "😀", "🙈", "각", "1,000", "9,"]),
]
MARKS = st.characters(min_codepoint=0x300, max_codepoint=0x36F)  # combining diacritics


@settings(max_examples=100, deadline=None)
@given(text=st.lists(st.one_of(*PIECES, MARKS), max_size=40).map("".join).filter(no_special),
       lowercase=st.booleans())
def test_random_text_matches_transformers_stripping_accents(pair, text, lowercase):
    tokenizer, hf = pair(lowercase, True, True)
    assert [2, *ids(tokenizer, text), 3] == hf(text)["input_ids"]


@settings(max_examples=100, deadline=None)
@given(text=st.lists(st.one_of(*PIECES), max_size=40).map("".join).filter(no_mark),
       lowercase=st.booleans())
def test_random_text_matches_transformers_keeping_accents(pair, text, lowercase):
    tokenizer, hf = pair(lowercase, False, True)
    assert [2, *ids(tokenizer, text), 3] == hf(text)["input_ids"]


@pytest.mark.parametrize(("lowercase", "strip_accents"),
                         [(False, True), (True, False), (True, True)])
def test_normalization_matches_tokenizers_per_character(pair, lowercase, strip_accents):
    """Every character of the Latin, Greek, Cyrillic, Vedic, punctuation, kana and compatibility
    blocks (all in Unicode 9.0, whose tables tokenizers carries), one at a time, and a few strings.
    """
    tokenizer, hf = pair(lowercase, strip_accents, False)
    steps = list(hf.backend_tokenizer.normalizer)
    assert type(steps[-1]).__name__ == "Precompiled"  # the SentencePiece charsmap, left out
    python = type(hf.backend_tokenizer.normalizer)(steps[:-1])
    blocks = [range(0x600), range(0x1CD0, 0x1CF7), range(0x1E00, 0x2C00), range(0x3000, 0x3100),
              range(0xFB00, 0xFB50), range(0xFF00, 0xFFF0)]
    chars = [chr(c) for block in blocks for c in block]
    chars += ["ΟΔΟΣ", "ΑΣ.", "a\x00BÉ\x00", "``'''", "İı"]  # final sigma, NUL, quotes, dotted I
    texts = [t.decode() for t in tokenizer.normalize(chars).numpy()]
    assert {c: t for c, t in zip(chars, texts, strict=True) if t != python.normalize_str(c)} == {}


def test_whitespace_is_where_tokenizers_splits():
    split = pre_tokenizers.WhitespaceSplit()
    chars = map(chr, itertools.chain(range(0xD800), range(0xE000, 0x10000)))  # no surrogates
    splits = [c for c in chars if len(split.pre_tokenize_str(f"a{c}b")) == 2]
    assert splits == list(WHITESPACE)


def test_tf_data_graph_and_saved_model_match_eager(pair, tmp_path):
    tokenizer, hf = pair(*ALBERT_BASE_V2)
    texts = [TEXTS[name] for name in ["mixed case", "accents decomposed", "unicode spaces", "nul"]]
    expected = [hf(text)["input_ids"][1:-1] for text in texts]
    assert [ids(tokenizer, text) for text in texts] == expected  # eager: Python SentencePiece
    assert [list(map(int, row)) for row in tokenizer(tf.constant(texts))] == expected
    dataset = tf.data.Dataset.from_tensor_slices(texts)
    assert [row.tolist() for row in dataset.map(tokenizer).as_numpy_iterator()] == expected
    graph = tf.function(tokenizer)
    assert graph(tf.constant(texts)).to_list() == expected
    assert graph(tf.constant(texts[0])).numpy().tolist() == expected[0]
    archive = keras.export.ExportArchive()
    archive.track(tokenizer)
    archive.add_endpoint("tokenize", lambda x: tokenizer(x).to_tensor(),
                         input_signature=[tf.TensorSpec([None], tf.string)])
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved_model")).tokenize(tf.constant(texts))
    assert [[i for i in row if i] for row in served.numpy().tolist()] == expected


def test_config_and_serialization_round_trip(proto, tmp_path):
    tokenizer = load_tokenizer(proto, lowercase=True, remove_space=True)
    config = tokenizer.get_config()
    assert [config[name] for name in FLAGS] == [True, False, True]
    text = "  Café\u3000ΟΔΟΣ\x85x "
    restored = [AlbertTextTokenizer.from_config(config),
                keras.saving.deserialize_keras_object(
                    keras.saving.serialize_keras_object(tokenizer), safe_mode=True)]
    tokenizer.save_assets(tmp_path)  # the model travels as an asset, not in the config
    for copy in restored:
        assert type(copy) is AlbertTextTokenizer and copy.get_config() == config
        copy.load_assets(tmp_path)
        assert ids(copy, text) == ids(tokenizer, text) != ids(load_tokenizer(proto), text)


def test_transformers_config_mapping(proto):
    defaults = dict(zip(FLAGS, ALBERT_BASE_V2, strict=True))  # transformers' defaults
    assert normalization_from_transformers({}) == defaults
    for flags in itertools.product([False, True], repeat=3):
        tokenizer = AlbertTextTokenizer(proto=str(proto), **dict(zip(FLAGS, flags, strict=True)))
        config = transformers_tokenizer_config(tokenizer)
        assert normalization_from_transformers(config) == dict(zip(FLAGS, flags, strict=True))
        assert (config["do_lower_case"], config["keep_accents"]) == (flags[0], not flags[1])
    assert transformers_tokenizer_config(load_tokenizer(proto), model_max_length=128) == {
        "tokenizer_class": "AlbertTokenizer", "do_lower_case": False, "keep_accents": True,
        "remove_space": False, "model_max_length": 128,
        "cls_token": "[CLS]", "sep_token": "[SEP]", "bos_token": "[CLS]", "eos_token": "[SEP]",
        "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "[MASK]",
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}


@pytest.mark.parametrize(("flags", "text"), [
    # transformers matches its special tokens in the raw text; SentencePiece never emits them.
    (ALBERT_BASE_V2, "a [MASK] b <unk>"),
    # The plain keras-hub tokenizer keeps `` and '' (transformers makes them '"').
    ((False, False, False), "``hi''"),
    # transformers splits at U+0085 whatever its remove_space; nmt_nfkc keeps the character.
    ((True, True, False), "a\x85b"),
    # tokenizers' Precompiled normalizer maps a grapheme cluster under 6 bytes by its first
    # character when the charsmap has that one: the marks after it are lost (SentencePiece
    # keeps them).
    ((True, False, True), "x\u3000\u0302y"),
    ((True, False, True), "e\u0301\u0301"),
    # A mark newer than Unicode 9.0: TensorFlow strips it, tokenizers (Unicode 9.0) keeps it.
    (ALBERT_BASE_V2, "a\u1abf"),
])
def test_documented_differences(pair, flags, text):
    tokenizer, hf = pair(*flags)
    assert [2, *ids(tokenizer, text), 3] != hf(text)["input_ids"]
