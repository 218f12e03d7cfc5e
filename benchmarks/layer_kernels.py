"""The training forward and backward with each LoRA layer and attention kernel, measured round robin.

    .venv/bin/python benchmarks/layer_kernels.py [--rows 16] [--tokens 82] [--prompt 74] [--rounds 10]
        [--variants peft+sdpa fused+sdpa fused+default fused+eager]

One process holds every variant of the policy (the built-in model, LoRA r16 on every linear layer,
bf16 weights, under bf16 autocast as `bf16-mixed` runs it) and times one forward and backward of
the per-token log-probs of a batch (`rows` x `tokens` random tokens, scored after `prompt`, as SFT
scores a demonstration) for each variant in turn, `rounds` times after a warm-up round: a machine
whose speed drifts (these shared CPUs do, by up to 2x within a minute) then slows every variant
alike, which timing them one after the other in separate processes does not. Prints the minimum
and median seconds per variant.

Variants: `peft` is peft's own LoRA layer, `fused` ours (`lit_posttrain.lora_linear`); `sdpa` is
transformers' SDPA (on the CPU, torch's flash-attention kernel), `default` what `load_model` picks
(`lit_posttrain.attention`: matmuls for keys up to 128 on a CPU, SDPA beyond), `eager`
transformers' eager attention.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lit_posttrain.logprobs import token_logp
from lit_posttrain.models import LoRA, build_policy, load_model, resolve_model_source

VARIANTS = ("peft+sdpa", "fused+sdpa", "fused+default", "fused+eager")


def policy(folder: str, variant: str) -> torch.nn.Module:
    layer, attention = variant.split("+")
    attn_implementation = None if attention == "default" else attention
    if layer == "fused":
        return build_policy(folder, torch.bfloat16, LoRA(), False, attn_implementation=attn_implementation)
    from peft import LoraConfig, get_peft_model

    model = load_model(folder, torch.bfloat16, attn_implementation=attn_implementation).train()
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=82, help="tokens a row (the quickstart's SFT rows: ~82)")
    parser.add_argument("--prompt", type=int, default=74, help="positions before the first scored token")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args()

    folder = resolve_model_source("builtin:smollm2-135m-instruct")
    models = {variant: policy(folder, variant) for variant in args.variants}
    generator = torch.Generator().manual_seed(0)
    tokens_BT = torch.randint(0, 49152, (args.rows, args.tokens), generator=generator)
    attention_BT = torch.ones_like(tokens_BT)
    seconds = {variant: [] for variant in models}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for variant, model in models.items():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logp_BT = token_logp(model, tokens_BT, attention_BT, first_scored=args.prompt)
            (-logp_BT.sum()).backward()
            if round_:
                seconds[variant].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    print(f"{args.rows} rows x {args.tokens} tokens, {torch.get_num_threads()} threads, {args.rounds} rounds")
    for variant, times in seconds.items():
        print(f"{variant:14s} min {min(times):.3f} s  median {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
