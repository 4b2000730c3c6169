"""Pipeline step 1: train a wine classifier and write what the later steps need.

    python examples/ci/train.py OUT_DIR [--kind forest|extra|constant] [--seed N]

OUT_DIR gets `model.joblib` (the fitted estimator, for `roost export`), `train.csv` (training
rows with the `target` column, for `roost export --sample` and `roost profile`) and
`golden.csv` (held-out rows with `target`, for `roost validate --golden`). `--kind constant`
trains the deliberately bad model of the examples (always predicts one class), so the pipeline
and its tests can show a rejected or rolled-back version.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_wine
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def _write_csv(path: Path, names: list[str], x: np.ndarray, y: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*names, "target"])
        for row, label in zip(x, y, strict=True):
            w.writerow([f"{v:.6g}" for v in row] + [int(label)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--kind", choices=["forest", "extra", "constant"], default="forest")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    data = load_wine()
    names = [n.replace("/", "_") for n in data.feature_names]
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    if args.kind == "forest":
        clf = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=args.seed)
        clf.fit(x_train, y_train)
    elif args.kind == "extra":
        clf = ExtraTreesClassifier(n_estimators=80, max_depth=8, random_state=args.seed)
        clf.fit(x_train, y_train)
    else:
        clf = LogisticRegression(max_iter=200).fit(x_train, y_train)
        clf.coef_ = np.zeros_like(clf.coef_)  # always predicts class 2
        clf.intercept_ = np.array([0.0, 0.0, 5.0])
    args.out.mkdir(parents=True, exist_ok=True)
    joblib.dump(clf, args.out / "model.joblib")
    _write_csv(args.out / "train.csv", names, x_train, y_train)
    _write_csv(args.out / "golden.csv", names, x_test, y_test)
    print(f"trained {args.kind} on {len(x_train)} rows; {len(x_test)} golden rows")


if __name__ == "__main__":
    main()
