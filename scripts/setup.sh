#!/usr/bin/env bash
# Create .venv with the CPU build of torch first (a loose "torch" would pull a multi-GB CUDA build),
# then install semask with its test and ONNX extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,onnx]"
