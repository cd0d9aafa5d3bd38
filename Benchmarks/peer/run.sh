#!/usr/bin/env bash
# The Python peer of backstage-bench: makes a venv with requirements.txt (once) and runs peer.py.
#   Benchmarks/peer/run.sh [--stores sqlite,postgres] [--scale 1]
# The venv lives in BACKSTAGE_PEER_VENV (default: Benchmarks/.build-peer/venv).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${BACKSTAGE_PEER_VENV:-$here/../.build-peer/venv}"
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi
exec "$venv/bin/python" "$here/peer.py" "$@"
