"""HFEngine against VLLMEngine on this machine: sampling speed by completion length, start-up, peak
memory, thread settings, and a GRPO step (configs/grpo.yaml) with each.

    .venv/bin/python benchmarks/engines.py [--lengths 16 64 256] [--threads 1 2] [--prompts 8] [--steps 4] [--out runs/engines]

Sampling: the built-in model (`dtype: auto`: float32 without native bf16) samples a group of 8
completions for each of 8 story prompts (chat template, the prompts benchmarks/throughput.py's
length sweep uses: the model writes until max_new_tokens; `--prompts` of them), the same prompts and per-prompt seeds
for both engines, at each completion length. Each (engine, length, threads) runs in a process of
its own: one untimed warm-up call (4 tokens), then `--repeats` timed calls; reported: the median
time, generated tokens per second, the engine's start-up (`setup`: for vLLM its engine start, for
HFEngine nothing but bookkeeping), and the process's peak RSS (model, engine and KV cache).
vLLM runs eager (its compiled mode costs ~3 min at start-up) with the engine's default KV cache.
A LoRA policy is measured too for vLLM, as served adapters, which on CPU is why `merge_lora`
defaults to merged weights there.

The GRPO step: `lit-posttrain fit --config configs/grpo.yaml` (LoRA, 8 prompts x 8, 8 new tokens) with each engine
(`--config configs/engines/vllm.yaml` for vLLM), `warmup + steps` steps without evaluation, timed
as benchmarks/throughput.py times every method (median step and its phases, peak RSS).

Writes engines.md and engines.csv (sampling) and engines_grpo.csv to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from compare_report import write_csv
from throughput import MODEL, ROOT, STORY_SUBJECTS, markdown_table, matmul_peak, run_cli, summarise

GROUP = 8


def sample_one(spec: dict) -> dict:
    """In a fresh process: start one engine on the built-in model and time its sampling."""
    from lit_posttrain.methods.base import PostTrainingModule
    from lit_posttrain.models import LoRA

    torch.set_num_threads(spec["threads"])
    module = PostTrainingModule(model=MODEL, dtype="auto", lora=LoRA() if spec["lora"] else None)
    module.configure_model()
    if spec["engine"] == "vllm":
        from lit_posttrain.rollout.vllm import VLLMEngine

        engine = VLLMEngine(max_new_tokens=spec["length"], threads=spec["threads"], merge_lora=False if spec["lora"] else None)
    else:
        from lit_posttrain.rollout import HFEngine

        engine = HFEngine(max_new_tokens=spec["length"])
    tokenizer = module.tokenizer
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Write a long story about {subject}."}], add_generation_prompt=True, tokenize=False
        )
        for subject in STORY_SUBJECTS[: spec["prompts"]]
    ]
    prompt_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    start = time.perf_counter()
    engine.setup(module.policy, tokenizer)
    startup_s = time.perf_counter() - start
    engine.generate(prompt_ids, n=GROUP, seed=list(range(len(prompt_ids))), max_new_tokens=4)  # warm-up, untimed
    times, generated = [], []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        rollout = engine.generate(prompt_ids, n=GROUP, seed=list(range(len(prompt_ids))))
        times.append(time.perf_counter() - start)
        generated.append(int(rollout.mask_BT.sum()))
    close = getattr(engine, "close", None)
    if close is not None:
        close()
    return {
        "startup_s": startup_s,
        "generate_s": statistics.median(times),
        "generated_tokens": statistics.median(generated),
        "completion_length": statistics.median(generated) / (len(prompt_ids) * GROUP),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
    }


def run_sample(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--sample-one", json.dumps(spec)], capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{spec}: exited with {out.returncode}:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["tokens_per_s"] = result["generated_tokens"] / result["generate_s"]
    print(f"{spec}: {result['generate_s']:.2f} s, {result['tokens_per_s']:.0f} tokens/s, start-up {result['startup_s']:.1f} s", flush=True)
    return {**spec, **result}


SAMPLE_COLUMNS = [
    ("engine", "engine", "{}"), ("LoRA", "lora", "{}"), ("threads", "threads", "{}"), ("max_new_tokens", "length", "{}"),
    ("mean completion", "completion_length", "{:.1f}"), ("generate (s)", "generate_s", "{:.2f}"),
    ("generated tokens/s", "tokens_per_s", "{:.0f}"), ("start-up (s)", "startup_s", "{:.1f}"), ("peak RSS (GiB)", "peak_rss_gib", "{:.2f}"),
]  # fmt: skip
GRPO_COLUMNS = [
    ("engine", "engine", "{}"), ("step (s)", "step_s", "{:.2f}"), ("generation (s)", "generation_s", "{:.2f}"),
    ("loss forward (s)", "loss_forward_s", "{:.2f}"), ("backward + step (s)", "backward_step_s", "{:.2f}"),
    ("weight push (s)", "sync_s", "{:.2f}"), ("generated tokens", "generated_tokens", "{:.0f}"), ("generation tokens/s", "generation_tokens_per_s", "{:.0f}"),
    ("peak RSS process (GiB)", "peak_rss_process_gib", "{:.2f}"), ("process (s)", "process_s", "{:.0f}"),
]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="max_new_tokens settings")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts tried for vLLM (HFEngine: the last)")
    parser.add_argument("--repeats", type=int, default=2, help="timed sampling calls per setting")
    parser.add_argument("--prompts", type=int, default=8, help=f"story prompts per sampling call, {GROUP} samples each")
    parser.add_argument("--steps", type=int, default=4, help="timed GRPO steps per engine (0: skip the GRPO step)")
    parser.add_argument("--warmup", type=int, default=1, help="GRPO steps run first and not timed")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "engines", help="folder for the tables")
    parser.add_argument("--sample-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sample_one:
        print(json.dumps(sample_one(json.loads(args.sample_one))))
        return
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    from lit_posttrain.precision import resolve_dtype

    dtype = resolve_dtype("auto")
    peak = matmul_peak(dtype)
    calls = {"repeats": args.repeats, "prompts": args.prompts}
    specs = [{"engine": "hf", "lora": False, "threads": args.threads[-1], "length": n, **calls} for n in args.lengths]
    specs += [{"engine": "vllm", "lora": False, "threads": t, "length": n, **calls} for t in args.threads for n in args.lengths]
    specs.append({"engine": "vllm", "lora": True, "threads": args.threads[-1], "length": args.lengths[0], **calls})
    sampling = [run_sample(spec) for spec in specs]

    grpo = []
    if args.steps:
        from throughput import non_embedding_params

        from lit_posttrain.models import resolve_model_source

        params = non_embedding_params(resolve_model_source(MODEL))
        config = ROOT / "configs" / "grpo.yaml"
        for engine, extra in (("hf", []), ("vllm", ["--config", str(ROOT / "configs" / "engines" / "vllm.yaml")])):
            run = run_cli(f"grpo_{engine}", config, extra, args.out, args.warmup, args.steps, args.threads[-1])
            grpo.append({"engine": engine, **summarise(run, params, peak)})
    header = (
        f"machine: {os.cpu_count()} CPUs, {str(dtype).removeprefix('torch.')} matmul peak {peak / 1e9:.0f} GFLOP/s; model: "
        f"{MODEL}; {args.prompts} prompts x {GROUP} samples per call, median of {args.repeats} timed calls"
    )
    report = [header, markdown_table(sampling, SAMPLE_COLUMNS)]
    if grpo:
        report += [f"Quickstart GRPO step (median of {args.steps} after {args.warmup} warm-up):", markdown_table(grpo, GRPO_COLUMNS)]
        write_csv(args.out / "engines_grpo.csv", list(grpo[0]), grpo)
    write_csv(args.out / "engines.csv", list(sampling[0]), sampling)
    (args.out / "engines.md").write_text("\n\n".join(report) + "\n")
    print("\n" + "\n\n".join(report) + f"\n\nwritten to {args.out}")


if __name__ == "__main__":
    main()
