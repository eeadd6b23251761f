"""Pretraining data: corpus reading, SOP pairs, n-gram masking statistics, seeds, bad corpora."""

import collections
import gzip
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
from omegaconf import OmegaConf

from app.data.pipeline import epoch_stream
from app.data.pretraining.corpus import expand_files, iter_documents
from app.data.pretraining.masking import NGramMasker
from app.data.pretraining.pairs import (
    RecentSentences,
    SpecialIds,
    document_pairs,
    iter_examples,
    pack_pair,
)
from app.data.pretraining.pipeline import (
    corpus_documents,
    masked_eval_batches,
    pretraining_examples,
    special_ids,
)
from app.data.pretraining.sentence_order import (
    SOP_SWAPPED,
    count_pair_kinds,
    draw_sentence_order,
    order_and_mask,
)
from app.data.text import split_sentences
from app.data.text.word_units import WHOLE_WORD_FLAG
from app.data.tokenizer import SPECIAL_PIECES, train_sentencepiece
from app.errors import ConfigError, DataError

SUBJECTS = ["The cat", "A dog", "My friend", "The teacher", "Our neighbour", "The old man"]
VERBS = ["saw", "liked", "painted", "carried", "found", "followed"]
OBJECTS = ["a red ball", "the small house", "two green apples", "the long river", "a blue car"]
PLACES = ["in the park", "near the station", "at home", "after dinner", "before sunrise"]


# The same sentences in Chinese: no spaces, words of one to four characters, 。 ends them.
SUBJECTS_ZH = ["小猫", "这只狗", "我的朋友", "老师", "邻居", "那位老人"]
VERBS_ZH = ["看见了", "喜欢", "画了", "拿着", "找到了", "跟着"]
OBJECTS_ZH = ["一个红球", "那座小房子", "两个青苹果", "那条长河", "一辆蓝色的车"]
PLACES_ZH = ["在公园里", "在车站附近", "在家", "晚饭以后", "日出之前"]


def synthetic_documents(num_documents: int, seed: int, language: str = "en") -> list[list[str]]:
    """Documents of 3-8 simple sentences, English (`en`) or Chinese (`zh`)."""
    rng = np.random.default_rng(seed)
    if language == "zh":
        def sentence():
            return (f"{rng.choice(PLACES_ZH)}{rng.choice(SUBJECTS_ZH)}{rng.choice(VERBS_ZH)}"
                    f"{rng.choice(OBJECTS_ZH)}。")
    else:
        def sentence():
            return (f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                    f"{rng.choice(PLACES)}.")
    return [[sentence() for _ in range(rng.integers(3, 9))] for _ in range(num_documents)]


def write_corpus(path: Path, documents: list[list[str]]) -> Path:
    """Documents separated by blank lines, two sentences per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    paragraphs = []
    for document in documents:
        lines = [" ".join(document[i:i + 2]) for i in range(0, len(document), 2)]
        paragraphs.append("\n".join(lines))
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def corpus_config(**overrides):
    data = {"sequence_length": 48, "short_seq_prob": 0.1, "shuffle_buffer": 1000,
            "document_pattern": None, "skip_pattern": None, "text_column": "sentence",
            "eval_fraction": 0.0}
    return OmegaConf.create({**data, **overrides})


def language_processor(out: Path, language: str) -> sentencepiece.SentencePieceProcessor:
    sentences = [s for d in synthetic_documents(200, seed=0, language=language) for s in d]
    # Chinese: every character a piece of its own (78 of them), and a few words.
    proto = train_sentencepiece(sentences, out / "spm", hard_vocab_limit=False,
                                vocab_size=60 if language == "en" else 120)
    return sentencepiece.SentencePieceProcessor(model_file=str(proto))


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> sentencepiece.SentencePieceProcessor:
    return language_processor(tmp_path_factory.mktemp("spm"), "en")


@pytest.fixture(scope="module")
def processors(processor, tmp_path_factory) -> dict[str, sentencepiece.SentencePieceProcessor]:
    """A tokenizer per language of `synthetic_documents`."""
    return {"en": processor, "zh": language_processor(tmp_path_factory.mktemp("spm_zh"), "zh")}


def test_split_sentences_english_and_wikitext_spacing():
    assert split_sentences("Mr. Smith met Dr. J. Watson. They talked! Did it rain? Yes.") == [
        "Mr. Smith met Dr. J. Watson.", "They talked!", "Did it rain?", "Yes."]
    assert split_sentences('It grew to 3 @.@ 5 m in the U.S. . " Later , it fell . ok') == [
        "It grew to 3 @.@ 5 m in the U.S. .", '" Later , it fell . ok']


def test_documents_split_at_blank_lines_across_globbed_and_gzip_files(tmp_path):
    (tmp_path / "a.txt").write_text("One. Two.\nThree.\n\n\nFour. Five.\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as out:
        out.write("Six. Seven.\n\nEight.")
    files = expand_files(tmp_path, "*.txt,*.gz", "data.train_file")
    assert [f.name for f in files] == ["a.txt", "b.txt.gz"]
    assert list(iter_documents(files)) == [
        ["One.", "Two.", "Three."], ["Four.", "Five."], ["Six.", "Seven."], ["Eight."]]


def test_documents_split_at_wikitext_headings(tmp_path):
    text = (" \n = First = \n \n Alpha one . Alpha two .\n \n = = Part = = \n \n Alpha three .\n"
            " \n = Second = \n \n Beta one . Beta two .\n")
    path = tmp_path / "wiki.raw"
    path.write_text(text, encoding="utf-8")
    documents = list(iter_documents([path], r"^ = [^=].* = *$", r"^ (= )+.*(= )+ *$"))
    assert documents == [["Alpha one .", "Alpha two .", "Alpha three ."],
                         ["Beta one .", "Beta two ."]]


def test_each_row_of_a_tsv_file_is_a_document_of_its_text_column(tmp_path):
    (tmp_path / "task.tsv").write_text(
        "label\treview\n1\tgreat fun . really\n0\tDull. Too long.\n", encoding="utf-8")
    (tmp_path / "wiki.txt").write_text("Alpha. Beta.\n", encoding="utf-8")
    files = expand_files(tmp_path, "wiki.txt,task.tsv", "data.train_file")
    assert list(iter_documents(files, text_column="review")) == [
        ["Alpha.", "Beta."], ["great fun . really"], ["Dull.", "Too long."]]
    with pytest.raises(DataError, match=r"task.tsv.*'sentence'"):
        list(iter_documents(files))


def test_expand_files_names_the_key_when_nothing_matches(tmp_path):
    with pytest.raises(ConfigError, match=r"`data.train_file` matches no file.*'\*.txt'"):
        expand_files(tmp_path, "*.txt", "data.train_file")


def test_pairs_keep_document_order_within_length():
    rng = np.random.default_rng(0)
    pairs = 0
    for _ in range(200):
        # Sentence k holds tokens 100k..100k+n: order is visible in the ids.
        document = [list(range(100 * k, 100 * k + rng.integers(2, 9))) for k in range(1, 12)]
        for a, b in document_pairs(document, 29, short_seq_prob=0.1, rng=rng):
            assert a and b and len(a) + len(b) <= 29 and max(a) < min(b)
            pairs += 1
    assert pairs > 300


def numbered_document(rng, first: int, count: int, low: int = 2, high: int = 30):
    """Sentences whose ids say where they come from: sentence k holds 1000k, 1000k+1, ..."""
    return [list(range(1000 * k, 1000 * k + int(rng.integers(low, high))))
            for k in range(first, first + count)]


def test_whole_sentences_packed_and_the_overflowing_sentence_starts_the_next_chunk():
    rng = np.random.default_rng(0)
    max_tokens, ordered, random_b = 40, 0, 0
    for _ in range(100):
        document = numbered_document(rng, 1, 12)
        recent = RecentSentences()
        recent.add(numbered_document(rng, 50, 5))
        chunks = []  # the document's sentences (numbers) in each pair
        for pair in document_pairs(document, max_tokens, 0.0, rng, recent):
            a, b = pair  # still unpacks as (A, B)
            assert a and b and len(a) + len(b) <= max_tokens
            if pair.random_next:
                random_b += 1
                # One sentence of this document; cut only if the random B did not fit.
                assert a == document[a[0] // 1000 - 1] or pair.trimmed
                assert len({t // 1000 for t in a}) == 1 and min(b) >= 50_000
                chunks.append([a[0] // 1000])
            else:
                ordered += 1
                assert not pair.trimmed and max(a) < min(b)
                numbers = sorted({t // 1000 for t in a + b})
                assert a + b == [t for k in numbers for t in document[k - 1]]  # whole sentences
                chunks.append(numbers)
        # Each sentence in one pair, in order: nothing skipped or repeated.
        assert [k for c in chunks for k in c] == list(range(1, 13))
        for chunk, following in zip(chunks, chunks[1:], strict=False):
            # A chunk closes only before a sentence that would overflow it; that sentence
            # starts the next chunk.
            assert sum(len(document[k - 1]) for k in [*chunk, following[0]]) > max_tokens
    assert ordered > 200 and random_b > 20


def test_only_a_single_over_long_sentence_is_trimmed_and_gets_a_random_b():
    rng = np.random.default_rng(1)
    recent = RecentSentences()
    recent.add(numbered_document(rng, 500, 6, low=3, high=8))
    document = [list(range(1000, 1010)), list(range(2000, 2090)), list(range(3000, 3010))]
    pairs = list(document_pairs(document, 40, 0.0, rng, recent))
    assert [(p.trimmed, p.random_next) for p in pairs] == [(False, True), (True, True),
                                                           (False, True)]
    long_a = pairs[1].a
    assert len(long_a) + len(pairs[1].b) == 40 and len(long_a) >= 20
    assert long_a == list(range(long_a[0], long_a[0] + len(long_a)))  # one piece of it
    assert pairs[0].a == document[0] and pairs[2].a == document[2]


def test_random_b_is_whole_sentences_of_one_earlier_document():
    rng = np.random.default_rng(2)
    documents = [numbered_document(rng, 100 * d, int(rng.integers(1, 6)), high=12)
                 for d in range(300)]
    ids = SpecialIds(pad=0, cls=2, sep=3, mask=4)
    sentences = {s[0]: s for d in documents for s in d}
    random_pairs = 0
    for example in iter_examples(documents, 24, ids, 0.1, seed=3):
        tokens = example["token_ids"][example["padding_mask"] == 1].tolist()
        first_sep = tokens.index(3)
        a, b = tokens[1:first_sep], tokens[first_sep + 1:-1]
        if not example["random_next"]:
            assert a[0] // 100_000 == b[-1] // 100_000  # one document
            continue
        random_pairs += 1
        assert b[0] // 100_000 < a[0] // 100_000  # from an earlier document
        if not example["trimmed"]:
            assert b[0] in sentences and b[0] % 1000 == 0  # starts a sentence
            rebuilt, start = [], b[0]
            while len(rebuilt) < len(b):
                rebuilt += sentences[start]
                start += 1000
            assert rebuilt == b and start // 100_000 == b[0] // 100_000  # whole, one document
    assert random_pairs > 100
    # Reproducible from the seed, and another seed draws other pairs.
    first = [e["token_ids"].tolist() for e in iter_examples(documents, 24, ids, 0.1, seed=3)]
    again = [e["token_ids"].tolist() for e in iter_examples(documents, 24, ids, 0.1, seed=3)]
    other = [e["token_ids"].tolist() for e in iter_examples(documents, 24, ids, 0.1, seed=4)]
    assert first == again and first != other


def test_trimming_breaks_length_ties_at_random():
    cut = collections.Counter()
    for seed in range(200):
        recent = RecentSentences()
        recent.add([list(range(500, 521))])
        (pair,) = document_pairs([list(range(100, 121))], 41, 0.0, np.random.default_rng(seed),
                                 recent)
        assert pair.trimmed and len(pair.a) + len(pair.b) == 41
        cut["a" if len(pair.a) == 20 else "b"] += 1
    assert min(cut.values()) > 60, cut


@pytest.mark.parametrize("language", ["en", "zh"])
def test_random_b_pairs_are_never_in_order_and_never_reach_the_model_inputs(processors,
                                                                             language):
    processor = processors[language]
    documents = (synthetic_documents(150, seed=6, language=language)
                 + [[s] for s in synthetic_documents(50, 7, language)[0]])
    data = corpus_config(sequence_length=64)
    examples, count = pretraining_examples(lambda: iter(documents), processor, data, seed=1)
    kinds = count_pair_kinds(examples)
    assert kinds["random_next"] > 20 and kinds["whole"] > 20 and sum(kinds.values()) >= count
    flags = [e["random_next"] for e in examples.as_numpy_iterator()]
    masker = NGramMasker([processor.id_to_piece(i) for i in range(processor.get_piece_size())],
                         max_predictions=4)
    labels = np.concatenate([y["sop"] for x, y, _ in masked_eval_batches(
        examples, order_and_mask(masker), 16, 1).as_numpy_iterator()])
    assert (labels[np.array(flags) == 1] == SOP_SWAPPED).all()
    assert 0.4 < labels[np.array(flags) == 0].mean() < 0.6
    for random_b_weight in (1.0, 0.0):  # data.random_b_sop_weight: only the random Bs change
        weights = np.concatenate([w["sop"] for _, _, w in masked_eval_batches(
            examples, order_and_mask(masker, random_b_weight), 16, 1).as_numpy_iterator()])
        want = np.where(np.array(flags) == 1, random_b_weight, 1.0)
        np.testing.assert_array_equal(weights, want)
    model_inputs = {"token_ids", "segment_ids", "padding_mask", "mask_positions"}
    stream = epoch_stream(examples, count, 16, 100, 1, 1, per_example=order_and_mask(masker))
    x, y, weights = next(iter(stream(0)))
    assert set(x) == model_inputs and set(y) == set(weights) == {"mlm", "sop"}
    x, _, _ = next(iter(masked_eval_batches(examples, order_and_mask(masker), 16, 1)))
    assert set(x) == model_inputs


def test_sentence_order_is_half_swapped_swaps_really_swap_and_change_each_epoch():
    ids = SpecialIds(pad=0, cls=2, sep=3, mask=4)
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(400):
        size_a, size_b = rng.integers(1, 10, size=2)
        a, b = list(range(10, 10 + size_a)), list(range(50, 50 + size_b))
        examples.append(dict(zip(("token_ids", "segment_ids", "padding_mask"),
                                 pack_pair(a, b, 24, ids), strict=True)))

    def draw(epoch):
        labels = []
        for i, example in enumerate(examples):
            out = draw_sentence_order({k: tf.constant(v) for k, v in example.items()},
                                      tf.constant([epoch, i], tf.int64))
            a = [t for t in example["token_ids"] if 10 <= t < 50]
            b = [t for t in example["token_ids"] if t >= 50]
            first, second = (b, a) if int(out["sop_label"]) == SOP_SWAPPED else (a, b)
            want = pack_pair(first, second, 24, ids)
            assert out["token_ids"].numpy().tolist() == want[0].tolist()
            assert out["segment_ids"].numpy().tolist() == want[1].tolist()
            assert out["padding_mask"].numpy().tolist() == example["padding_mask"].tolist()
            labels.append(int(out["sop_label"]))
        return np.array(labels)

    epoch_1, epoch_2 = draw(1), draw(2)
    assert abs(epoch_1.mean() - 0.5) < 0.08 and abs(epoch_2.mean() - 0.5) < 0.08
    assert (draw(1) == epoch_1).all()
    # Independent draws per epoch: a pair's label is not fixed, so it cannot be memorized.
    assert 0.4 < (epoch_1 != epoch_2).mean() < 0.6


def test_short_seq_prob_makes_shorter_pairs():
    rng = np.random.default_rng(1)
    document = [[5] * 4 for _ in range(200)]

    def mean_length(prob):
        return np.mean([len(a) + len(b) for a, b in document_pairs(document, 60, prob, rng)])

    assert mean_length(1.0) < 0.75 * mean_length(0.0)


def test_pack_pair_layout():
    ids = SpecialIds(pad=0, cls=2, sep=3, mask=4)
    token_ids, segment_ids, padding_mask = pack_pair([7, 8], [9], 8, ids)
    assert token_ids.tolist() == [2, 7, 8, 3, 9, 3, 0, 0]
    assert segment_ids.tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert padding_mask.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]


# A vocabulary like a SentencePiece one: pieces starting a word ("▁...") and continuations.
# Continuation pieces are plain a-z (a piece with a digit or a CJK character starts a word).
VOCAB = (list(SPECIAL_PIECES) + [f"\u2581w{i}" for i in range(215)]
         + [f"c{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(30)])


def random_examples(count: int, length: int, seed: int, full: bool = False):
    """Packed [CLS] A [SEP] B [SEP] examples with padding (none if `full`), ids drawn from
    VOCAB's normal pieces."""
    rng = np.random.default_rng(seed)
    ids = SpecialIds(pad=0, cls=2, sep=3, mask=4)
    rows = []
    for _ in range(count):
        size_a = int(rng.integers(length // 6, length // 2))
        size_b = length - 3 - size_a if full else int(
            rng.integers(length // 6, length - 3 - size_a))
        a, b = rng.integers(5, len(VOCAB), size_a), rng.integers(5, len(VOCAB), size_b)
        rows.append(pack_pair(a.tolist(), b.tolist(), length, ids))
    return {name: np.stack([r[i] for r in rows]) for i, name in
            enumerate(("token_ids", "segment_ids", "padding_mask"))}


def mask_all(masker: NGramMasker, examples: dict, seed: int):
    features = {**examples, "sop_label": np.zeros(len(examples["token_ids"]), np.int32)}
    dataset = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices(features),
        tf.data.Dataset.random(seed=seed).batch(2),
    ).map(masker).batch(10_000)
    return next(iter(dataset.as_numpy_iterator()))


def test_ngram_masking_statistics():
    masker = NGramMasker(VOCAB, masked_lm_prob=0.15, max_predictions=40, max_ngram=3)
    examples = random_examples(400, 128, seed=0)
    x, y, weights = mask_all(masker, examples, seed=1)
    original, chosen = examples["token_ids"], weights["mlm"].astype(bool)
    rows = np.nonzero(chosen)[0]
    positions = x["mask_positions"][chosen]
    # About 15% of the maskable tokens; never a special or padding token.
    maskable = (original >= len(SPECIAL_PIECES)) & (examples["padding_mask"] == 1)
    assert maskable[rows, positions].all()
    fraction = chosen.sum() / maskable.sum()
    assert 0.14 < fraction < 0.16, fraction
    # Labels are the original tokens; tokens not chosen are unchanged.
    assert (y["mlm"][chosen] == original[rows, positions]).all()
    untouched = np.ones_like(original, bool)
    untouched[rows, positions] = False
    assert (x["token_ids"][untouched] == original[untouched]).all()
    # 80% [MASK], 10% random token, 10% unchanged.
    replaced = x["token_ids"][rows, positions]
    shares = {"mask": np.mean(replaced == 4),
              "random": np.mean((replaced != 4) & (replaced != original[rows, positions])),
              "same": np.mean(replaced == original[rows, positions])}
    assert abs(shares["mask"] - 0.8) < 0.03 and abs(shares["random"] - 0.1) < 0.03
    assert abs(shares["same"] - 0.1) < 0.03, shares
    assert (replaced >= len(SPECIAL_PIECES)).sum() == (replaced != 4).sum()


def test_ngram_spans_follow_one_over_n():
    masker = NGramMasker(VOCAB, masked_lm_prob=0.15, max_predictions=40, max_ngram=3)
    examples = random_examples(300, 128, seed=2)
    select = tf.function(masker.select_spans)
    lengths = collections.Counter()
    for i in range(len(examples["token_ids"])):
        _, words, chosen = select(examples["token_ids"][i], examples["segment_ids"][i],
                                  tf.constant([i, 3], tf.int64))
        lengths.update(words.numpy()[chosen.numpy()].tolist())
    total = sum(lengths.values())
    expected = {n: (1 / n) / (1 + 1 / 2 + 1 / 3) for n in (1, 2, 3)}
    observed = {n: lengths[n] / total for n in (1, 2, 3)}
    assert set(lengths) == {1, 2, 3} and total > 2000
    assert all(abs(observed[n] - expected[n]) < 0.035 for n in (1, 2, 3)), observed


@pytest.mark.parametrize(("length", "max_predictions"), [(64, 10), (128, 20)])
def test_ngram_masking_statistics_at_the_shipped_settings(length, max_predictions):
    """Full sequences, where 15% of the tokens comes close to `max_predictions`."""
    masker = NGramMasker(VOCAB, masked_lm_prob=0.15, max_predictions=max_predictions)
    examples = random_examples(400, length, seed=6, full=True)
    x, y, weights = mask_all(masker, examples, seed=7)
    original, chosen = examples["token_ids"], weights["mlm"].astype(bool)
    maskable = (original >= len(SPECIAL_PIECES)) & (examples["padding_mask"] == 1)
    target = np.minimum(0.15 * maskable.sum(axis=1), max_predictions)
    # 15% of the tokens, capped by max_predictions: every sequence comes close to its target
    # (a span too long for what is left must not block the shorter spans after it).
    per_sequence = chosen.sum(axis=1)
    assert (per_sequence <= max_predictions).all()
    assert (per_sequence > target - 2).all(), np.sort(per_sequence - target)[:10]
    assert 0.96 < per_sequence.sum() / target.sum() < 1.03, per_sequence.sum() / target.sum()
    rows = np.nonzero(chosen)[0]
    positions = x["mask_positions"][chosen]
    assert maskable[rows, positions].all()
    assert (y["mlm"][chosen] == original[rows, positions]).all()
    replaced = x["token_ids"][rows, positions]
    same = replaced == original[rows, positions]
    assert abs(np.mean(replaced == 4) - 0.8) < 0.04 and abs(np.mean(same) - 0.1) < 0.03
    # n-gram lengths still follow P(n) ~ 1/n.
    select = tf.function(masker.select_spans)
    lengths = collections.Counter()
    for i in range(len(original)):
        _, words, spans = select(original[i], examples["segment_ids"][i],
                                 tf.constant([i, 8], tf.int64))
        lengths.update(words.numpy()[spans.numpy()].tolist())
    total = sum(lengths.values())
    observed = {n: lengths[n] / total for n in (1, 2, 3)}
    assert all(abs(observed[n] - (1 / n) / (1 + 1 / 2 + 1 / 3)) < 0.04 for n in (1, 2, 3)), \
        observed


def test_segmenter_flags_group_masking_and_never_reach_inputs_or_labels():
    masker = NGramMasker(VOCAB, masked_lm_prob=0.5, max_predictions=12)
    examples = random_examples(200, 24, seed=4, full=True)
    flagged = examples["token_ids"].copy()
    flagged[:, 2::2] |= WHOLE_WORD_FLAG  # every other token continues the one before it
    x, y, weights = mask_all(masker, {**examples, "token_ids": flagged}, seed=5)
    tokens = examples["token_ids"]
    for row in range(200):
        positions = x["mask_positions"][row][weights["mlm"][row] > 0]
        # Labels are the tokenizer's ids; unchosen inputs too: the flags never reach the model.
        np.testing.assert_array_equal(y["mlm"][row][:len(positions)], tokens[row][positions])
        kept = np.setdiff1d(np.arange(24), positions)
        np.testing.assert_array_equal(x["token_ids"][row][kept], tokens[row][kept])
        chosen = set(positions.tolist())
        for position in chosen:
            # A flagged token is masked with the one before it, unless that one is special.
            if position % 2 == 0 and position >= 2 and tokens[row][position - 1] >= 5:
                assert position - 1 in chosen


# A vocabulary like a Chinese WordPiece one: every CJK character a word, `##` continuations
# (of Latin letters and digits inside Chinese text).
VOCAB_ZH = (list(SPECIAL_PIECES) + [chr(0x4E00 + i) for i in range(200)]
            + [f"##{chr(97 + i % 26)}{i // 26}" for i in range(45)])


@pytest.mark.parametrize(("vocab", "starts_word"), [
    (VOCAB, lambda piece: piece.startswith("\u2581")),
    (VOCAB_ZH, lambda piece: not piece.startswith("##")),
], ids=["sentencepiece-en", "wordpiece-zh"])
def test_whole_words_masked_and_max_predictions_respected(vocab, starts_word):
    masker = NGramMasker(vocab, masked_lm_prob=0.5, max_predictions=6)
    examples = random_examples(100, 64, seed=4)
    x, _, weights = mask_all(masker, examples, seed=5)
    assert weights["mlm"].shape == (100, 6) and weights["mlm"].sum(axis=1).min() >= 1
    is_start = np.array([starts_word(p) for p in vocab])
    continuations = 0
    for row in range(100):
        chosen = set(x["mask_positions"][row][weights["mlm"][row] > 0].tolist())
        for position in chosen:
            # A continuation piece is masked only together with the piece before it
            # (unless that one is special: then it starts a word).
            tokens = examples["token_ids"][row]
            if not is_start[tokens[position]] and tokens[position - 1] >= len(SPECIAL_PIECES):
                assert position - 1 in chosen
                continuations += 1
    assert continuations > 20  # the rule was exercised


def pipeline(documents, processor, seed, training=True, data=None, epochs=2):
    """Training: (stream of `epochs` epochs, steps per epoch); else (eval batches, count)."""
    masker = NGramMasker([processor.id_to_piece(i) for i in range(processor.get_piece_size())],
                         max_predictions=8)
    data = data or corpus_config()
    examples, count = pretraining_examples(lambda: iter(documents), processor, data, seed=seed)
    if not training:
        return masked_eval_batches(examples, order_and_mask(masker), 16, seed), count
    stream = epoch_stream(examples, count, 16, data.shuffle_buffer, seed, epochs,
                          per_example=order_and_mask(masker))
    return stream, -(-count // 16)


def as_arrays(dataset) -> list[np.ndarray]:
    return [np.concatenate([x["token_ids"], x["mask_positions"]], axis=1)
            for x, _, _ in dataset.as_numpy_iterator()]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_masks_reproducible_from_seed_fresh_each_epoch_and_resumable(processors, language):
    processor = processors[language]
    documents = synthetic_documents(40, seed=1, language=language)
    first, steps = pipeline(documents, processor, seed=7)
    again, _ = pipeline(documents, processor, seed=7)
    other, _ = pipeline(documents, processor, seed=8)
    assert steps > 2
    both_epochs = as_arrays(first(0))
    epoch_1, epoch_2 = both_epochs[:steps], both_epochs[steps:]
    assert len(epoch_2) == steps
    assert all((a == b).all() for a, b in zip(epoch_1, as_arrays(again(0))[:steps], strict=True))
    assert not all((a == b).all() for a, b in zip(epoch_1, as_arrays(other(0))[:steps],
                                                   strict=True))
    assert not all((a == b).all() for a, b in zip(epoch_1, epoch_2, strict=True))
    # A resumed run starting at global batch k sees exactly batches k, k+1, ...
    resumed = as_arrays(first(steps + 1))
    assert all((a == b).all() for a, b in zip(resumed, both_epochs[steps + 1:], strict=True))
    evaluation, count = pipeline(documents, processor, seed=7, training=False)
    assert count > 20 and evaluation.cardinality() == -(-count // 16)
    assert all((a == b).all() for a, b in
               zip(as_arrays(evaluation), as_arrays(evaluation), strict=True))


@pytest.mark.parametrize("language", ["en", "zh"])
def test_sop_labels_in_pipeline_are_balanced(processors, language):
    processor = processors[language]
    documents = synthetic_documents(150, seed=2, language=language)
    data = corpus_config(sequence_length=128)
    dataset, count = pipeline(documents, processor, seed=3, training=False, data=data)
    labels = np.concatenate([y["sop"] for _, y, _ in dataset.as_numpy_iterator()])
    examples, _ = pretraining_examples(lambda: iter(documents), processor, data, seed=3)
    ordered = np.array([e["random_next"] == 0 for e in examples.as_numpy_iterator()])
    assert len(labels) == count and ordered.mean() > 0.8
    assert abs(labels[ordered].mean() - 0.5) < 0.1


def test_holdout_documents_split_the_corpus(tmp_path):
    path = write_corpus(tmp_path / "c.txt", synthetic_documents(40, seed=3))
    data = corpus_config(eval_fraction=0.25)
    train = list(corpus_documents([path], data, holdout=False))
    held = list(corpus_documents([path], data, holdout=True))
    assert len(train) == 30 and len(held) == 10
    assert not {tuple(d) for d in train} & {tuple(d) for d in held}


def test_empty_corpus_is_a_clear_error(processor):
    with pytest.raises(DataError, match="has no text"):
        pipeline([], processor, seed=1)


def test_corpus_of_single_sentence_documents_is_a_clear_error(processor):
    documents = [[s] for d in synthetic_documents(20, seed=4) for s in d]
    with pytest.raises(DataError, match="none of its 1[0-9]+ documents has two or more"):
        pipeline(documents, processor, seed=1)


def test_sentences_too_long_for_any_pair_are_a_clear_error(processor):
    with pytest.raises(DataError, match="no two consecutive sentences fit together in "
                                        "`data.sequence_length` 12"):
        pipeline(synthetic_documents(20, seed=4), processor, seed=1,
                 data=corpus_config(sequence_length=12))


def test_tokenizer_without_mask_piece_is_a_clear_error(tmp_path):
    sentences = [s for d in synthetic_documents(50, seed=5) for s in d]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(tmp_path / "nomask"), vocab_size=50,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]"],
        hard_vocab_limit=False, minloglevel=2)
    no_mask = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "nomask.model"))
    with pytest.raises(ConfigError, match=r"lacks ALBERT's special pieces \['\[MASK\]'\]"):
        special_ids(no_mask, "tokenizer.proto 'nomask.model'")
