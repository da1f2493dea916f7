#!/usr/bin/env python3
"""Is a fresh training run the same model as the committed one?

    compare.py FRESH_DIR COMMITTED_DIR

The same *model*, not the same bytes: numpy's OpenBLAS picks its kernel by CPU (and by
OPENBLAS_CORETYPE, which some machines set), and different kernels sum in a different order, so
lbfgs stops at a slightly different point (its stopping rule, scikit-learn's tol=1e-4 on the
gradient, leaves the parameters free at about that scale). Measured with the pinned recipe on one
machine (`OPENBLAS_CORETYPE=K model-server/train/train.sh --out-dir D`, then this script): kernels
Haswell, Zen and Sandybridge against the default (SkylakeX) differ by at most 4.3e-6 in a parameter
(relative to max(|value|, 1)) and 1.3e-6 in a probability; every prediction is the same.

Required, or the run fails:

- the ONNX graph is the same: nodes, their attributes, inputs, outputs, opset, IR version, and
  initializer names, shapes and types; only initializer values may differ, each element by at most
  PARAMETER_RTOL relative to max(|committed|, 1);
- scikit-learn's prediction is the same class on every row of the data set, and each probability
  is within PROBABILITY_ATOL;
- the model card is the same but for the sha256 row, and the committed card, reference and model
  agree on the committed model's sha256.

The tolerances are about 12x (parameters) and 15x (probabilities) the largest kernel difference
measured, and still far below anything that moves a prediction: the smallest margin between the two
likeliest classes of any row (0.032 on iris) is printed too, to show how far from a flip it is. A
model trained otherwise (another C, another solver, a bug) differs by 1e-2 or more.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys

import numpy as np
import onnx
from onnx import numpy_helper

PARAMETER_RTOL = 5e-5
PROBABILITY_ATOL = 2e-5


class Differs(Exception):
    """The fresh run is another model; the message says where."""


def graph_without_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every initializer's values removed (names, types and shapes kept)."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for init in skeleton.graph.initializer:
        dims, dtype, name = list(init.dims), init.data_type, init.name
        init.Clear()
        init.dims.extend(dims)
        init.data_type = dtype
        init.name = name
    return skeleton


def compare_models(fresh: onnx.ModelProto, committed: onnx.ModelProto) -> float:
    """The largest relative parameter difference; raises Differs beyond PARAMETER_RTOL."""
    if graph_without_values(fresh).SerializeToString() != graph_without_values(committed).SerializeToString():
        raise Differs("the ONNX graph differs (nodes, attributes, inputs, outputs, opset or initializer shapes)")
    worst = 0.0
    for a, b in zip(fresh.graph.initializer, committed.graph.initializer):
        x, y = numpy_helper.to_array(a).astype(np.float64), numpy_helper.to_array(b).astype(np.float64)
        relative = np.abs(x - y) / np.maximum(np.abs(y), 1.0)
        i = int(np.argmax(relative))
        print(f"  {a.name}: largest difference {np.abs(x - y).flat[i]:.3g} on {y.flat[i]:.4g} ({relative.flat[i]:.3g} relative)")
        worst = max(worst, float(relative.flat[i]))
        if relative.flat[i] > PARAMETER_RTOL:
            raise Differs(f"{a.name}[{i}] is {x.flat[i]!r}, committed {y.flat[i]!r}: beyond {PARAMETER_RTOL} relative")
    return worst


def compare_references(fresh: dict, committed: dict) -> float:
    """The largest probability difference; raises Differs on any other class or beyond the tolerance."""
    for key in ("model_name", "model_version", "class_names"):
        if fresh[key] != committed[key]:
            raise Differs(f"{key} is {fresh[key]!r}, committed {committed[key]!r}")
    if len(fresh["rows"]) != len(committed["rows"]):
        raise Differs(f"{len(fresh['rows'])} rows, committed {len(committed['rows'])}")
    worst, margin = 0.0, 1.0
    for n, (a, b) in enumerate(zip(fresh["rows"], committed["rows"])):
        if a["features"] != b["features"] or a["label"] != b["label"]:
            raise Differs(f"row {n}: the data set itself differs")
        if a["prediction"] != b["prediction"]:
            raise Differs(f"row {n}: predicts class {a['prediction']}, committed {b['prediction']}")
        diff = float(np.max(np.abs(np.array(a["probabilities"]) - np.array(b["probabilities"]))))
        worst = max(worst, diff)
        top = sorted(b["probabilities"], reverse=True)
        margin = min(margin, top[0] - top[1])
        if diff > PROBABILITY_ATOL:
            raise Differs(f"row {n}: probabilities {a['probabilities']} against {b['probabilities']}: beyond {PROBABILITY_ATOL}")
    print(f"  predictions: all {len(fresh['rows'])} rows the same class; largest probability difference {worst:.3g}")
    print(f"  smallest margin between the two likeliest classes (committed): {margin:.3g}")
    return worst


def card_without_sha(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("| sha256 |")]


def compare(fresh_dir: pathlib.Path, committed_dir: pathlib.Path) -> None:
    model_bytes = (committed_dir / "iris.onnx").read_bytes()
    sha = hashlib.sha256(model_bytes).hexdigest()
    committed_ref = json.loads((committed_dir / "iris-reference.json").read_text())
    committed_card = (committed_dir / "MODEL_CARD.md").read_text()
    if committed_ref["model_sha256"] != sha or f"`{sha}`" not in committed_card:
        raise Differs(f"the committed card or reference does not name the committed model's sha256 {sha}")
    compare_models(onnx.load(fresh_dir / "iris.onnx"), onnx.load_model_from_string(model_bytes))
    fresh_ref = json.loads((fresh_dir / "iris-reference.json").read_text())
    fresh_ref["model_sha256"] = committed_ref["model_sha256"]
    compare_references(fresh_ref, committed_ref)
    if card_without_sha((fresh_dir / "MODEL_CARD.md").read_text()) != card_without_sha(committed_card):
        raise Differs("MODEL_CARD.md differs beyond its sha256 row (versions, accuracy or recipe)")


def main() -> int:
    fresh, committed = (pathlib.Path(p) for p in sys.argv[1:3])
    same_bytes = (fresh / "iris.onnx").read_bytes() == (committed / "iris.onnx").read_bytes()
    print(f"comparing {fresh} with {committed} ({'byte-identical' if same_bytes else 'not byte-identical'} iris.onnx)")
    try:
        compare(fresh, committed)
    except Differs as e:
        print(f"the retrained model is not the committed one: {e}", file=sys.stderr)
        print("if the recipe or its pins changed on purpose, re-run model-server/train/train.sh and commit", file=sys.stderr)
        return 1
    print("the retrained model is the committed one (same graph, same classes, within tolerance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
