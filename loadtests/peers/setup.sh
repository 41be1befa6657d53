#!/usr/bin/env bash
# Make one peer's own virtualenv, .venv-peers/<peer>, from loadtests/peers/requirements-<peer>.txt.
# Peers are benchmark subjects, not project dependencies: each gets a venv of its own because
# their pins (pandas, protobuf, fastapi, pydantic...) clash with the gateway's and each other's.
# Usage: bash loadtests/peers/setup.sh PEER    (re-installs only when the requirements change)
set -euo pipefail
peer=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
req=$root/loadtests/peers/requirements-$peer.txt
venv=$root/.venv-peers/$peer
stamp=$venv/.installed
[ -f "$req" ] || { echo "no such peer: $peer (no $req)" >&2; exit 2; }
if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -r "$req"
    touch "$stamp"
fi
echo "$venv/bin/python"
