#!/usr/bin/env python3
"""compare.py tells the committed model from another one, and only from another one.

Run by scripts/test in the training venv: `python test_compare.py` prints 'N passed, N failed'.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import tempfile
from unittest import mock

import numpy as np
import onnx
from onnx import helper, numpy_helper
from sklearn.linear_model import LogisticRegression

here = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(here))
import compare  # noqa: E402
import train  # noqa: E402

COMMITTED = here.parent / "model"


def copy_of_committed(tmp: pathlib.Path) -> pathlib.Path:
    out = tmp / "copy"
    shutil.copytree(COMMITTED, out)
    return out


def scale_coefficient(model_dir: pathlib.Path, factor: float) -> None:
    model = onnx.load(model_dir / "iris.onnx")
    for i, init in enumerate(model.graph.initializer):
        if init.name == "coefficients":
            values = numpy_helper.to_array(init).copy()
            values.flat[5] *= factor
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values, "coefficients"))
    (model_dir / "iris.onnx").write_bytes(model.SerializeToString())


def differs(fresh: pathlib.Path) -> str | None:
    try:
        compare.compare(fresh, COMMITTED)
    except compare.Differs as e:
        return str(e)
    return None


def test_the_committed_model_is_itself(tmp):
    assert differs(copy_of_committed(tmp)) is None


def test_a_difference_within_the_tolerance_is_the_same_model(tmp):
    fresh = copy_of_committed(tmp)
    scale_coefficient(fresh, 1 + 1e-5)
    assert differs(fresh) is None


def test_a_parameter_beyond_the_tolerance_is_another_model(tmp):
    fresh = copy_of_committed(tmp)
    scale_coefficient(fresh, 1 + 1e-3)
    assert "coefficients" in (differs(fresh) or ""), differs(fresh)


def test_another_class_on_one_row_is_another_model(tmp):
    fresh = copy_of_committed(tmp)
    reference = json.loads((fresh / "iris-reference.json").read_text())
    reference["rows"][70]["prediction"] = (reference["rows"][70]["prediction"] + 1) % 3
    (fresh / "iris-reference.json").write_text(json.dumps(reference))
    assert "row 70" in (differs(fresh) or ""), differs(fresh)


def test_another_graph_is_another_model(tmp):
    fresh = copy_of_committed(tmp)
    model = onnx.load(fresh / "iris.onnx")
    model.graph.node.append(helper.make_node("Identity", ["label"], ["label_copy"]))
    (fresh / "iris.onnx").write_bytes(model.SerializeToString())
    assert "graph" in (differs(fresh) or ""), differs(fresh)


def test_a_model_trained_otherwise_is_another_model(tmp):
    # Really another model: stronger regularisation changes its predictions on some rows.
    fresh = tmp / "other"
    with mock.patch.object(train, "build_estimator", lambda: LogisticRegression(max_iter=1000, C=0.01)):
        with mock.patch.object(sys, "argv", ["train.py", "--out-dir", str(fresh)]):
            train.main()
    assert differs(fresh) is not None


def main() -> int:
    tests = [(name, f) for name, f in sorted(globals().items()) if name.startswith("test_")]
    failed = 0
    for name, f in tests:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                f(pathlib.Path(tmp))
                print(f"ok   {name}")
            except AssertionError as e:
                failed += 1
                print(f"FAIL {name}: {e}")
    print(f"compare.py: {len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
