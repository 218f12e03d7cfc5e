"""Offline self-SFT's data, as "Retaining by Doing" (arXiv 2510.18874) makes it: the starting model
samples each training prompt once, the verifier keeps the right answers, and SFT trains on those
fixed samples (the study's `offline_self_sft`, beside the online `self_sft` that samples anew every
step).

`write_offline_task` writes, for one seed: `train.jsonl` (each kept sample as the prompt's
demonstration, in the `messages` layout), `eval.jsonl` (the task's held-out prompts and answers,
unchanged, so that evaluation and its baseline are the other methods'), `samples.json` (how many
were drawn and kept) and `task.yaml` (a FileTask over the two files with the task's verifier).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml


def sample_verified(model_folder: str, dtype: torch.dtype, examples: list, verifier, n: int, max_new_tokens: int,
                    temperature: float, seed: int, batch_prompts: int = 16) -> tuple[list[tuple[object, str]], int]:  # fmt: skip
    """`n` samples of each example's prompt by the model in `model_folder` (its chat template, as
    training renders prompts), the ones `verifier` accepts as (example, completion); and how many
    were drawn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=dtype).eval()
    torch.manual_seed(seed)
    kept, drawn = [], 0
    for start in range(0, len(examples), batch_prompts):
        batch = examples[start : start + batch_prompts]
        texts = [tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=False) for ex in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 num_return_sequences=n, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        replies = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, reply in enumerate(replies):
            example = batch[i // n]
            drawn += 1
            if verifier(reply, example.answer) == 1.0:
                kept.append((example, reply))
    return kept, drawn


def write_offline_task(task, model_folder: str, dtype: torch.dtype, folder: Path, n: int, max_new_tokens: int, seed: int,
                       temperature: float = 1.0) -> Path:  # fmt: skip
    """The offline self-SFT task for `task` (an Arithmetic task object) sampled by the model in
    `model_folder`, written into `folder`; returns its task.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    kept, drawn = sample_verified(model_folder, dtype, list(task.train_examples()), task.verifier, n, max_new_tokens, temperature, seed)
    if not kept:
        raise RuntimeError(f"the starting model got none of {drawn} samples right: offline self-SFT has nothing to train on")
    with open(folder / "train.jsonl", "w") as f:
        for example, reply in kept:
            f.write(json.dumps({"messages": [*example.messages, {"role": "assistant", "content": reply}], "answer": example.answer}) + "\n")
    with open(folder / "eval.jsonl", "w") as f:
        for example in task.eval_examples():
            f.write(json.dumps({"messages": example.messages, "answer": example.answer}) + "\n")
    prompts = len({json.dumps(ex.messages) for ex, _ in kept})
    summary = {"drawn": drawn, "kept": len(kept), "prompts_with_a_kept_sample": prompts, "samples_per_prompt": n, "temperature": temperature, "seed": seed}
    (folder / "samples.json").write_text(json.dumps(summary, indent=1))
    verifier = {"class_path": "lit_posttrain.rewards.NumericMatch", "init_args": {"extract": "last"}}
    data = {"task": {"class_path": "lit_posttrain.data.files.FileTask",
                     "init_args": {"train": str(folder / "train.jsonl"), "eval": str(folder / "eval.jsonl"), "verifier": verifier, "name": "arithmetic"}},
            "max_prompt_tokens": 512, "max_completion_tokens": 32}  # fmt: skip
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump({"data": data}, sort_keys=False))
    return path
