#!/usr/bin/env bash
# Make .venv, install torch deliberately (CPU wheel index when no NVIDIA GPU is visible, the default
# index -- CUDA builds on Linux -- when one is), then semask with its test and ONNX extras. Idempotent.
# SEMASK_TORCH=2.x.y picks another torch version; SEMASK_TORCH_INDEX=URL forces an index.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${SEMASK_TORCH:-2.13.0}"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
[ -x .venv/bin/python ] || python3 -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
if .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: torch $TORCH_VERSION already installed ($(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
elif [ -n "${SEMASK_TORCH_INDEX:-}" ]; then
  echo "setup: installing torch $TORCH_VERSION from SEMASK_TORCH_INDEX=$SEMASK_TORCH_INDEX"
  "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$SEMASK_TORCH_INDEX"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found ($(nvidia-smi -L | head -1)); installing the CUDA build of torch $TORCH_VERSION from the default index"
  "${PIP[@]}" "torch==$TORCH_VERSION"
else
  echo "setup: no NVIDIA GPU found; installing the CPU build of torch $TORCH_VERSION from $CPU_INDEX"
  if ! "${PIP[@]}" --retries 1 --timeout 20 "torch==$TORCH_VERSION" --index-url "$CPU_INDEX"; then
    echo "setup: the CPU index was not reachable; falling back to the default index"
    "${PIP[@]}" "torch==$TORCH_VERSION"
  fi
fi
.venv/bin/python -c "import torch; print(f'setup: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
"${PIP[@]}" -e ".[test,onnx]"
echo "setup: semask installed in .venv (extras: test, onnx)"
