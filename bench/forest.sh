#!/usr/bin/env bash
# Benchmark model-server serving a random forest (100 trees, skl2onnx export) against Flask +
# gunicorn + scikit-learn serving the same fitted forest, on loopback with wrk, the same way as
# bench/model-server.sh (its driver, model_server_bench.py). See docs/performance.md.
# Installs what it needs itself: wrk, the pinned bench and matrix venvs, a static release build.
#   BENCH_SECONDS=10 BENCH_CONNECTIONS=16,64 bench/forest.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$here/out/forest"
mkdir -p "$out"
# shellcheck source=bench/common.sh
source "$here/common.sh"
matrix="${MATRIX_VENV:-$root/.venv-matrix}"
"$root/scripts/venv" "$matrix" "$root/model-server/train/matrix-requirements.txt"

echo "training and exporting the forest" >&2
# Both venvs pin scikit-learn 1.7.2, so the bench venv's Flask loads the matrix venv's pickle.
expect="$("$matrix/bin/python" "$here/forest_model.py" "$out")"

static_model_server

echo
echo "forest: $(stat -c %s "$out/forest.onnx") bytes of ONNX, 100 trees; host: $(nproc) cores, $(uname -r)"
"$venv/bin/python" "$here/model_server_bench.py" \
  --wrk "$(command -v wrk)" --script "$here/post.lua" --python-bin "$venv/bin" \
  --model-server "$binary" --model-path "$out/forest.onnx" --expect "$expect" \
  --joblib "$out/forest.joblib" --reference-dir "$here/reference" \
  --seconds "${BENCH_SECONDS:-10}" --connections "${BENCH_CONNECTIONS:-16,64}" \
  --only "flask+gunicorn sync,flask+gunicorn gthread,model-server 1 worker,model-server 2 workers" \
  --json "$out/results.json"
