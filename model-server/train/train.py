#!/usr/bin/env python3
"""Train the bundled iris classifier and export it to ONNX.

Reproducible from the iris copy that scikit-learn ships (no download):

    model-server/train/train.sh          # makes a pinned venv, then runs this

Writes, next to the model-server:

- model/iris.onnx               the model the server embeds: the fitted LogisticRegression written as a
                                plain ONNX graph (MatMul, Add, Softmax, ArgMax; standard opset only)
- model/iris-reference.json     scikit-learn's own answers on all 150 rows; the Rust test
                                `predictions_match_training_framework` checks tract gives the same
- model/MODEL_CARD.md           version, sha256, accuracy, how it was made
- optionally a joblib pickle (--joblib PATH) of the very same estimator, which the benchmark's
  Flask/gunicorn and BentoML reference servers load, so all servers answer with one model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import platform

import numpy as np
import onnx
import sklearn
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

MODEL_NAME = "iris"
# Bump when the training recipe or its pinned versions change; the server reports it in /version.
MODEL_VERSION = "1.0.0"
ONNX_OPSET = 17
ONNX_IR_VERSION = 8


def build_estimator() -> LogisticRegression:
    # lbfgs is deterministic; max_iter high enough to converge on unscaled iris features.
    return LogisticRegression(max_iter=1000)


def to_onnx_graph(estimator: LogisticRegression, n_features: int) -> onnx.ModelProto:
    """Multinomial logistic regression as four standard ONNX ops.

    predict_proba(X) = softmax(X @ coef_.T + intercept_) and predict(X) = argmax of the same logits,
    which is exactly what scikit-learn computes for a multinomial LogisticRegression. skl2onnx's export
    of the same estimator adds ai.onnx.ml LinearClassifier + Normalizer nodes (about 12 ops after
    tract's optimisation, 8 us per request against 4.6 us for this graph; docs/performance.md).
    """
    n_classes = len(estimator.classes_)
    assert list(estimator.classes_) == list(range(n_classes)), "labels must be 0..n-1"
    coefficients = numpy_helper.from_array(estimator.coef_.T.astype(np.float32), "coefficients")
    intercepts = numpy_helper.from_array(estimator.intercept_.astype(np.float32), "intercepts")
    nodes = [
        helper.make_node("MatMul", ["X", "coefficients"], ["scores"]),
        helper.make_node("Add", ["scores", "intercepts"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n_features])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes]),
        ],
        [coefficients, intercepts],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="release/model-server/train"
    )
    model.ir_version = ONNX_IR_VERSION
    return model


def main() -> None:
    here = pathlib.Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=pathlib.Path, default=here.parent / "model")
    parser.add_argument("--joblib", type=pathlib.Path, help="also pickle the fitted estimator here")
    args = parser.parse_args()

    iris = load_iris()
    x = iris.data.astype(np.float32)
    y = iris.target

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    cv_scores = cross_val_score(build_estimator(), x, y, cv=folds)

    estimator = build_estimator().fit(x, y)
    train_accuracy = float(estimator.score(x, y))

    onx = to_onnx_graph(estimator, n_features=x.shape[1])
    model_bytes = onx.SerializeToString()
    onnx.checker.check_model(onx)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.out_dir / "iris.onnx"
    model_path.write_bytes(model_bytes)
    sha256 = hashlib.sha256(model_bytes).hexdigest()

    predictions = estimator.predict(x)
    probabilities = estimator.predict_proba(x)
    reference = {
        "model_name": MODEL_NAME,
        "model_version": MODEL_VERSION,
        "model_sha256": sha256,
        "class_names": [str(n) for n in iris.target_names],
        "rows": [
            {
                "features": [float(v) for v in row],
                "label": int(label),
                "prediction": int(pred),
                "probabilities": [float(p) for p in probs],
            }
            for row, label, pred, probs in zip(x, y, predictions, probabilities)
        ],
    }
    (args.out_dir / "iris-reference.json").write_text(json.dumps(reference, indent=1) + "\n")

    card = f"""# Model card: {MODEL_NAME} {MODEL_VERSION}

Generated by `model-server/train/train.py`; do not edit by hand (re-run `model-server/train/train.sh`).

| field | value |
| --- | --- |
| name | {MODEL_NAME} |
| version | {MODEL_VERSION} |
| file | `iris.onnx` ({len(model_bytes)} bytes) |
| sha256 | `{sha256}` |
| task | 3-class classification of iris flowers from 4 measurements (cm): sepal length, sepal width, petal length, petal width |
| classes | {", ".join(f"{i} = {n}" for i, n in enumerate(iris.target_names))} |
| input | `float32[N, 4]` |
| outputs | `label: int64[N]`, `probabilities: float32[N, 3]` |
| estimator | scikit-learn `LogisticRegression(max_iter=1000)` (lbfgs, multinomial), fitted on all 150 rows; probabilities = softmax(X·coefᵀ + intercept), as scikit-learn computes them |
| accuracy, 5-fold stratified CV (shuffle, seed 0) | {cv_scores.mean():.4f} (folds: {", ".join(f"{s:.3f}" for s in cv_scores)}) |
| accuracy, training data | {train_accuracy:.4f} |
| export | `train.py`'s `to_onnx_graph`: MatMul, Add, Softmax (probabilities), ArgMax (label); ONNX opset {ONNX_OPSET}, IR {ONNX_IR_VERSION} |
| data | scikit-learn's bundled copy of Fisher's iris data (`sklearn.datasets.load_iris`) |
| made with | Python {platform.python_version()}, scikit-learn {sklearn.__version__}, numpy {np.__version__}, onnx {onnx.__version__} |

`iris-reference.json` holds scikit-learn's predictions and probabilities for every row; the
model-server test `predictions_match_training_framework` requires tract to agree on all 150.

Limits: trained on 150 flowers of three species; any other input is out of distribution and still
gets one of the three classes.
"""
    (args.out_dir / "MODEL_CARD.md").write_text(card)

    if args.joblib:
        import joblib

        joblib.dump(estimator, args.joblib)

    print(f"{model_path}: {len(model_bytes)} bytes, sha256 {sha256}, cv accuracy {cv_scores.mean():.4f}")


if __name__ == "__main__":
    main()
