#!/usr/bin/env bash
# How long a `release up` that has nothing to release takes on the sandbox (issue 13's target:
# under 1 s for a release build), with the layer cache (src/adapters/image.rs LayerCache) warm and off.
# Builds `release` and model-server with the release profile, starts its own sandbox, makes the
# first release, times BENCH_RUNS no-op ups of each kind, prints the times, stops the sandbox.
#   BENCH_RUNS=5 bench/noop-up.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
runs="${BENCH_RUNS:-5}"

echo "building release and model-server (release profile)" >&2
cargo build --quiet --locked --release -p release -p model-server
work="$(mktemp -d)"
strip --strip-all -o "$work/model-server" target/release/model-server
sed -e "s|binary: .*|binary: $work/model-server|" \
  -e "s|\.\./\.\./|$root/|g" examples/sandbox/release.yaml > "$work/release.yaml"

export SANDBOX_STATE="$work/sandbox"
eval "$(scripts/sandbox up)"
trap 'scripts/sandbox down > /dev/null; rm -rf "$work"' EXIT
release() { GIT_SHA=bench-1 target/release/release --config "$work/release.yaml" "$@"; }
export RELEASE_CACHE_DIR="$work/cache"

echo "the first release (not timed)" >&2
release up > /dev/null 2>&1

# The seconds one no-op up takes; a run that fails, or is not a no-op, stops the benchmark.
seconds() {
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$(release --output json up 2>&1) || { echo "release up failed: $out" >&2; return 1; }
  t1=$(date +%s.%N)
  grep -q '"candidate":"none: nothing to release"' <<< "$out" \
    || { echo "not a no-op up: $out" >&2; return 1; }
  awk "BEGIN { print $t1 - $t0 }"
}
echo "binary: $(stat -c %s "$work/model-server") bytes; host: $(nproc) cores"
for kind in warm off; do
  if [[ $kind == off ]]; then export RELEASE_CACHE_DIR=""; fi
  times=()
  for _ in $(seq "$runs"); do t=$(seconds) || exit 1; times+=("$t"); done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  printf 'no-op up, layer cache %-4s: median %.2f s, min %.2f s, max %.2f s (%s runs)\n' "$kind" \
    "$(echo "$sorted" | sed -n "$(( (runs + 1) / 2 ))p")" "$(echo "$sorted" | head -1)" \
    "$(echo "$sorted" | tail -1)" "$runs"
done
