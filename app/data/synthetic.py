"""Synthetic labelled data written by this project: review-like sentences with known labels.

Used for the default experiment (shipped in `app/resources/sample`), the multi-label recipe
(`app/resources/topics`, `experiment=topics`) and by the tests, which need single-sentence,
sentence-pair, multi-label and regression data without any download.

    python -m app.data.synthetic app/resources/sample          # regenerate the shipped sample
    python -m app.data.synthetic app/resources/topics topics   # regenerate the multi-label topics
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


# Multi-label topics: each topic's words; a text mentions one to three topics, one clause each.
TOPICS = {
    "sports": ("match", "coach", "league", "goal", "stadium", "team", "season", "referee"),
    "politics": ("election", "senate", "minister", "vote", "policy", "campaign", "parliament",
                 "treaty"),
    "science": ("experiment", "telescope", "laboratory", "physics", "genome", "theory",
                "molecule", "research"),
    "food": ("recipe", "bakery", "soup", "restaurant", "chef", "dessert", "spice", "menu"),
    "travel": ("flight", "hotel", "passport", "island", "museum", "train ride", "beach",
               "luggage"),
    "music": ("concert", "guitar", "album", "orchestra", "singer", "melody", "festival",
              "drummer"),
}
# Verbs and the words around them are shared by every topic: only the nouns tell the topics.
TOPIC_VERBS = ("was discussed", "made the news", "surprised everyone", "was mentioned",
               "came up again", "drew a crowd", "was in the headlines", "kept people talking")
TOPIC_OPENERS = ("", "", "yesterday ", "this week ", "apparently ", "once again ", "today ")
TOPIC_FILLERS = ("", "", " , or so we heard", " , as expected", " , sadly", " , for a change")


def topic_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(text, labels): texts about one to three topics (1: 50%, 2: 35%, 3: 15%), labels the
    topics joined by "," in the order they are mentioned (every text has at least one)."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    rows = []
    for _ in range(n):
        count = rng.choices((1, 2, 3), weights=(50, 35, 15))[0]
        chosen = rng.sample(names, count)
        clauses = [f"{rng.choice(TOPIC_OPENERS)}the {rng.choice(TOPICS[topic])} "
                   f"{rng.choice(TOPIC_VERBS)}" for topic in chosen]
        text = " and ".join(clauses) + rng.choice(TOPIC_FILLERS) + " ."
        rows.append((text, ",".join(chosen)))
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


def write_topics(out_dir: Path, train_size: int = 2400, eval_size: int = 400) -> None:
    """The shipped multi-label sample: train.tsv and dev.tsv with columns text, labels."""
    write_tsv(out_dir / "train.tsv", ("text", "labels"), topic_rows(train_size, seed=11))
    write_tsv(out_dir / "dev.tsv", ("text", "labels"), topic_rows(eval_size, seed=12))


if __name__ == "__main__":
    # python -m app.data.synthetic <out_dir> [sample|topics]
    kind = sys.argv[2] if len(sys.argv) > 2 else "sample"
    {"sample": write_sample, "topics": write_topics}[kind](Path(sys.argv[1]))
