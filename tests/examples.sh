#!/usr/bin/env bash
# The examples run together, the way their doc comments and the README say:
#   1. two `echo` servers and `load` through a mesh file (50/50 split);
#   2. `control_plane` serving that file and `load` configured over xDS
#      (state of the world with the service listed; incremental, on demand);
#   3. two `greeter_server`s, `greeter_client` and `load --grpc`.
# Loopback only; every wait is bounded and every process stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --examples
bin="${CARGO_TARGET_DIR:-target}/debug/examples"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
listening() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1"; cat "$work/log"; exit 1
}
start() { "$@" >>"$work/log" 2>&1 & pids+=($!); }
# check NAME JSON EXPR: EXPR (Python, over the parsed JSON `j`) must hold.
check() {
  if python3 -c "import json, sys; j = json.loads(sys.argv[1]); sys.exit(0 if ($3) else 1)" "$2"; then
    echo "ok: $1"
  else
    echo "FAILED: $1: $3"; echo "$2"; echo "--- server logs"; cat "$work/log"; exit 1
  fi
}
split='j["requests"] == 400 and j["ok"] == 400 and j["by_backend"].get("v1", 0) > 120 and j["by_backend"].get("v2", 0) > 120'

p1=$(free_port); p2=$(free_port)
start "$bin/echo" --listen "127.0.0.1:$p1" --name v1
start "$bin/echo" --listen "127.0.0.1:$p2" --name v2
listening "$p1"; listening "$p2"
cat >"$work/mesh.yaml" <<EOF
services:
  - name: reviews
    routes: [{ to: [{ backend: v1, weight: 50 }, { backend: v2, weight: 50 }] }]
backends:
  - { name: v1, endpoints: ["127.0.0.1:$p1"] }
  - { name: v2, endpoints: ["127.0.0.1:$p2"] }
EOF
out=$(MESH_CONFIG="$work/mesh.yaml" "$bin/load" --service reviews --path /ratings/1 --requests 400 --concurrency 8 2>>"$work/log")
check "echo + load through a mesh file" "$out" "$split"

cp=$(free_port)
start "$bin/control_plane" --config "$work/mesh.yaml" --listen "127.0.0.1:$cp"
listening "$cp"
out=$(MESH_CONTROL_PLANE="http://127.0.0.1:$cp" MESH_XDS_SERVICES=reviews \
  "$bin/load" --service reviews --path /ratings/1 --requests 400 --concurrency 8 2>>"$work/log")
check "load configured over xDS by control_plane" "$out" "$split"
out=$(MESH_CONTROL_PLANE="http://127.0.0.1:$cp" MESH_XDS_API=delta \
  "$bin/load" --service reviews --path /ratings/1 --requests 400 --concurrency 8 2>>"$work/log")
check "load over incremental xDS, reviews subscribed on its first call" "$out" "$split"

# Shadow evaluation: `load` under the 50/50 file, with the control plane's
# copy of a candidate that sends everything to v2 evaluated beside it (never
# sent); `meshctl shadow` reads the report from load's admin server while it
# runs and exits 1 because the candidate would route some requests
# differently. Then the same with the candidate as a file.
sed 's/to: \[{ backend: v1, weight: 50 }, /to: [/' \
  "$work/mesh.yaml" >"$work/candidate.yaml"
ccp=$(free_port)
start "$bin/control_plane" --config "$work/candidate.yaml" --listen "127.0.0.1:$ccp"
listening "$ccp"
shadow_run() {
  local ap; ap=$(free_port)
  env "$@" MESH_CONFIG="$work/mesh.yaml" MESH_ADMIN_ADDR="127.0.0.1:$ap" MESH_XDS_SERVICES=reviews \
    "$bin/load" --service reviews --path /ratings/1 --requests 400 --concurrency 2 --rate 100 \
    >"$work/shadow-load.json" 2>>"$work/log" &
  local lp=$! rc=0 report=""
  listening "$ap"
  for _ in $(seq 80); do
    rc=0; report=$("$bin/meshctl" shadow "127.0.0.1:$ap" 2>&1) || rc=$?
    if [ "$rc" = 1 ] && grep -q 'route-0 -> v1 *route-0 -> v2' <<<"$report"; then break; fi
    sleep 0.1
  done
  wait "$lp"
  echo "$report"
  if [ "$rc" != 1 ] || ! grep -q 'route-0 -> v1 *route-0 -> v2' <<<"$report"; then
    echo "FAILED: meshctl shadow ($*): exit $rc"; cat "$work/log"; exit 1
  fi
  check "load with a candidate ($1): all sent by the live config" "$(cat "$work/shadow-load.json")" "$split"
}
shadow_run MESH_SHADOW_CONTROL_PLANE="http://127.0.0.1:$ccp"
shadow_run MESH_SHADOW_CONFIG="$work/candidate.yaml"

g1=$(free_port); g2=$(free_port)
start "$bin/greeter_server" --listen "127.0.0.1:$g1" --name v1
start "$bin/greeter_server" --listen "127.0.0.1:$g2" --name v2
listening "$g1"; listening "$g2"
cat >"$work/greeter.yaml" <<EOF
services:
  - name: greeter
    routes: [{ to: [{ backend: v1, weight: 50 }, { backend: v2, weight: 50 }] }]
backends:
  - { name: v1, endpoints: ["127.0.0.1:$g1"] }
  - { name: v2, endpoints: ["127.0.0.1:$g2"] }
EOF
answers=$(MESH_CONFIG="$work/greeter.yaml" "$bin/greeter_client" --service greeter -n 5 --name ci 2>>"$work/log")
echo "$answers"
if [ "$(grep -c '(from v[12])$' <<<"$answers")" != 5 ]; then
  echo "FAILED: greeter_client: expected 5 answers from v1 or v2"; cat "$work/log"; exit 1
fi
out=$(MESH_CONFIG="$work/greeter.yaml" "$bin/load" --grpc --service greeter --requests 400 --concurrency 8 2>>"$work/log")
check "greeter_server + load --grpc" "$out" "$split"

# The README's mutual-TLS walk: `meshctl certs`, a strict `echo` as
# reviews that only lets productpage GET /ratings/*, and `load` as
# productpage: allowed path served over mTLS, any other path 403.
"$bin/meshctl" certs --trust-domain demo.local --out "$work/certs" reviews productpage >>"$work/log"
pt=$(free_port)
cat >"$work/tls.yaml" <<EOF
trust_domain: demo.local
services:
  - name: reviews
    routes: [{ to: [reviews-v2] }]
backends:
  - name: reviews-v2
    endpoints: ["127.0.0.1:$pt"]
    tls: { mode: mutual, identity: "spiffe://demo.local/reviews" }
inbound:
  - service: reviews
    mtls: strict
    rules:
      - action: allow
        from: ["spiffe://demo.local/productpage"]
        to: { paths: ["/ratings/*"], methods: [GET] }
EOF
MESH_TLS_CERT="$work/certs/reviews.pem" MESH_TLS_KEY="$work/certs/reviews-key.pem" MESH_TLS_CA="$work/certs/ca.pem" \
  MESH_SERVICE=reviews MESH_CONFIG="$work/tls.yaml" start "$bin/echo" --listen "127.0.0.1:$pt" --name v2
listening "$pt"
as_productpage() {
  MESH_TLS_CERT="$work/certs/productpage.pem" MESH_TLS_KEY="$work/certs/productpage-key.pem" \
    MESH_TLS_CA="$work/certs/ca.pem" MESH_SERVICE=productpage MESH_CONFIG="$work/tls.yaml" \
    "$bin/load" --service reviews --requests 50 --concurrency 4 "$@" 2>>"$work/log"
}
check "productpage -> reviews over mTLS, allowed" "$(as_productpage --path /ratings/1)" \
  'j["ok"] == 50 and j["by_backend"].get("v2") == 50'
check "productpage -> reviews, a path no rule allows" "$(as_productpage --path /admin)" \
  'j["ok"] == 0 and j["errors"].get("http_403") == 50'
