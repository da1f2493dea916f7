# bench/common.sh: what the model-server benchmarks share; sourced with `here` and `root` set.
# Installs wrk (Debian) and the pinned bench venv when missing, and builds the static release
# model-server; sets `venv` and `binary`.

if ! command -v wrk > /dev/null; then
  sudo_="" ; [[ $(id -u) -ne 0 ]] && sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq wrk > /dev/null
fi

venv="${BENCH_VENV:-$root/.venv-bench}"
"$root/scripts/venv" "$venv" "$here/requirements.txt"

# The static build: what the image ships.
static_model_server() {
  echo "building a static model-server" >&2
  local target=x86_64-unknown-linux-gnu
  (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile server --locked -p model-server --target "$target")
  binary="$root/target/$target/server/model-server"
}
