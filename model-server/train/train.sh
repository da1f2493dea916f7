#!/usr/bin/env bash
# Re-create the bundled model from scratch: a pinned venv, then train.py. Output is byte-identical
# for the same pinned versions (scripts/test checks this unless SKIP_RETRAIN=1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${TRAIN_VENV:-$root/.venv-train}"
"$root/scripts/venv" "$venv" "$here/requirements.txt"
exec "$venv/bin/python" "$here/train.py" "$@"
