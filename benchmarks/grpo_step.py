"""One GRPO step on the built-in model, by phase: `throughput.py --methods grpo`.

    .venv/bin/python benchmarks/grpo_step.py [--steps 8] [--threads 2] [--out runs/throughput]

configs/grpo.yaml (GRPO + LoRA, 8 prompts x 8 samples, 8 new tokens; the quickstart was this step
until it became HPT, 2026-12-02) timed through the
real CLI; the phases, token rates, MFU and their FLOP accounting are throughput.py's (its docstring
states them). Kept so that the command benchmarks/README.md's GRPO table names still runs.
"""

import sys

from throughput import main

if __name__ == "__main__":
    main(["--methods", "grpo", *sys.argv[1:]])
