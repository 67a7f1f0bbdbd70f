#!/usr/bin/env bash
# A separate virtual environment, .venv-peer, for the PyTorch peer benchmark (../shared/peers/). PyTorch is
# never a dependency of the project: it lives only here.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-peer/bin/python ] || ! .venv-peer/bin/python -c "import torch, numpy" 2>/dev/null; then
    "${PYTHON:-python3}" -m venv .venv-peer
    .venv-peer/bin/python -m pip install --quiet torch==2.13.0 numpy
fi
