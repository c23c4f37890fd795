#!/bin/sh
# Debian's chromium for the browser test (tests/test_webpage.py), driven by the Python
# `playwright` package with executable_path=/usr/bin/chromium. Never `playwright install`:
# it downloads browsers from elsewhere. A no-op when chromium is already there.
set -eu

if [ -x /usr/bin/chromium ]; then
    echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium
/usr/bin/chromium --version
