"""Build the example models, their reference profiles and sample traffic.

Usage: ``python examples/build_models.py [--out examples/models] [--force]``

Writes ``<out>/<name>/{model.onnx, profile.json, sample.json}`` for every model in
``MODELS`` (see examples/README.md for what each one is for).  Everything is derived from
data sets scikit-learn ships or generates, with fixed seeds, so two runs produce the same
predictions.  A run is skipped when the outputs exist and were built by the same code (a hash
of this script and the roost modules it uses, stored in ``<out>/.build-hash``); concurrent runs
(e.g. two pytest sessions) serialise on a lock file.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from roost_serving import drift, export, profile
from sklearn.datasets import load_wine, make_classification
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression

HERE = Path(__file__).resolve().parent
SEED = 20240611
SAMPLE_ROWS = 400
FILES = ("model.onnx", "profile.json", "sample.json")

Matrix = npt.NDArray[np.float64]


def code_hash() -> str:
    """Hash of everything that decides the outputs: this script and the roost modules used."""
    h = hashlib.sha256()
    for module in (Path(__file__), Path(drift.__file__), Path(profile.__file__)):
        h.update(module.read_bytes())
    h.update(Path(export.__file__).read_bytes())
    return h.hexdigest()[:16]


def wine() -> tuple[Matrix, npt.NDArray[np.int64], list[str]]:
    """scikit-learn's wine data set: 178 rows, 13 numeric features, 3 classes."""
    data = load_wine()
    return data.data.astype(np.float64), data.target.astype(np.int64), list(data.feature_names)


def wine_traffic(x: Matrix) -> Matrix:
    """Live traffic clients send: wine rows resampled with 2% per-feature noise, rounded."""
    rng = np.random.default_rng(SEED)
    rows = x[rng.integers(0, x.shape[0], SAMPLE_ROWS)]
    noise = rng.normal(0.0, 0.02, rows.shape) * x.std(axis=0)
    out: Matrix = np.round(np.clip(rows + noise, 0.0, None), 4)
    return out


def wine_traffic_labels(y: npt.NDArray[np.int64]) -> list[int]:
    """The true class of each `wine_traffic` row (the same draw of rows), for feedback."""
    rng = np.random.default_rng(SEED)
    return [int(v) for v in y[rng.integers(0, y.shape[0], SAMPLE_ROWS)]]


def write_model(
    dest: Path,
    model: Any,
    train: Matrix,
    names: list[str],
    traffic: Matrix,
    description: str,
    bins: int = 10,
    labels: list[int] | None = None,
) -> str:
    """Convert, verify on the training rows, profile on them, and write the three files."""
    x32 = train.astype(np.float32)
    onx = export.convert(model, train.shape[1])
    check = export.verify(model, onx, x32)
    if not check.ok:
        raise SystemExit(
            f"{dest.name}: ONNX disagrees with scikit-learn on {check.mismatches} rows"
        )
    dest.mkdir(parents=True)
    (dest / "model.onnx").write_bytes(onx)
    prof = profile.build_profile(train, str(dest / "model.onnx"), feature_names=names, bins=bins)
    prof.save(str(dest / "profile.json"))
    sample = {
        "description": description,
        "input": "X",
        "datatype": "FP32",
        "feature_names": names if traffic.shape[1] == len(names) else None,
        "rows": traffic.tolist(),
    }
    if labels is not None:
        sample["labels"] = labels  # ground truth per row: the traffic's feedback
    (dest / "sample.json").write_text(json.dumps(sample) + "\n")
    pred = prof.prediction
    classes = (
        dict(zip(pred.classes, pred.frequencies, strict=True))
        if isinstance(pred, profile.ClassificationPrediction)
        else {}
    )
    summary = ", ".join(f"{c}: {f:.2f}" for c, f in classes.items())
    return f"{train.shape[1]} features, reference predictions {{{summary}}}"


def build_wine_v1(dest: Path) -> str:
    x, y, names = wine()
    clf = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=SEED).fit(x, y)
    labels = wine_traffic_labels(y)
    return write_model(
        dest, clf, x, names, wine_traffic(x), "wine traffic (13 features)", labels=labels
    )


def build_wine_v2(dest: Path) -> str:
    # A different good model (extremely randomised trees): predicts almost exactly like v1.
    x, y, names = wine()
    clf = ExtraTreesClassifier(n_estimators=80, max_depth=8, random_state=SEED + 1).fit(x, y)
    return write_model(dest, clf, x, names, wine_traffic(x), "wine traffic (13 features)")


def build_wine_bad_signature(dest: Path) -> str:
    # Trained without the last feature: X is [-1, 12], so the standard 13-feature request
    # clients send (sample.json) is refused with 400.
    x, y, names = wine()
    clf = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=SEED).fit(x[:, :12], y)
    return write_model(
        dest, clf, x[:, :12], names[:12], wine_traffic(x), "wine traffic (13 features)"
    )


def build_wine_shifted(dest: Path) -> str:
    # Trained and profiled on wine data scaled by 1.3 and shifted by one standard deviation:
    # ordinary wine traffic then shows large PSI against this model's own profile.
    x, y, names = wine()
    shifted = x * 1.3 + x.std(axis=0)
    clf = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=SEED).fit(shifted, y)
    return write_model(dest, clf, shifted, names, wine_traffic(x), "wine traffic (13 features)")


def build_wine_constant(dest: Path) -> str:
    # A logistic regression with zeroed weights and a dominant intercept: it declares all three
    # classes but always predicts class 2, so its predictions diverge sharply from v1's.
    x, y, names = wine()
    with warnings.catch_warnings():
        # Convergence does not matter: the fitted weights are replaced right below.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=50).fit(x, y)
    clf.coef_ = np.zeros_like(clf.coef_)
    clf.intercept_ = np.array([0.0, 0.0, 5.0])
    return write_model(dest, clf, x, names, wine_traffic(x), "wine traffic (13 features)")


def build_wine_permuted(dest: Path) -> str:
    # Worse, with the same prediction mix: trained (deep trees, so it memorises) on labels
    # shuffled among half of the rows. Shuffling keeps the class mix, so its predictions on
    # wine traffic split like v1's (divergence passes) and its inputs are v1's (drift
    # passes), but about a third of its answers are wrong: only the accuracy gate sees it.
    x, y, names = wine()
    rng = np.random.default_rng(SEED + 2)
    noisy = y.copy()
    half = rng.choice(y.shape[0], y.shape[0] // 2, replace=False)
    noisy[half] = noisy[rng.permutation(half)]
    clf = RandomForestClassifier(n_estimators=50, random_state=SEED).fit(x, noisy)
    return write_model(dest, clf, x, names, wine_traffic(x), "wine traffic (13 features)")


def build_wine_regressor(dest: Path) -> str:
    # A regressor (the wine class as a number) profiled over 20 output bins: the e2e tests
    # canary a copy of it against itself at low traffic (an A/A rollout that must pass).
    x, y, names = wine()
    reg = LinearRegression().fit(x, y.astype(np.float64))
    return write_model(dest, reg, x, names, wine_traffic(x), "wine traffic (13 features)", 20)


def build_bench_rf20(dest: Path) -> str:
    # The serving benchmark model: 100 trees of depth 8 over 20 features.
    x, y = make_classification(
        n_samples=4000, n_features=20, n_informative=12, n_classes=3, random_state=SEED
    )
    train, live = x[:3000], x[3000 : 3000 + SAMPLE_ROWS]
    names = [f"f{i}" for i in range(20)]
    clf = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=SEED, n_jobs=1)
    clf.fit(train, y[:3000])
    return write_model(
        dest, clf, train, names, np.round(live, 4), "synthetic traffic (20 features)"
    )


MODELS: dict[str, Callable[[Path], str]] = {
    "wine-v1": build_wine_v1,
    "wine-v2": build_wine_v2,
    "wine-bad-signature": build_wine_bad_signature,
    "wine-shifted": build_wine_shifted,
    "wine-constant": build_wine_constant,
    "wine-permuted": build_wine_permuted,
    "wine-regressor": build_wine_regressor,
    "bench-rf20": build_bench_rf20,
}


def up_to_date(out: Path, digest: str) -> bool:
    """True when every model's files exist and were built by this code."""
    stamp = out / ".build-hash"
    if not stamp.is_file() or stamp.read_text().strip() != digest:
        return False
    return all((out / name / f).is_file() for name in MODELS for f in FILES)


def build_all(out: Path, *, force: bool = False) -> dict[str, Path]:
    """Build every example model under ``out`` (idempotent); returns name -> directory."""
    out.mkdir(parents=True, exist_ok=True)
    digest = code_hash()
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and up_to_date(out, digest):
            print(f"examples: up to date in {out} (build {digest})")
            return {name: out / name for name in MODELS}
        (out / ".build-hash").unlink(missing_ok=True)
        for name, build in MODELS.items():
            started = time.perf_counter()
            # Build next to the target, then swap in: a reader never sees half a model.
            with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}-") as tmp:
                what = build(Path(tmp) / name)
                shutil.rmtree(out / name, ignore_errors=True)
                (Path(tmp) / name).rename(out / name)
            print(f"examples: built {name}: {what} ({time.perf_counter() - started:.1f}s)")
        (out / ".build-hash").write_text(digest + "\n")
    return {name: out / name for name in MODELS}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "models", help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    build_all(args.out, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
