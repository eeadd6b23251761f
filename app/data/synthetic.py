"""Synthetic labelled data written by this project: review-like sentences with known labels.

Used for the default experiment (shipped in `app/resources/sample`) and by the tests, which need
single-sentence, sentence-pair and regression data without any download.

    python -m app.data.synthetic app/resources/sample          # regenerate the shipped sample
"""

import csv
import random
import sys
from pathlib import Path

SUBJECTS = ("film", "story", "cast", "soundtrack", "ending", "script", "director", "camera work",
            "dialogue", "pacing", "hero", "villain", "plot", "set design", "finale", "opening")
POSITIVE = ("wonderful", "brilliant", "moving", "delightful", "superb", "charming", "gripping",
            "clever", "beautiful", "funny", "fresh", "heartfelt", "stunning", "warm")
NEGATIVE = ("dull", "clumsy", "boring", "tedious", "awful", "bland", "messy", "shallow",
            "predictable", "lifeless", "forced", "weak", "tiresome", "flat")
INTENSIFIERS = ("", "", "really ", "quite ", "truly ", "rather ", "very ")
OPENERS = ("", "", "honestly , ", "in the end , ", "for me , ", "overall , ", "sadly , ",
           "to be fair , ")
TAILS = ("", "", " from start to finish", " at times", " for most of it", " in every scene")


def _clause(rng: random.Random, positive: bool) -> str:
    """'the <subject> was <adjective>', sometimes negated ('was not <opposite>')."""
    negated = rng.random() < 0.2
    words = NEGATIVE if positive == negated else POSITIVE
    verb = "was not" if negated else "was"
    return f"the {rng.choice(SUBJECTS)} {verb} {rng.choice(INTENSIFIERS)}{rng.choice(words)}"


def sentence(rng: random.Random, positive: bool) -> str:
    """A review sentence whose overall polarity is `positive`."""
    text = _clause(rng, positive)
    if rng.random() < 0.5:
        text += " and " + _clause(rng, positive)
    return f"{rng.choice(OPENERS)}{text}{rng.choice(TAILS)} ."


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, label) with labels `negative` / `positive`."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        rows.append((sentence(rng, positive), "positive" if positive else "negative"))
    return rows


def pair_rows(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(sentence1, sentence2, label): `agree` when both sentences share a polarity."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        first, second = rng.random() < 0.5, rng.random() < 0.5
        label = "agree" if first == second else "disagree"
        rows.append((sentence(rng, first), sentence(rng, second), label))
    return rows


def regression_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, score): four aspects; the score counts the positive ones (0 to 4)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        polarities = [rng.random() < 0.5 for _ in range(4)]
        text = " , ".join(_clause(rng, p) for p in polarities)
        rows.append((text + " .", f"{sum(polarities):.1f}"))
    return rows


def write_tsv(path: Path, header: tuple[str, ...], rows) -> Path:
    """Write a GLUE-style TSV (header row, tab-separated, no quoting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_sample(out_dir: Path, train_size: int = 4000, eval_size: int = 500) -> None:
    """The shipped sentiment sample: train.tsv and dev.tsv with columns sentence, label."""
    write_tsv(out_dir / "train.tsv", ("sentence", "label"), sentiment_rows(train_size, seed=1))
    write_tsv(out_dir / "dev.tsv", ("sentence", "label"), sentiment_rows(eval_size, seed=2))


if __name__ == "__main__":
    write_sample(Path(sys.argv[1]))
