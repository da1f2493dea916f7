#!/usr/bin/env python3
"""The random forest of the forest benchmark, trained and exported the way users do.

    forest_model.py OUT_DIR     (bench/forest.sh runs it in the matrix venv: skl2onnx pinned)

Writes OUT_DIR/forest.onnx (`to_onnx(..., options={"zipmap": False})`, what model-server
serves) and OUT_DIR/forest.joblib (the same fitted estimator, what Flask serves). A bank-notes-
like problem made here from a fixed seed (four features, two classes, 1372 rows as the UCI data
set has), and a forest of 100 trees as scikit-learn's default.
"""

from __future__ import annotations

import pathlib
import sys

import joblib
import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    x, y = make_classification(
        n_samples=1372, n_features=4, n_informative=3, n_redundant=1, class_sep=0.8, random_state=0
    )
    x = x.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y)
    onx = to_onnx(forest, x[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    (out / "forest.onnx").write_bytes(onx.SerializeToString())
    joblib.dump(forest, out / "forest.joblib")
    # The benchmark's body: what both servers must answer for it.
    body = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    print(int(forest.predict(body)[0]))


if __name__ == "__main__":
    main()
