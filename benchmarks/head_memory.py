"""Peak memory of the training forward and backward at real completion lengths: the output head's
logits in full against in chunks (`lit_posttrain.head`).

One forward and backward of the shared-prompt log-probs, as the on-policy methods compute them:
the built-in model, LoRA r16, bf16, 8 prompts x 8 completions of random tokens after 64-token
prompts. Each setting runs in a fresh process (peak resident memory is a process's high-water
mark), one at a time:

    .venv/bin/python benchmarks/head_memory.py --lengths 128 256 512 --heads chunked full

Each process keeps the C allocator's settings from the environment, as a run of the CLI does
(benchmarks/isolated.py); the tables in benchmarks/README.md were measured with
`MALLOC_MMAP_THRESHOLD_=65536`, which hands every freed block from 64 KiB up back to the system
(set it again to compare). Also reported: the bytes autograd saved for the backward (each storage
once), which no allocator moves.

`--heads full` beyond 32 rows x 128 tokens is refused unless `--allow-oom`: 64 rows x 128 tokens
in float32 was killed for memory at this machine's 24 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from isolated import run_isolated

FULL_LIMIT = 32 * 128  # completion tokens (rows x length) the full-logits head was measured to fit


def one(length: int, head: str, prompts: int, group: int, prompt_tokens: int) -> dict:
    import torch

    from lit_posttrain import head as head_module
    from lit_posttrain import logprobs
    from lit_posttrain.models import LoRA, apply_lora, load_model, resolve_model_source
    from lit_posttrain.precision import resolve_dtype

    if head == "full":
        logprobs.plain_head = lambda model: None  # the path every forward took before the chunked head
    torch.manual_seed(0)
    dtype = resolve_dtype("auto")
    model = apply_lora(load_model(resolve_model_source("builtin:smollm2-135m-instruct"), dtype), LoRA(r=16))
    vocab = model.config.vocab_size
    rows = prompts * group
    prompt_PW = torch.randint(10, vocab, (prompts, prompt_tokens))
    tokens_RT = torch.cat([prompt_PW.repeat_interleave(group, 0), torch.randint(10, vocab, (rows, length))], 1)
    attention_RT = torch.ones_like(tokens_RT)
    group_R = torch.arange(prompts).repeat_interleave(group)
    base_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    saved: dict[int, int] = {}

    def keep(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        logp_RT = logprobs.shared_prompt_logp(model, tokens_RT, attention_RT, group_R, prompt_tokens)
    logp_RT.sum().backward()
    seconds = time.perf_counter() - start
    return {
        "head": head, "completion_tokens": length, "rows": rows, "dtype": str(dtype).removeprefix("torch."),
        "chunk_positions": head_module.HEAD_CHUNK_BYTES // (4 * vocab) if head == "chunked" else None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "saved_for_backward_gib": round(sum(saved.values()) / 2**30, 2),
        "model_loaded_rss_gib": round(base_gib, 2), "forward_backward_s": round(seconds, 1),
        "tokens_per_s": round(rows * length / seconds, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--heads", nargs="+", choices=["chunked", "full"], default=["chunked", "full"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--allow-oom", action="store_true", help="run the full head past the length measured to fit")
    parser.add_argument("--one", nargs=2, metavar=("LENGTH", "HEAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.prompts, args.group, args.prompt_tokens)))
        return
    for length in args.lengths:
        for head in args.heads:
            if head == "full" and length * args.prompts * args.group > FULL_LIMIT and not args.allow_oom:
                print(json.dumps({"head": head, "completion_tokens": length, "skipped": "over 24 GiB before (--allow-oom)"}))
                continue
            command = [sys.executable, __file__, "--one", str(length), head, "--prompts", str(args.prompts),
                       "--group", str(args.group), "--prompt-tokens", str(args.prompt_tokens)]  # fmt: skip
            print(json.dumps(run_isolated(command, {"head": head, "completion_tokens": length})), flush=True)


if __name__ == "__main__":
    main()
