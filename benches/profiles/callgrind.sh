#!/usr/bin/env bash
# Instructions per manifest request, the way benches/profiles/README.md measures them:
# the server (release build) runs under callgrind; after the test image (a config, a 4 KiB
# and a 1 MiB layer) is pushed and 300 unmeasured requests, `ab -k -c 1 -n 2000` on one
# keep-alive connection is counted between `callgrind_control -z` and `-d`.
#
#   benches/profiles/callgrind.sh store|gateway|upstream GET|HEAD   (BIN_DIR=target/release)
#
# `upstream`: the gateway with `--upstream` in front of Debian's docker-registry (not
# counted; it runs outside callgrind, as `registry.log` of the printed directory shows).
#
# Prints the instructions per request; the callgrind output stays in the printed directory
# for callgrind_annotate. Callgrind counts instructions, so a busy machine does not move it.
set -euo pipefail
target=${1:?store, gateway or upstream}
method=${2:?GET or HEAD}
bin=${BIN_DIR:-target/release}
dir=$(mktemp -d /tmp/portcullis-callgrind-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
password=callgrind-admin-password

case $target in
  store) cmd=("$bin/portcullis-storage" serve --listen "127.0.0.1:$port" --data-dir "$dir/data") ;;
  gateway) cmd=("$bin/portcullis" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" --audit-log off) ;;
  upstream)
    up=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$dir/registry"
    printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
      "$dir/registry" "$up" >"$dir/registry.yml"
    docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
    registry=$!
    cmd=("$bin/portcullis" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" --audit-log off
      --upstream "http://127.0.0.1:$up")
    target=gateway ;;
  *) echo "target: store, gateway or upstream" >&2; exit 2 ;;
esac
PORTCULLIS_ADMIN_PASSWORD=$password RUST_LOG=warn \
  valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "${cmd[@]}" 2>"$dir/server.log" &
server=$!
trap 'kill $server ${registry:-} 2>/dev/null || true' EXIT
for _ in $(seq 600); do curl -s -o /dev/null "$base/v2/" && break; sleep 0.2; done

auth=()
if [ "$target" = gateway ]; then
  service=$(curl -si "$base/v2/" | tr -d '\r' | sed -n 's/.*service="\([^"]*\)".*/\1/p')
  token_password=$(curl -sf -u "admin:$password" -H 'Content-Type: application/json' \
    -d '{"name":"bench","repositories":[{"repository":"bench/app","actions":["content/read","content/write"]}]}' \
    "$base/admin/v1/tokens" | jq -r '.credentials.passwords[0].value')
  jwt=$(curl -sf -u "bench:$token_password" \
    "$base/oauth2/token?service=$service&scope=repository:bench/app:pull,push" | jq -r .token)
  auth=(-H "Authorization: Bearer $jwt")
fi

push_blob() {
  local file=$1 digest location
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  location=$(curl -sf -D - -o /dev/null -X POST "${auth[@]}" "$base/v2/bench/app/blobs/uploads/" \
    | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case $location in http*) ;; *) location="$base$location" ;; esac
  case $location in *\?*) sep='&' ;; *) sep='?' ;; esac
  curl -sf -o /dev/null -X PUT "${auth[@]}" -H 'Content-Type: application/octet-stream' \
    --data-binary "@$file" "$location${sep}digest=$digest"
  echo "$digest $(stat -c %s "$file")"
}
printf '{"architecture":"amd64","os":"linux"}' >"$dir/config"
head -c 4096 /dev/urandom >"$dir/small"
head -c 1048576 /dev/urandom >"$dir/large"
read -r cd cs < <(push_blob "$dir/config")
read -r sd ss < <(push_blob "$dir/small")
read -r ld ls < <(push_blob "$dir/large")
oci=application/vnd.oci.image.manifest.v1+json
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
  "$oci" "$cd" "$cs" "$sd" "$ss" "$ld" "$ls" >"$dir/manifest"
curl -sf -o /dev/null -X PUT "${auth[@]}" -H "Content-Type: $oci" --data-binary "@$dir/manifest" \
  "$base/v2/bench/app/manifests/v1"

ab_args=(-k -c 1 -H "Accept: $oci" "${auth[@]}")
[ "$method" = HEAD ] && ab_args+=(-i)
url="$base/v2/bench/app/manifests/v1"
ab -q "${ab_args[@]}" -n 300 "$url" >/dev/null
callgrind_control -z "$server" >/dev/null 2>&1
ab -q "${ab_args[@]}" -n 2000 "$url" >"$dir/ab.txt"
grep -q '^Non-2xx responses' "$dir/ab.txt" && { echo "requests failed: $dir/ab.txt" >&2; exit 1; }
callgrind_control -d "$server" >/dev/null 2>&1
sleep 1
total=$(callgrind_annotate "$(ls -t "$dir"/callgrind.out* | head -1)" 2>/dev/null \
  | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
echo "$1 $method: $((total / 2000)) instructions per request ($dir)"
