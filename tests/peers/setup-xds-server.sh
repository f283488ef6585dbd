#!/usr/bin/env bash
# Starts the test xDS v3 management server (ADS over gRPC, SotW + Delta) on 127.0.0.1.
# usage: setup-xds-server.sh [GRPC_PORT=18000] [ADMIN_PORT=GRPC_PORT+1] CONFIG_JSON
#   prints the pid. Re-running with the same port prints the running pid (idempotent).
#   stop: kill $(cat $MESH_PEERS_RUN/run/xds-server-PORT.pid)
# Update resources live: edit CONFIG_JSON (watched), or  curl -XPOST --data-binary @new.json 127.0.0.1:ADMIN/config
# Inspect: curl 127.0.0.1:ADMIN/state (acked/nacked versions per node+type), /events (ndjson of ACK/NACK/sends)
source "$(dirname "$0")/lib.sh"
PORT="${1:-18000}"; ADMIN="${2:-$((PORT+1))}"; CONFIG="${3:?the resources file (JSON)}"
"$PEERS_DIR/setup-python-peers.sh" >/dev/null
CONFIG="$(readlink -f "$CONFIG")"
pid=$(start_daemon "xds-server-$PORT" "$MESH_PEERS_HOME/venv/bin/python" "$PEERS_DIR/xds/ads_server.py" \
      --host 127.0.0.1 --port "$PORT" --admin-port "$ADMIN" --config "$CONFIG" ${XDS_QUIET:+--quiet})
wait_port "$PORT" 30 && wait_port "$ADMIN" 10
log "xds server: grpc 127.0.0.1:$PORT admin http://127.0.0.1:$ADMIN log $MESH_PEERS_RUN/log/xds-server-$PORT.log"
echo "$pid"
