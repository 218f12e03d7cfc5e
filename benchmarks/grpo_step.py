"""One GRPO step on the built-in model, by phase: `throughput.py --methods quickstart`.

    .venv/bin/python benchmarks/grpo_step.py [--steps 8] [--threads 2] [--out runs/throughput]

The quickstart configuration (GRPO + LoRA, 8 prompts x 8 samples, 8 new tokens) timed through the
real CLI; the phases, token rates, MFU and their FLOP accounting are throughput.py's (its docstring
states them). Kept so that the command benchmarks/README.md's GRPO table names still runs.
"""

import sys

from throughput import main

if __name__ == "__main__":
    main(["--methods", "quickstart", *sys.argv[1:]])
