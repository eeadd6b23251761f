"""How text is cut, per script: sentence splitting and word units, on Chinese, Japanese, English."""

import pytest

from app.data.text import split_sentences, word_starts
from app.data.text.word_units import is_sentencepiece_word_start, is_wordpiece_word_start


def test_english_rule_is_kept():
    assert split_sentences("Mr. Smith met Dr. J. Watson. They talked! Did it rain? Yes.") == [
        "Mr. Smith met Dr. J. Watson.", "They talked!", "Did it rain?", "Yes."]
    assert split_sentences("wait… what? no ; it is 3.5 m long . Ok") == [
        "wait… what? no ; it is 3.5 m long .", "Ok"]


@pytest.mark.parametrize("text, expected", [
    ("房间很大。服务很好！还会再来吗？会的", ["房间很大。", "服务很好！", "还会再来吗？", "会的"]),
    ("他说：“太好了。”然后走了。", ["他说：“太好了。”", "然后走了。"]),
    ("早餐不错,服务也好!就是有点吵;下次再来...价格3.5元。",
     ["早餐不错,服务也好!", "就是有点吵;", "下次再来...", "价格3.5元。"]),
    ("真的吗？！不会吧……好吧", ["真的吗？！", "不会吧……", "好吧"]),
    ("「行く。」そうだ。（笑）", ["「行く。」", "そうだ。", "（笑）"]),
    ("第一行\n第二行", ["第一行", "第二行"]),
    ("It was great! 房间很大。Nice view.", ["It was great!", "房间很大。", "Nice view."]),
])
def test_chinese_and_japanese_punctuation(text, expected):
    assert split_sentences(text) == expected


def test_over_long_sentences_are_cut_at_a_comma_or_by_length():
    clause = "这个酒店的位置很好"
    sentences = split_sentences("，".join([clause] * 40) + "。", max_chars=64)
    assert all(len(s) <= 64 for s in sentences) and len(sentences) > 5
    assert all(s.endswith(("，", "。")) for s in sentences)
    assert "".join(sentences) == "，".join([clause] * 40) + "。"
    assert [len(s) for s in split_sentences("好" * 150, max_chars=64)] == [64, 64, 22]


def test_most_multi_sentence_reviews_split():
    reviews = ["位置很好，交通方便。房间干净！早餐一般。", "服务员态度差，不会再来了！！", "还行吧"]
    assert [len(split_sentences(r)) for r in reviews] == [3, 1, 1]


@pytest.mark.parametrize("piece, starts", [
    ("▁the", True), ("ing", False), ("s", False), ("▁", True), ("房", True), ("房间", True),
    ("▁房", True), ("12", True), (",", True), ("é", True), ("<unk>", True), ("ab'", False),
])
def test_sentencepiece_word_starts_follow_googles_rule(piece, starts):
    assert is_sentencepiece_word_start(piece) is starts


@pytest.mark.parametrize("piece, starts", [
    ("the", True), ("##ing", False), ("房", True), ("##房", False), ("[CLS]", True), ("#", True),
])
def test_wordpiece_word_starts(piece, starts):
    assert is_wordpiece_word_start(piece) is starts


def test_word_starts_pick_the_rule_from_the_vocabulary():
    sentencepiece = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]", "▁un", "believ", "酒店"]
    wordpiece = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##believ", "酒"]
    assert word_starts(sentencepiece)[5:] == [True, False, True]
    assert word_starts(wordpiece)[5:] == [True, False, True]


def test_a_segmenters_words_group_cjk_tokens_and_nothing_else():
    jieba = pytest.importorskip("jieba", reason="the `chinese` extra (jieba) is not installed")
    del jieba
    from app.data.text.word_units import WHOLE_WORD_FLAG, mark_word_continuations, segmenter

    sentence = "这家酒店的服务很好 wifi 快"
    pieces = ["这", "##家", "酒", "店", "的", "服", "务", "很", "好", "wi", "##fi", "快"]
    ids = list(range(10, 10 + len(pieces)))
    marked = mark_word_continuations(sentence, ids, pieces, segmenter("jieba"))
    continues = [piece for piece, token in zip(pieces, marked, strict=True)
                 if token & WHOLE_WORD_FLAG]
    assert continues == ["##家", "店", "务"]  # 这家 酒店 服务 are jieba words; wifi is not CJK
    assert [token % WHOLE_WORD_FLAG for token in marked] == ids
