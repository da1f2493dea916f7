#!/usr/bin/env python3
"""Train one model of each estimator family users bring, export it with skl2onnx, and write
scikit-learn's own answers on held-out rows, for the model-server's estimator-matrix test.

    matrix.py OUT_DIR        (matrix.sh makes the pinned venv first)

For each case NAME, OUT_DIR gets NAME.onnx (the skl2onnx export, as a user would make it:
`to_onnx(estimator, X[:1], options={"zipmap": False})` for classifiers) and NAME.json:

    {"name", "estimator", "kind": "classifier" | "regressor" | "refused",
     "reason": a word the server's refusal must contain (refused),
     "labels": [...] (classifiers: scikit-learn's classes_, numbers or strings),
     "targets": T (regressors),
     "rows": [{"features": [...], "prediction": label | value | [values], "probabilities": [...]}]}

The data sets are made here, from a fixed seed, so nothing is downloaded. Every case holds out
rows it was not trained on; those are the rows written.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

SEED = 0
HELD_OUT = 40


def binary():
    """A bank-notes-like problem: four features, two classes, some overlap."""
    x, y = make_classification(
        n_samples=400, n_features=4, n_informative=3, n_redundant=1, class_sep=0.8, random_state=SEED
    )
    return x.astype(np.float32), y


def multiclass():
    iris = load_iris()
    return iris.data.astype(np.float32), iris.target


def multiclass_strings():
    iris = load_iris()
    return iris.data.astype(np.float32), np.array([str(iris.target_names[t]) for t in iris.target])


def binary_offset_labels():
    """Two classes labelled 3 and 7: the label is the class value, not its index."""
    x, y = binary()
    return x, np.where(y == 1, 7, 3)


def regression(targets: int = 1):
    x, y = make_regression(n_samples=300, n_features=5, n_targets=targets, noise=5.0, random_state=SEED)
    return x.astype(np.float32), y


CLASSIFIERS = {
    "logistic_binary": (lambda: LogisticRegression(max_iter=1000), binary),
    "logistic_multiclass": (lambda: LogisticRegression(max_iter=1000), multiclass),
    "decision_tree_multiclass": (lambda: DecisionTreeClassifier(max_depth=5, random_state=SEED), multiclass),
    "random_forest_binary": (lambda: RandomForestClassifier(n_estimators=30, max_depth=6, random_state=SEED), binary),
    "random_forest_multiclass": (
        lambda: RandomForestClassifier(n_estimators=20, max_depth=5, random_state=SEED),
        multiclass,
    ),
    "random_forest_string_labels": (
        lambda: RandomForestClassifier(n_estimators=20, max_depth=5, random_state=SEED),
        multiclass_strings,
    ),
    "random_forest_offset_labels": (
        lambda: RandomForestClassifier(n_estimators=20, max_depth=5, random_state=SEED),
        binary_offset_labels,
    ),
    "extra_trees_multiclass": (lambda: ExtraTreesClassifier(n_estimators=20, max_depth=6, random_state=SEED), multiclass),
    "gradient_boosting_binary": (
        lambda: GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=SEED),
        binary,
    ),
    "gradient_boosting_multiclass": (
        lambda: GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=SEED),
        multiclass,
    ),
    "hist_gradient_boosting_binary": (
        lambda: HistGradientBoostingClassifier(max_iter=30, random_state=SEED),
        binary,
    ),
    "hist_gradient_boosting_multiclass": (
        lambda: HistGradientBoostingClassifier(max_iter=20, random_state=SEED),
        multiclass,
    ),
}

REGRESSORS = {
    "linear_regression": (LinearRegression, lambda: regression(1)),
    "ridge_two_targets": (lambda: Ridge(alpha=1.0), lambda: regression(2)),
    "decision_tree_regressor": (lambda: DecisionTreeRegressor(max_depth=6, random_state=SEED), lambda: regression(1)),
    "random_forest_regressor": (
        lambda: RandomForestRegressor(n_estimators=20, max_depth=6, random_state=SEED),
        lambda: regression(1),
    ),
    "random_forest_two_targets": (
        lambda: RandomForestRegressor(n_estimators=20, max_depth=6, random_state=SEED),
        lambda: regression(2),
    ),
    "extra_trees_regressor": (
        lambda: ExtraTreesRegressor(n_estimators=20, max_depth=6, random_state=SEED),
        lambda: regression(1),
    ),
    "gradient_boosting_regressor": (
        lambda: GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=SEED),
        lambda: regression(1),
    ),
    "hist_gradient_boosting_regressor": (
        lambda: HistGradientBoostingRegressor(max_iter=30, random_state=SEED),
        lambda: regression(1),
    ),
}


# Exports the server must refuse at start, and a word its reason must contain: an op it has no
# implementation of, and a classifier exported with skl2onnx's default ZipMap output (a sequence
# of maps, not the probabilities tensor).
REFUSED = {
    "refused_svm": (lambda: SVC(probability=True, random_state=SEED), multiclass, {"zipmap": False}, "SVMClassifier"),
    "refused_zipmap": (lambda: LogisticRegression(max_iter=1000), multiclass, None, "zipmap"),
}


def plain(value):
    """A JSON value from a numpy scalar or array."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.str_):
        return str(value)
    return value


def write_case(out: pathlib.Path, name: str, estimator, kind: str, x_test, extra: dict, rows: list) -> None:
    (out / f"{name}.json").write_text(
        json.dumps({"name": name, "estimator": type(estimator).__name__, "kind": kind, **extra, "rows": rows}, indent=1)
        + "\n"
    )


def main() -> int:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, (make, data) in CLASSIFIERS.items():
        x, y = data()
        x_train, x_test, y_train, _ = train_test_split(x, y, test_size=HELD_OUT, random_state=SEED, stratify=y)
        estimator = make().fit(x_train, y_train)
        onx = to_onnx(estimator, x_train[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
        (out / f"{name}.onnx").write_bytes(onx.SerializeToString())
        predicted = estimator.predict(x_test)
        probabilities = estimator.predict_proba(x_test)
        rows = [
            {"features": plain(f), "prediction": plain(p), "probabilities": plain(q)}
            for f, p, q in zip(x_test, predicted, probabilities)
        ]
        write_case(out, name, estimator, "classifier", x_test, {"labels": plain(estimator.classes_)}, rows)
        print(f"{name}: {type(estimator).__name__}, {len(estimator.classes_)} classes, {len(rows)} held-out rows")
    for name, (make, data, options, reason) in REFUSED.items():
        x, y = data()
        estimator = make().fit(x, y)
        onx = to_onnx(estimator, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
        (out / f"{name}.onnx").write_bytes(onx.SerializeToString())
        write_case(out, name, estimator, "refused", x, {"reason": reason}, [])
        print(f"{name}: {type(estimator).__name__}, must be refused naming {reason!r}")
    for name, (make, data) in REGRESSORS.items():
        x, y = data()
        x_train, x_test, y_train, _ = train_test_split(x, y, test_size=HELD_OUT, random_state=SEED)
        estimator = make().fit(x_train, y_train)
        onx = to_onnx(estimator, x_train[:1], target_opset={"": 17, "ai.onnx.ml": 3})
        (out / f"{name}.onnx").write_bytes(onx.SerializeToString())
        predicted = estimator.predict(x_test)
        targets = 1 if predicted.ndim == 1 else predicted.shape[1]
        rows = [{"features": plain(f), "prediction": plain(p)} for f, p in zip(x_test, predicted)]
        write_case(out, name, estimator, "regressor", x_test, {"targets": targets}, rows)
        print(f"{name}: {type(estimator).__name__}, {targets} target(s), {len(rows)} held-out rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
