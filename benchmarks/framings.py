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
trained to answer in is form. Each framing is scored as the study's probe scores (the question as
the user turn through the chat template, each reply's tokens summed), so `bare` is the probe.

Written to --out: `{"items": N, "models": {label: {framing: [right or wrong per item]}}}`, each
label the folder's path relative to the current directory (or the `builtin:` source).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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


def framed_items(items: list, framing: str) -> list:
    """The items as `framing` asks the model them (per_token: the bare items, ranked otherwise)."""
    from lit_posttrain.data.multiple_choice import MultipleChoiceItem

    out = []
    for item in items:
        question, replies = framed(item.question, list(item.choices), framing)
        out.append(MultipleChoiceItem(question, tuple(replies), item.answer, item.source))
    return out


def score_model(source: str, items: list, framings: tuple[str, ...] = FRAMINGS) -> dict[str, list[bool]]:
    """Each framing's per-item right or wrong for the model at `source`, scored as the study's
    probe scores (the library's `score_choices`: the chat template, the question once per item)."""
    from lit_posttrain.measurement import choice_rows, score_choices
    from lit_posttrain.methods.sft import SFT

    module = SFT(model=source, dtype="float32", lora=None)
    module.configure_model()
    module.policy.eval()
    results: dict[str, list[bool]] = {}
    for framing in framings:
        asked = framed_items(items, "bare" if framing == "per_token" else framing)
        scored = score_choices(module, asked, choice_rows(asked, module.tokenizer))
        if framing == "per_token":
            results[framing] = [
                max(range(len(sums)), key=lambda c: sums[c] / tokens[c]) == item.answer
                for item, sums, tokens in zip(items, scored["choice_logp"], scored["choice_tokens"], strict=True)
            ]
        else:
            results[framing] = scored["per_example"]
    return results


def main(argv: list[str] | None = None) -> int:
    from lit_posttrain.data.multiple_choice import load_multiple_choice

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="saved model folders, or builtin:... sources")
    parser.add_argument("--out", type=Path, required=True, help="JSON file; models already in it are kept and not scored again")
    parser.add_argument("--max-items", type=int, default=None, help="the first N GK items (default: all 328)")
    parser.add_argument("--framings", nargs="+", choices=FRAMINGS, default=list(FRAMINGS))
    args = parser.parse_args(argv)
    items = load_multiple_choice("builtin:general_knowledge", limit=args.max_items)
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {"items": len(items), "models": {}}
    if saved["items"] != len(items):
        parser.error(f"{args.out} holds scores over {saved['items']} items, not {len(items)}: write to another file")
    for source in args.models:
        label = source if source.startswith(("builtin:", "tiny-random")) else os.path.relpath(source)
        if label in saved["models"]:
            print(f"{label}: kept from {args.out}")
            continue
        scores = score_model(source, items, tuple(args.framings))
        saved["models"][label] = scores
        print(f"{label}: " + ", ".join(f"{f} {sum(v) / len(v):.3f}" for f, v in scores.items()), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(saved))
        tmp.replace(args.out)  # after every model: an interrupted scoring keeps what it finished
    return 0


if __name__ == "__main__":
    sys.exit(main())
