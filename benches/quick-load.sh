#!/bin/bash
# Manifest GET (32 conns) and 64 MiB blob GET (4 conns): docker-registry 2.8.2 direct (anchor),
# portcullis-storage direct, gateway (admin Basic → authn + Cedar) → bundled.
# A first figure until the full harness (issue 6): `cargo build --release --bins && benches/quick-load.sh`.
# Needs wrk, curl and docker-registry (Debian packages); loopback ports 5100-5102.
set -e
B=${BENCH_DIR:-/tmp/portcullis-quick-load}; R=$(realpath "${CARGO_TARGET_DIR:-target}")/release
mkdir -p $B
rm -rf $B/gw $B/st $B/dr; mkdir -p $B/gw $B/st $B/dr
[ -f $B/blob ] || head -c 67108864 /dev/urandom > $B/blob
CFG='{"architecture":"amd64","os":"linux"}'; printf '%s' "$CFG" > $B/config
BD=sha256:$(sha256sum $B/blob | cut -d' ' -f1); CD=sha256:$(sha256sum $B/config | cut -d' ' -f1)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}]}' $CD $(stat -c%s $B/config) $BD $(stat -c%s $B/blob) > $B/manifest
(cd $B && { PORTCULLIS_ADMIN_PASSWORD=benchsecret1234 RUST_LOG=warn $R/portcullis serve --listen 127.0.0.1:5100 --data-dir $B/gw > gw.out 2> gw.err & echo $! > gw.pid; })
(cd $B && { RUST_LOG=warn $R/portcullis-storage serve --listen 127.0.0.1:5101 --data-dir $B/st > st.out 2> st.err & echo $! > st.pid; })
printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:5102\n' $B/dr > $B/dr.yml
(cd $B && { /usr/bin/docker-registry serve $B/dr.yml > dr.out 2> dr.err & echo $! > dr.pid; })
sleep 2
AUTH="Authorization: Basic $(printf admin:benchsecret1234 | base64)"
push() {
  for f in config blob; do
    D=sha256:$(sha256sum $B/$f | cut -d' ' -f1)
    LOC=$(curl -s -D - -o /dev/null -X POST -H "$AUTH" $1/v2/bench/app/blobs/uploads/ | grep -i '^location' | cut -d' ' -f2 | tr -d '\r')
    case "$LOC" in http*) U=$LOC;; *) U=$1$LOC;; esac
    case "$U" in *\?*) S='&';; *) S='?';; esac
    curl -s -o /dev/null -w "blob $f %{http_code}\n" -X PUT -H "$AUTH" -H 'content-type: application/octet-stream' -T $B/$f "$U${S}digest=$D"
  done
  curl -s -o /dev/null -w "manifest %{http_code}\n" -X PUT -H "$AUTH" -H 'content-type: application/vnd.oci.image.manifest.v1+json' --data-binary @$B/manifest $1/v2/bench/app/manifests/v1
}
push http://127.0.0.1:5100; push http://127.0.0.1:5101; push http://127.0.0.1:5102
ACC="Accept: application/vnd.oci.image.manifest.v1+json"
for T in "docker-registry http://127.0.0.1:5102" "storage-direct http://127.0.0.1:5101" "gateway http://127.0.0.1:5100"; do
  set -- $T
  echo "== $1 manifest GET (wrk -t2 -c32 -d10s)"
  wrk -t2 -c32 -d10s --latency -H "$AUTH" -H "$ACC" $2/v2/bench/app/manifests/v1 | grep -E "^\s+(50|99)%|Requests/sec|Non-2xx"
  echo "== $1 64 MiB blob GET (wrk -t2 -c4 -d10s)"
  wrk -t2 -c4 -d10s -H "$AUTH" $2/v2/bench/app/blobs/$BD | grep -E "Requests/sec|Transfer/sec|Non-2xx"
done
echo "gateway peak RSS: $(grep VmHWM /proc/$(cat $B/gw.pid)/status)"
kill $(cat $B/gw.pid) $(cat $B/st.pid) $(cat $B/dr.pid)
