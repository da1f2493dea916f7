#!/usr/bin/env bash
# model-server/train/matrix.sh OUT_DIR: train one model of each estimator family, export each
# with skl2onnx, and write scikit-learn's own answers on held-out rows (matrix.py says what).
# Run by the model-server test `every_estimator_family_answers_as_scikit_learn_does`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${MATRIX_VENV:-$root/.venv-matrix}"
"$root/scripts/venv" "$venv" "$here/matrix-requirements.txt" >&2
exec "$venv/bin/python" "$here/matrix.py" "$@"
