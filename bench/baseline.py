"""The line a tiny BERT has to beat: TF-IDF n-grams + logistic regression on the same split.

Word 1-2 grams and character 1-4 grams (within word boundaries, which suits Korean's agglutinated
words as well as English), sublinear tf, one logistic regression whose C is chosen on the dev split.
The dev split is the one `pocketbert finetune --dev-fraction F` carves (the same rows), or a dev file;
the test file is scored once with the chosen C.

With `--compare results.json` (a `pocketbert finetune` output on the same data) the summary also gives
the fine-tuned model's test accuracy (mean over seeds) and its margin over this line.

    python bench/baseline.py --task nsmc --train ../shared/data/nsmc/ratings_train.txt.gz \\
        --dev-fraction 0.05 --test ../shared/data/nsmc/ratings_test.txt
    python bench/baseline.py --task sst2 --train ../shared/data/sst2/train.tsv --dev-fraction 0.05 \\
        --test ../shared/data/sst2/dev.tsv

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from training.tasks import DEFAULT_DEV_UNIT, DEV_UNITS, TASK_FORMATS, read_task, split_dev

C_GRID = (1.0, 3.0, 10.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--task", required=True, choices=TASK_FORMATS, help="data format, as for `pocketbert finetune`"
    )
    parser.add_argument("--train", required=True, help="training file")
    parser.add_argument("--dev", help="dev file that chooses C (or carve one with --dev-fraction)")
    parser.add_argument(
        "--dev-fraction", type=float, help="hold out this share of --train as dev (finetune's rows)"
    )
    parser.add_argument(
        "--dev-unit",
        choices=DEV_UNITS,
        default=DEFAULT_DEV_UNIT,
        help="what --dev-fraction draws, as for `pocketbert finetune`: rows (default) or whole sentences",
    )
    parser.add_argument("--test", required=True, help="test file, scored once with the chosen C")
    parser.add_argument("--text-column", default="text", help="text column for --task csv (default text)")
    parser.add_argument("--label-column", default="label", help="label column for --task csv (default label)")
    parser.add_argument("--limit-train", type=int, help="use the first N training examples (a quick run)")
    parser.add_argument("--compare", help="a `pocketbert finetune` results.json to set beside the baseline")
    parser.add_argument("--out", help="also write the summary JSON to this file")
    args = parser.parse_args(argv)
    if (args.dev is None) == (args.dev_fraction is None):
        parser.error("give either --dev or --dev-fraction")
    return args


def vectorizer():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            (
                "words",
                TfidfVectorizer(
                    analyzer="word",
                    ngram_range=(1, 2),
                    min_df=2,
                    sublinear_tf=True,
                    token_pattern=r"(?u)\b\w+\b",
                ),
            ),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True)),
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    from sklearn.linear_model import LogisticRegression

    args = parse_args(argv)
    train = read_task(args.task, args.train, None, args.text_column, args.label_column)
    if args.dev_fraction is not None:
        train, dev = split_dev(train, args.dev_fraction, unit=args.dev_unit)
    else:
        dev = read_task(args.task, args.dev, train.label_names, args.text_column, args.label_column)
    test = read_task(args.task, args.test, train.label_names, args.text_column, args.label_column)
    if args.limit_train:
        train.texts, train.labels = train.texts[: args.limit_train], train.labels[: args.limit_train]

    started = time.perf_counter()
    features = vectorizer()
    x_train = features.fit_transform(train.texts)
    x_dev, x_test = features.transform(dev.texts), features.transform(test.texts)
    dev_scores = {}
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(x_train, train.labels)
        dev_scores[c] = float((clf.predict(x_dev) == dev.labels).mean())
        print(f"C={c:g}: dev accuracy {dev_scores[c]:.4f}")
    best_c = max(dev_scores, key=dev_scores.get)
    clf = LogisticRegression(C=best_c, max_iter=2000).fit(x_train, train.labels)
    test_acc = float((clf.predict(x_test) == test.labels).mean())
    summary = {
        "bench": "baseline",
        "task": args.task,
        "model": "tfidf word1-2 + char1-4, logistic regression",
        "train": len(train),
        "dev": len(dev),
        "test": len(test),
        "features": int(x_train.shape[1]),
        "C": best_c,
        "dev_acc": round(dev_scores[best_c], 4),
        "test_acc": round(test_acc, 4),
        "majority_test_acc": round(test.majority_accuracy(), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.compare:
        results = json.loads(Path(args.compare).read_text(encoding="utf-8"))
        model_acc = results.get("test_acc_mean")
        summary["compare"] = {
            "results": args.compare,
            "init": results.get("init"),
            "test_acc_mean": model_acc,
            "test_acc_std": results.get("test_acc_std"),
            "runs": results.get("runs"),
        }
        if model_acc is not None:
            summary["margin_points"] = round(100 * (model_acc - test_acc), 2)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
