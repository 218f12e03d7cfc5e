#!/usr/bin/env bash
# The GPU check: GRPO and SFT steps of a 0.5B and a 1.5B Qwen2 shape (random weights built from
# their configs: nothing downloaded) in bf16-mixed (float32 master weights and Adam state) under
# FSDP2 on one GPU, full fine-tuning and LoRA, 8 prompts x 8 completions of 1,024 tokens; prints
# a JSON line per setting with step time, tokens/s, MFU against the GPU's bf16 dense peak
# (--peak-tflops, 989 for an H100/H200 SXM) and peak GPU memory (benchmarks/model_sizes.py says
# how each is measured), and MFU against the bf16 matmul rate measured there (`mfu_measured`).
# Needs only torch, lightning, transformers and peft besides this project (no vLLM, no datasets,
# not installed: it runs from the checkout). 5 min 52 s on an H200 (2026-12-04), a probe step first.
#
#   bash scripts/gpu_check.sh            # on a machine with a CUDA GPU
#   SMOKE=1 bash scripts/gpu_check.sh    # the same path on the CPU with a tiny model (CI runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${SMOKE:-0}" = 1 ]; then
  # Every path of the real check on a tiny model; its MFU means nothing (no peak is measured).
  accelerator=cpu probe_shape=tiny-random-llama probe_length=8
  args=(--shapes tiny-random-llama --lengths 16 --prompts 2 --group 2 --steps 1 --micro-tokens 100 --peak-tflops 1)
else
  "$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU: run with SMOKE=1 on a CPU'"
  "$python" -c "import torch; print('gpu:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
  accelerator=gpu probe_shape=qwen2-0.5b probe_length=256
  args=(--shapes qwen2-0.5b qwen2-1.5b --lengths 1024 --prompts 8 --group 8 --steps 2 --micro-tokens 16384)
fi
common=(--accelerator "$accelerator" --strategies fsdp --devices 1 --dtype float32 --precision bf16-mixed)
# One short GRPO step first, its whole output shown if it fails: a broken path costs seconds of a
# lent GPU, not the minutes of every setting (each of which reports only its error's tail).
log=$(mktemp)
echo "probe: one GRPO step of $probe_shape (LoRA, 2 x 2 completions of $probe_length tokens)"
if ! MODEL_SIZES_ONE="{\"shape\": \"$probe_shape\", \"method\": \"grpo\", \"tuning\": \"lora\", \"strategy\": \"fsdp\", \"length\": $probe_length}" \
    "$python" benchmarks/model_sizes.py --one "${common[@]}" --prompts 2 --group 2 --steps 1 > "$log" 2>&1; then
  tail -c 8000 "$log"; echo "gpu_check: the probe step failed (above)" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
exec "$python" benchmarks/model_sizes.py --methods grpo sft --tuning full lora "${common[@]}" "${args[@]}" "$@"
