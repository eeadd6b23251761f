"""What a user tries first for NER: a linear-chain CRF (sklearn-crfsuite) on word/char features.

    python docs/scripts/crf_baseline.py --train ../shared/data/conll2003/train.conll \
        --eval ../shared/data/conll2003/dev.conll ../shared/data/conll2003/test.conll

Reads CoNLL-style files (token and tag split by a tab or spaces, the tag last, a blank line between
sentences, `-DOCSTART-` lines skipped), trains L-BFGS with elastic net (`--c1`, `--c2`) on
`--train`, and prints the training time and, per `--eval` file, its sentences, seqeval's
entity-level micro precision / recall / F1 in strict IOB2 mode and the F1 of each entity type.
Features: `word` (the sklearn-crfsuite tutorial set, no POS: lower-cased word, 2/3-letter suffixes,
isupper/istitle/isdigit, neighbours -2..+2) or `char` (one character per token: the character,
neighbours -2..+2, bigrams with the left and right neighbour, digit/Latin/punctuation/CJK class);
`--features auto` picks `char` when most training tokens are single CJK characters.
L-BFGS has no randomness, so the same inputs print the same scores (the time aside); `--seed N`
shuffles the training sentences with that seed (default: file order).
Needs `pip install sklearn-crfsuite seqeval` (not dependencies of the app).
"""

import argparse
import random
import time
import unicodedata
from pathlib import Path

import sklearn_crfsuite
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

Sentence = tuple[list[str], list[str]]


def read_conll(path: Path) -> list[Sentence]:
    sentences, tokens, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
        elif fields[0] != "-DOCSTART-":
            tokens.append(fields[0])
            tags.append(fields[-1].strip())
    return sentences


def word_features(words: list[str], i: int) -> dict:
    word = words[i]
    features = {"bias": 1.0, "word.lower()": word.lower(), "word[-3:]": word[-3:],
                "word[-2:]": word[-2:], "word.isupper()": word.isupper(),
                "word.istitle()": word.istitle(), "word.isdigit()": word.isdigit()}
    for offset in (-2, -1, 1, 2):
        j = i + offset
        if 0 <= j < len(words):
            features.update({f"{offset:+d}:word.lower()": words[j].lower(),
                             f"{offset:+d}:word.istitle()": words[j].istitle(),
                             f"{offset:+d}:word.isupper()": words[j].isupper()})
        elif abs(offset) == 1:
            features["BOS" if offset < 0 else "EOS"] = True
    return features


def char_class(char: str) -> str:
    if char.isdigit():
        return "digit"
    if unicodedata.name(char, "").startswith(("LATIN", "FULLWIDTH LATIN")):
        return "latin"
    if unicodedata.category(char).startswith("P"):
        return "punct"
    return "cjk" if unicodedata.name(char, "").startswith("CJK") else "other"


def char_features(chars: list[str], i: int) -> dict:
    padded = ["<s>", "<s>", *chars, "</s>", "</s>"]
    c = {offset: padded[i + 2 + offset] for offset in (-2, -1, 0, 1, 2)}
    return {"bias": 1.0, "c0": c[0], "c-1": c[-1], "c-2": c[-2], "c+1": c[1], "c+2": c[2],
            "c-1c0": c[-1] + c[0], "c0c+1": c[0] + c[1], "class": char_class(c[0])}


def featurize(sentences: list[Sentence], kind: str) -> list[list[dict]]:
    function = char_features if kind == "char" else word_features
    return [[function(tokens, i) for i in range(len(tokens))] for tokens, _ in sentences]


def is_cjk_char(token: str) -> bool:
    return len(token) == 1 and unicodedata.name(token, "").startswith("CJK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, nargs="+", required=True)
    parser.add_argument("--features", default="auto", choices=("auto", "word", "char"))
    parser.add_argument("--c1", type=float, default=0.1)
    parser.add_argument("--c2", type=float, default=0.1)
    parser.add_argument("--max-iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    train = read_conll(args.train)
    if args.seed is not None:
        random.Random(args.seed).shuffle(train)
    kind = args.features
    if kind == "auto":
        tokens = [token for sentence, _ in train for token in sentence]
        kind = "char" if sum(map(is_cjk_char, tokens)) > len(tokens) / 2 else "word"
    crf = sklearn_crfsuite.CRF(algorithm="lbfgs", c1=args.c1, c2=args.c2,
                               max_iterations=args.max_iterations, all_possible_transitions=True)
    start = time.perf_counter()
    crf.fit(featurize(train, kind), [tags for _, tags in train])
    seconds = time.perf_counter() - start
    print(f"train {args.train}: {len(train)} sentences, {kind} features, "
          f"c1 {args.c1} c2 {args.c2}, max {args.max_iterations} iterations, seed {args.seed}, "
          f"{seconds:.1f} s (features + fit)")
    print(f"{'file':<40} {'sentences':>9} {'precision':>9} {'recall':>9} {'F1':>9}  per-type F1")
    for path in args.eval:
        sentences = read_conll(path)
        predicted = crf.predict(featurize(sentences, kind))
        report = classification_report([tags for _, tags in sentences], predicted, mode="strict",
                                       scheme=IOB2, output_dict=True, zero_division=0)
        micro = report["micro avg"]
        types = sorted(name for name in report if not name.endswith(" avg"))
        per_type = " ".join(f"{name} {report[name]['f1-score']:.4f}" for name in types)
        print(f"{str(path):<40} {len(sentences):>9} {micro['precision']:>9.4f} "
              f"{micro['recall']:>9.4f} {micro['f1-score']:>9.4f}  {per_type}")


if __name__ == "__main__":
    main()
