#!/usr/bin/env bash
# Installs OpenTelemetry's Python SDK into its own venv for the propagation
# test and prints the venv's python. Idempotent.
set -euo pipefail
home="${MESH_PEERS_HOME:-/opt/mesh-peers}/otel-sdk-venv"
want="opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2"
if [ ! -f "$home/.installed" ] || [ "$(cat "$home/.installed")" != "$want" ]; then
  python3 -m venv "$home" >&2
  "$home/bin/pip" install -q --disable-pip-version-check $want >&2
  echo "$want" > "$home/.installed"
fi
echo "$home/bin/python"
