import threading
from pathlib import Path

import pytest
import torch

from lit_posttrain.models import (
    LoRA,
    ModelSourceError,
    _build_atomically,
    apply_lora,
    check_same_tokenizer,
    load_model,
    load_tokenizer,
    resolve_model_source,
)
from lit_posttrain.precision import resolve_dtype
from lit_posttrain.tiny import build_tiny_tokenizer


def test_tiny_tokenizer_is_character_level_and_keeps_whitespace(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    text = "12 + 3\n= 15"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|user|>hi</s><|assistant|>"


@pytest.mark.parametrize("source", ["no/such/folder/here", "not a model", "./missing-dir", "builtin:gpt-17"])
def test_unknown_source_lists_the_accepted_forms(source):
    with pytest.raises(ModelSourceError) as err:
        resolve_model_source(source)
    assert "builtin:smollm2-135m-instruct" in str(err.value)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelSourceError, match="without config.json"):
        resolve_model_source(str(tmp_path))


def test_local_folders_resolve_to_themselves(tiny_model_dir):
    assert resolve_model_source(tiny_model_dir) == tiny_model_dir  # hub ids: tests/test_hub_models.py


def test_interrupted_build_leaves_nothing_behind(tmp_path):
    target = tmp_path / "models" / "m"

    def crash(out: Path) -> None:
        (out / "half-written.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build_atomically(target, crash)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == ["m.lock"]


def test_concurrent_builds_build_once(tmp_path):
    target, calls = tmp_path / "models" / "m", []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    threads = [threading.Thread(target=_build_atomically, args=(target, build)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert (target / "config.json").read_text() == "{}"


def test_teacher_with_another_tokenizer_is_refused(tiny_model_dir):
    student = load_tokenizer(tiny_model_dir)
    other = build_tiny_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="does not share the policy's tokenizer"):
        check_same_tokenizer(student, other, "teacher-dir")
    check_same_tokenizer(student, build_tiny_tokenizer(), "same")


def test_dtype_choice():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("auto") in (torch.bfloat16, torch.float32)


def test_lora_reference_is_the_base_model(tiny_model_dir):
    base = load_model(tiny_model_dir, torch.float32)
    tokens = torch.tensor([[5, 20, 21, 22]])
    base_logits = base(tokens).logits.detach()
    policy = apply_lora(base, LoRA(r=4, alpha=8))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # make the adapters matter
    assert not torch.allclose(policy(tokens).logits, base_logits)
    with policy.disable_adapter():
        assert torch.allclose(policy(tokens).logits, base_logits, atol=1e-6)
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == {
        n for n, _ in policy.named_parameters() if "lora_" in n
    }
