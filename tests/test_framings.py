"""benchmarks/framings.py, the forgetting study's style control: its framings written out by hand,
and its rankings (summed and per token) against replies scored in full with plain transformers."""

import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from framings import framed, main, score_model  # noqa: E402

from lit_posttrain.data.multiple_choice import load_multiple_choice  # noqa: E402


def test_each_framing_written_out():
    assert framed("Capital of France?", ["Paris", "Rome"], "bare") == ("Capital of France?", ["Paris", "Rome"])
    assert framed("Capital of France?", ["Paris", "Rome"], "english")[1] == ["The answer is Paris.", "The answer is Rome."]
    assert framed("Capital of France?", ["Paris", "Rome"], "german")[1] == ["Die Antwort ist Paris.", "Die Antwort ist Rome."]
    assert framed("Capital of France?", ["Paris", "Rome"], "lettered") == ("Capital of France?\nA) Paris\nB) Rome\nAnswer with the letter.", ["A", "B"])


@torch.no_grad()
def in_full(model, tokenizer, user: str, replies: list[str]) -> tuple[list[float], list[int]]:
    """Each reply's summed log-likelihood after the chat-templated question, one sequence at a time."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    sums, lengths = [], []
    for reply in replies:
        ids = prompt + tokenizer(reply, add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        sums.append(float(sum(logp[t - 1, ids[t]] for t in range(len(prompt), len(ids)))))
        lengths.append(len(ids) - len(prompt))
    return sums, lengths


def test_rankings_match_replies_scored_in_full(tiny_model_dir, tmp_path, monkeypatch):
    items = load_multiple_choice("builtin:general_knowledge", limit=12)
    scored = score_model("tiny-random-llama", items, ("bare", "per_token", "lettered", "german", "any_form"))
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_model_dir), AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for framing, per_token in (("bare", False), ("per_token", True), ("lettered", False), ("german", False)):
        expected = []
        for item in items:
            user, replies = framed(item.question, list(item.choices), "bare" if per_token else framing)
            sums, lengths = in_full(model, tokenizer, user, replies)
            scores = [s / n for s, n in zip(sums, lengths, strict=True)] if per_token else sums
            expected.append(max(range(len(scores)), key=scores.__getitem__) == item.answer)
        assert scored[framing] == expected, framing
    any_form = []  # each option's probability summed over its three forms, by hand
    for item in items:
        sums_F = [in_full(model, tokenizer, item.question, framed(item.question, list(item.choices), form)[1])[0] for form in ("bare", "english", "german")]
        summed = [math.log(sum(math.exp(sums[c]) for sums in sums_F)) for c in range(len(item.choices))]
        any_form.append(max(range(len(summed)), key=summed.__getitem__) == item.answer)
    assert scored["any_form"] == any_form
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "framings.json"
    assert main(["tiny-random-llama", "--out", str(out), "--max-items", "4", "--framings", "bare", "german"]) == 0
    saved = json.loads(out.read_text())
    assert saved["items"] == 4 and list(saved["models"]["tiny-random-llama"]) == ["bare", "german"]
    assert saved["models"]["tiny-random-llama"]["bare"] == scored["bare"][:4]
    assert main(["tiny-random-llama", "--out", str(out), "--max-items", "4", "--framings", "german"]) == 0  # kept, not scored again
    assert json.loads(out.read_text()) == saved
    assert main(["tiny-random-llama", "--out", str(out), "--max-items", "4", "--framings", "bare", "any_form"]) == 0  # one more framing
    both = json.loads(out.read_text())["models"]["tiny-random-llama"]
    assert list(both) == ["bare", "german", "any_form"] and both["bare"] == scored["bare"][:4] and both["any_form"] == scored["any_form"][:4]
