#!/usr/bin/env bash
# Re-create the bundled model from scratch: a pinned venv, then train.py. Output is byte-identical
# for the same pinned versions (checked by scripts/test when RELEASE_TEST_RETRAIN=1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${TRAIN_VENV:-$root/.venv-train}"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$here/requirements.txt" "$venv/.requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.requirements.txt"
fi
exec "$venv/bin/python" "$here/train.py" "$@"
