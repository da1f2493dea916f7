#!/usr/bin/env bash
# Benchmark model-server against the servers people run today (Flask + gunicorn + scikit-learn,
# and BentoML), all on loopback, with wrk. Prints a table and the ratios; see docs/performance.md.
# Installs what it needs itself: wrk (Debian), a pinned venv (bench/requirements.txt), and a static
# release build of model-server.
#   BENCH_SECONDS=10 BENCH_CONNECTIONS=16,64 bench/model-server.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$here/out"
mkdir -p "$out"
# shellcheck source=bench/common.sh
source "$here/common.sh"

echo "training the reference estimator (the same one exported to ONNX)" >&2
"$venv/bin/python" "$root/model-server/train/train.py" --out-dir "$out/model" --joblib "$out/iris.joblib" > /dev/null
# The same model as the bundled one (same graph and classes, parameters within a few ulps: the
# OpenBLAS kernel decides the last bits; model-server/train/compare.py), so all servers agree.
"$venv/bin/python" "$root/model-server/train/compare.py" "$out/model" "$root/model-server/model" >&2 \
  || { echo "the bench venv does not reproduce the bundled model; check the pins" >&2; exit 1; }

static_model_server

echo
echo "model-server binary: $(stat -c %s "$binary") bytes ($(( $(stat -c %s "$binary") / 1024 )) KiB), stripped, $(file -b "$binary" | grep -o 'static[a-z -]*linked' || echo 'dynamically linked')"
echo "host: $(nproc) cores, $(uname -r); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
"$venv/bin/python" "$here/model_server_bench.py" \
  --wrk "$(command -v wrk)" --script "$here/post.lua" --python-bin "$venv/bin" \
  --model-server "$binary" --joblib "$out/iris.joblib" --reference-dir "$here/reference" \
  --seconds "${BENCH_SECONDS:-10}" --connections "${BENCH_CONNECTIONS:-16,64}" --only "${BENCH_ONLY:-}" \
  --json "$out/results.json"
