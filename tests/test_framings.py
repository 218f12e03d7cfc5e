"""benchmarks/framings.py, the forgetting study's style control: its framings written out by hand,
and its bare framing ranking the options as the library's probe does."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from framings import framed, main, score_model  # noqa: E402

from lit_posttrain.data.multiple_choice import load_multiple_choice  # noqa: E402
from lit_posttrain.measurement import choice_rows, score_choices  # noqa: E402
from lit_posttrain.methods.sft import SFT  # noqa: E402


def test_each_framing_written_out():
    assert framed("Capital of France?", ["Paris", "Rome"], "bare") == ("Capital of France?", ["Paris", "Rome"])
    assert framed("Capital of France?", ["Paris", "Rome"], "english")[1] == ["The answer is Paris.", "The answer is Rome."]
    assert framed("Capital of France?", ["Paris", "Rome"], "german")[1] == ["Die Antwort ist Paris.", "Die Antwort ist Rome."]
    assert framed("Capital of France?", ["Paris", "Rome"], "lettered") == ("Capital of France?\nA) Paris\nB) Rome\nAnswer with the letter.", ["A", "B"])


def test_the_bare_framing_is_the_studys_probe(tiny_model_dir, tmp_path, monkeypatch):
    items = load_multiple_choice("builtin:general_knowledge", limit=24)
    module = SFT(model="tiny-random-llama", dtype="float32")
    module.configure_model()
    module.policy.eval()
    probe = score_choices(module, items, choice_rows(items, module.tokenizer))
    scored = score_model(tiny_model_dir, items, ("bare", "per_token", "lettered"))
    assert scored["bare"] == probe["per_example"]
    assert all(len(v) == 24 for v in scored.values())
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "framings.json"
    assert main(["tiny-random-llama", "--out", str(out), "--max-items", "4", "--framings", "bare", "german"]) == 0
    saved = json.loads(out.read_text())
    assert saved["items"] == 4 and list(saved["models"]["tiny-random-llama"]) == ["bare", "german"]
    assert saved["models"]["tiny-random-llama"]["bare"] == probe["per_example"][:4]
