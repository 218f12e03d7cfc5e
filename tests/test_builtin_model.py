"""The built-in pretrained model: loads offline from its registry package and answers."""

import pytest
import torch

from lit_posttrain.models import load_model, load_tokenizer, resolve_model_source
from lit_posttrain.precision import resolve_dtype

pytestmark = pytest.mark.slow


def test_builtin_model_loads_and_answers():
    folder = resolve_model_source("builtin:smollm2-135m-instruct")
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, resolve_dtype("auto"))
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    messages = [{"role": "user", "content": "What is 7 + 5? Reply with only the number."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    print(repr(reply))
    assert "12" in reply
