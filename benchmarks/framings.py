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
  for longer options);
- `any_form`: each option's probability summed over the bare, English and German forms, the
  likeliest picked: the form-robust probe `ForgettingProbes(answer_forms=...)` logs (the library's
  `score_in_forms`).
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
FORMS = {"bare": "{choice}", "english": "The answer is {choice}.", "german": "Die Antwort ist {choice}."}  # the reply's forms
FRAMINGS = (*FORMS, "lettered", "per_token", "any_form")


def framed(question: str, choices: list[str], framing: str) -> tuple[str, list[str]]:
    """The user turn and the replies to score for one item under `framing`."""
    if framing in FORMS:
        return question, [FORMS[framing].replace("{choice}", c) for c in choices]
    if framing == "lettered":
        listed = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))
        return f"{question}\n{listed}\nAnswer with the letter.", list(LETTERS[: len(choices)])
    return question, list(choices)  # per_token: the bare replies


def framed_items(items: list, framing: str) -> list:
    """The items as `framing` asks the model them, question and replies both (`score_model` needs it
    for the lettered framing alone: the reply forms go through `choice_rows(answer_form=...)`)."""
    from lit_posttrain.data.multiple_choice import MultipleChoiceItem

    out = []
    for item in items:
        question, replies = framed(item.question, list(item.choices), framing)
        out.append(MultipleChoiceItem(question, tuple(replies), item.answer, item.source))
    return out


def score_model(source: str, items: list, framings: tuple[str, ...] = FRAMINGS) -> dict[str, list[bool]]:
    """Each framing's per-item right or wrong for the model at `source`, scored as the study's
    probe scores (the library's `score_in_forms` and `score_choices`: the chat template, the
    question once per item), each form scored once whichever framings read it."""
    from lit_posttrain.measurement import choice_rows, score_choices, score_in_forms
    from lit_posttrain.methods.sft import SFT

    module = SFT(model=source, dtype="float32", lora=None)
    module.configure_model()
    module.policy.eval()
    needed = [f for f in FORMS if f in framings or "any_form" in framings or (f == "bare" and "per_token" in framings)]
    scored = score_in_forms(module, items, {f: choice_rows(items, module.tokenizer, answer_form=FORMS[f]) for f in needed})
    results: dict[str, list[bool]] = {}
    for framing in framings:
        if framing in FORMS:
            results[framing] = scored["forms"][framing]["per_example"]
        elif framing == "any_form":
            results[framing] = scored["per_example"]
        elif framing == "per_token":
            bare = scored["forms"]["bare"]
            results[framing] = [
                max(range(len(sums)), key=lambda c: sums[c] / tokens[c]) == item.answer
                for item, sums, tokens in zip(items, bare["choice_logp"], bare["choice_tokens"], strict=True)
            ]
        else:  # lettered: another question, not another reply
            asked = framed_items(items, framing)
            results[framing] = score_choices(module, asked, choice_rows(asked, module.tokenizer))["per_example"]
    return results


def main(argv: list[str] | None = None) -> int:
    from lit_posttrain.data.multiple_choice import load_multiple_choice

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="saved model folders, or builtin:... sources")
    parser.add_argument("--out", type=Path, required=True, help="JSON file; a model's framings already in it are kept and not scored again")
    parser.add_argument("--max-items", type=int, default=None, help="the first N GK items (default: all 328)")
    parser.add_argument("--framings", nargs="+", choices=FRAMINGS, default=list(FRAMINGS))
    args = parser.parse_args(argv)
    items = load_multiple_choice("builtin:general_knowledge", limit=args.max_items)
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {"items": len(items), "models": {}}
    if saved["items"] != len(items):
        parser.error(f"{args.out} holds scores over {saved['items']} items, not {len(items)}: write to another file")
    for source in args.models:
        label = source if source.startswith(("builtin:", "tiny-random")) else os.path.relpath(source)
        kept = saved["models"].get(label, {})
        missing = tuple(f for f in args.framings if f not in kept)
        if not missing:
            print(f"{label}: kept from {args.out}")
            continue
        scores = score_model(source, items, missing)
        saved["models"][label] = kept | scores
        print(f"{label}: " + ", ".join(f"{f} {sum(v) / len(v):.3f}" for f, v in scores.items()), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(saved))
        tmp.replace(args.out)  # after every model: an interrupted scoring keeps what it finished
    return 0


if __name__ == "__main__":
    sys.exit(main())
