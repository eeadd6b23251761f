"""What a user tries first: TF-IDF n-grams + logistic regression, on a labelled TSV split.

    python docs/scripts/tfidf_baseline.py ../shared/data/chnsenticorp --analyzer char --ngrams 1 3

Reads `train.tsv`, fits on it, prints the accuracy on `dev.tsv` and `test.tsv` (those present).
Needs scikit-learn only (a dependency of the app).
"""

import argparse
import csv
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline


def read(path: Path, text: str, label: str) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8", newline="") as rows:
        table = list(csv.DictReader(rows, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[text] for row in table], [row[label] for row in table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--text", default="text")
    parser.add_argument("--label", default="label")
    parser.add_argument("--analyzer", default="char", choices=("char", "word"))
    parser.add_argument("--ngrams", type=int, nargs=2, default=(1, 3))
    parser.add_argument("--C", type=float, default=4.0)
    args = parser.parse_args()
    model = make_pipeline(
        TfidfVectorizer(analyzer=args.analyzer, ngram_range=tuple(args.ngrams), sublinear_tf=True),
        LogisticRegression(C=args.C, max_iter=2000))
    model.fit(*read(args.folder / "train.tsv", args.text, args.label))
    for split in ("dev", "test"):
        path = args.folder / f"{split}.tsv"
        if path.is_file():
            texts, labels = read(path, args.text, args.label)
            print(f"{split}: accuracy {model.score(texts, labels):.4f} ({len(labels)} rows)")


if __name__ == "__main__":
    main()
