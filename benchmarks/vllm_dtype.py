"""VLLMEngine's sampling speed in float32 against bf16, for a float32 policy (a fully fine-tuned
one's master weights under bf16-mixed, which the engine now serves in bf16).

    .venv/bin/python benchmarks/vllm_dtype.py --rounds 2 [--max-new-tokens 128]

Each setting runs in a process of its own (one vLLM engine a process), alternating `rounds`
times: the built-in model in float32, the engine set up with `compute_dtype` None (the weights'
dtype, the engine before 2026-12-04) or bf16, 8 story prompts x 8 samples at temperature 1, one
untimed call, then the best of two timed calls and one weight push. Prints a JSON line a run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WORDS = ["ice", "fire", "sand", "glass", "rain", "stone", "wind", "gold"]


def one(dtype: str, max_new_tokens: int) -> dict:
    import torch

    from lit_posttrain.methods.base import PostTrainingModule
    from lit_posttrain.rollout.vllm import VLLMEngine

    module = PostTrainingModule(model="builtin:smollm2-135m-instruct", dtype="float32")
    module.configure_model()
    engine = VLLMEngine(max_new_tokens=max_new_tokens, temperature=1.0)
    engine.compute_dtype = torch.bfloat16 if dtype == "bfloat16" else None
    start = time.perf_counter()
    engine.setup(module.policy, module.tokenizer)
    setup_s = time.perf_counter() - start
    prompts = [module.tokenizer.encode(f"Once upon a time, in a land of {word}, there lived") for word in WORDS]
    engine.generate(prompts, n=8, seed=list(range(8)))
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        rollout = engine.generate(prompts, n=8, seed=list(range(8)))
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    engine.sync_weights(module.policy)
    push_s = time.perf_counter() - start
    engine.close()
    tokens = int(rollout.mask_BT.sum())
    return {
        "engine_dtype": dtype, "generate_s": round(min(seconds), 2), "tokens": tokens, "tokens_per_s": round(tokens / min(seconds)),
        "setup_s": round(setup_s, 1), "push_s": round(push_s, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--one", choices=["float32", "bfloat16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.max_new_tokens)), flush=True)
        return
    for _ in range(args.rounds):
        for dtype in ("float32", "bfloat16"):
            command = [sys.executable, __file__, "--one", dtype, "--max-new-tokens", str(args.max_new_tokens)]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            print(lines[-1] if done.returncode == 0 and lines else json.dumps({"engine_dtype": dtype, "failed": done.stderr[-600:]}), flush=True)


if __name__ == "__main__":
    main()
