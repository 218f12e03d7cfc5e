"""Score a saved model folder on the quickstart task's held-out sums with plain transformers: no
lit_posttrain code in the generation or the scoring, so it checks what a user who only has the
folder would see.

    .venv/bin/python benchmarks/score_saved_model.py runs/quickstart/model
    .venv/bin/python benchmarks/score_saved_model.py builtin:smollm2-135m-instruct   # the starting model

The prompts are the quickstart's (`Arithmetic(max_operand=20, num_eval=100)`: one worked example,
then the question, through the tokenizer's chat template); the replies are greedy, at most 8 new
tokens, as the run's evaluation makes them. Two scores, written apart from the project's verifiers:
strict (the reply, stripped of nothing, is exactly the sum's digits) and final number (the last
integer in the reply is the sum).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a saved model folder, or builtin:smollm2-135m-instruct for the start")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    folder = args.folder
    if folder.startswith("builtin:"):
        from lit_posttrain.models import resolve_model_source

        folder = resolve_model_source(folder)
    # The prompts only: the task's held-out questions and their answers.
    from lit_posttrain.data.arithmetic import Arithmetic

    examples = Arithmetic(max_operand=20, num_train=320, num_eval=100).eval_examples()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype)).eval()
    strict = final = 0
    for example in examples:
        ids = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False)
        reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        numbers = re.findall(r"-?\d+", reply)
        strict += reply == example.answer
        final += bool(numbers) and numbers[-1] == example.answer
    print(f"{args.folder}: strict {strict / len(examples):.3f}, final number {final / len(examples):.3f} on {len(examples)} held-out sums")
    return 0


if __name__ == "__main__":
    sys.exit(main())
