#!/usr/bin/env bash
# What the ledger costs a run as the history grows (issue 15's target: a `release up` after 1,000
# releases moves as many state-bucket bytes as after 1). Builds `release` (release profile), starts
# its own sandbox with a counting proxy in front of its S3 (bench/s3_bytes_proxy.py, loopback),
# makes the first release, then counts the bytes and requests that a no-op `up` and a `history`
# move to and from apps/<app>/ after 1 release and after 1,000; the 1,000 are seeded as the
# one-document ledger an older release kept, so the one-off move into one object per release is
# counted too. Prints the figures; stops the sandbox.
#   bench/ledger-bytes.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
releases="${BENCH_RELEASES:-1000}"

echo "building release and model-server (release profile)" >&2
cargo build --quiet --locked --release -p release -p model-server
work="$(mktemp -d)"
sed -e "s|binary: .*|binary: $root/target/release/model-server|" \
  -e "s|\.\./\.\./|$root/|g" examples/sandbox/release.yaml > "$work/release.yaml"
export SANDBOX_STATE="$work/sandbox"
eval "$(scripts/sandbox up)"
python=".venv-sandbox/bin/python"
"$python" bench/s3_bytes_proxy.py "$AWS_ENDPOINT_URL" "$work/port" &
proxy=$!
trap 'kill $proxy 2> /dev/null; scripts/sandbox down > /dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do [[ -s "$work/port" ]] && break; sleep 0.1; done
counter="http://127.0.0.1:$(cat "$work/port")"
release() { AWS_ENDPOINT_URL_S3="$counter" GIT_SHA=bench-1 target/release/release --config "$work/release.yaml" --output json "$@"; }
count() { curl -sf "$counter/_bytes$1"; }

# `what`'s bytes: the counts of one `release <args>` (which must succeed).
measure() {
  local what="$1"; shift
  count "?reset=1" > /dev/null
  release "$@" > "$work/out" 2>&1 || { echo "release $* failed:" >&2; cat "$work/out" >&2; exit 1; }
  printf '%-52s %s\n' "$what" "$(count "" | "$python" -c 'import json,sys; c=json.load(sys.stdin); print("%4d requests, %9s bytes written, %11s bytes read" % (c["requests"], format(c["written"], ","), format(c["read"], ",")))')"
}

echo "the first release (not counted)" >&2
release up > /dev/null 2>&1
measure "no-op up, 1 release in the ledger" up
measure "history, 1 release in the ledger" history

# The same history grown to $releases entries, as an older release kept it: one ledger.json.
bucket="$("$python" - "$AWS_ENDPOINT_URL" "$releases" <<'PY'
import json, os, sys, boto3, botocore.config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name=os.environ["AWS_REGION"],
                  config=botocore.config.Config(s3={"addressing_style": "path"}))
bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith("iris-release-"))
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="apps/iris/").get("Contents", [])]
releases = [json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in sorted(keys) if "/releases/" in k]
first = releases[0]
grown = []
for n in range(int(sys.argv[2]) - len(releases)):
    r = dict(first, id=f"20260101-{n:05}", went_live=(n % 2 == 0))
    r.pop("seq", None); r.pop("live_below", None)
    grown.append(r)
for r in releases:
    r.pop("seq", None); r.pop("live_below", None)
for k in keys:
    if k != "apps/iris/lock.json":
        s3.delete_object(Bucket=bucket, Key=k)
s3.put_object(Bucket=bucket, Key="apps/iris/ledger.json", Body=json.dumps({"releases": grown + releases}).encode())
print(bucket)
PY
)"
echo "seeded $releases releases in s3://$bucket/apps/iris/ledger.json" >&2
measure "no-op up that moves $releases releases (once)" up
measure "no-op up, $((releases + 2)) releases in the ledger" up
measure "history, $((releases + 2)) releases in the ledger" history
