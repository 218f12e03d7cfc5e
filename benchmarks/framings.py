"""The style control of the forgetting study: saved models scored on the general-knowledge (GK)
items under several answer framings, to tell how much of a drop is the answers' form and how much
is knowledge.

    .venv/bin/python benchmarks/framings.py runs/forgetting/runs/*/seed0/model builtin:smollm2-135m-instruct \
        --out benchmarks/forgetting_items/framings.json

The probe the study runs scores each option's text as the whole reply ("Paris"). A model trained
to answer in German sentences may rank the bare options worse without knowing less. Every item
is scored here under:
- `bare`: the option's text alone (the study's probe; the same ranking, checked by a test);
- `english`: "The answer is {option}.";
- `german`: "Die Antwort ist {option}.";
- `lettered`: the options listed as A-D under the question, the reply the letter alone;
- `per_token`: the bare options ranked by mean log-likelihood per token, not summed (no penalty
  for longer options).
A drop that holds under every framing is knowledge; one that vanishes in the framing the model was
trained to answer in is form. The scoring is plain transformers (the tokenizer's chat template,
the question as the user turn, the reply's tokens scored), not the library's probe code.

Written to --out: `{"items": N, "models": {label: {framing: [right or wrong per item]}}}`, each
label the folder's path relative to the current directory (or the `builtin:` source).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LETTERS = "ABCDEFGH"
FRAMINGS = ("bare", "english", "german", "lettered", "per_token")


def framed(question: str, choices: list[str], framing: str) -> tuple[str, list[str]]:
    """The user turn and the replies to score for one item under `framing`."""
    if framing == "english":
        return question, [f"The answer is {c}." for c in choices]
    if framing == "german":
        return question, [f"Die Antwort ist {c}." for c in choices]
    if framing == "lettered":
        listed = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))
        return f"{question}\n{listed}\nAnswer with the letter.", list(LETTERS[: len(choices)])
    return question, list(choices)  # bare, per_token


@torch.no_grad()
def reply_logprobs(model, tokenizer, user: str, replies: list[str]) -> tuple[list[float], list[int]]:
    """Summed log-likelihood of each reply's tokens after the chat-templated question, and its length."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    rows = [prompt + tokenizer(reply, add_special_tokens=False)["input_ids"] for reply in replies]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens_BT = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention_BT = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    logp_BTV = torch.log_softmax(model(input_ids=tokens_BT, attention_mask=attention_BT).logits.float(), dim=-1)
    sums, lengths = [], []
    for b, row in enumerate(rows):
        # Token t is predicted at position t - 1: the reply's tokens from len(prompt) on.
        targets = torch.tensor(row[len(prompt) :])
        positions = torch.arange(len(prompt) - 1, len(row) - 1)
        sums.append(float(logp_BTV[b, positions, targets].sum()))
        lengths.append(len(targets))
    return sums, lengths


def score_model(folder: str, items: list, framings: tuple[str, ...] = FRAMINGS) -> dict[str, list[bool]]:
    """Each framing's per-item right or wrong for the model in `folder`."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    results: dict[str, list[bool]] = {f: [] for f in framings}
    for item in items:
        for framing in framings:
            user, replies = framed(item.question, list(item.choices), framing)
            sums, lengths = reply_logprobs(model, tokenizer, user, replies)
            scores = [s / n for s, n in zip(sums, lengths, strict=True)] if framing == "per_token" else sums
            results[framing].append(max(range(len(scores)), key=scores.__getitem__) == item.answer)
    return results


def main(argv: list[str] | None = None) -> int:
    from lit_posttrain.data.multiple_choice import load_multiple_choice
    from lit_posttrain.models import resolve_model_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="saved model folders, or builtin:... sources")
    parser.add_argument("--out", type=Path, required=True, help="JSON file; models already in it are kept and not scored again")
    parser.add_argument("--max-items", type=int, default=None, help="the first N GK items (default: all 328)")
    parser.add_argument("--framings", nargs="+", choices=FRAMINGS, default=list(FRAMINGS))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    items = load_multiple_choice("builtin:general_knowledge", limit=args.max_items)
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {"items": len(items), "models": {}}
    if saved["items"] != len(items):
        parser.error(f"{args.out} holds scores over {saved['items']} items, not {len(items)}: write to another file")
    for source in args.models:
        label = source if source.startswith(("builtin:", "tiny-random")) else os.path.relpath(source)
        if label in saved["models"]:
            print(f"{label}: kept from {args.out}")
            continue
        folder = resolve_model_source(source) if source.startswith(("builtin:", "tiny-random")) else source
        scores = score_model(folder, items, tuple(args.framings))
        saved["models"][label] = scores
        print(f"{label}: " + ", ".join(f"{f} {sum(v) / len(v):.3f}" for f, v in scores.items()), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(saved))
        tmp.replace(args.out)  # after every model: an interrupted scoring keeps what it finished
    return 0


if __name__ == "__main__":
    sys.exit(main())
