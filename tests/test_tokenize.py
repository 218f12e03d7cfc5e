"""Tokenization through `datasets` (data/tokenize.py): the same ids as the tokenizer's own chat
template path, in batches, cached on disk for the next run, and done by the first process of a
machine while the others wait and then read its cache."""

import sys
from types import SimpleNamespace
from unittest import mock

import pytest
from transformers import AutoTokenizer

from lit_posttrain.data import datamodule as datamodule_module
from lit_posttrain.data import tokenize as tokenize_module
from lit_posttrain.data.arithmetic import Arithmetic
from lit_posttrain.data.datamodule import TaskDataModule, tokenize_prompt
from lit_posttrain.data.task import Example
from lit_posttrain.data.tokenize import render_prompts, tokenize_texts
from lit_posttrain.models import resolve_model_source

EXAMPLES = [
    Example([{"role": "user", "content": "What is 2 + 3?"}], answer="5", demonstration="5"),
    Example([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], demonstration="Blue, or red."),
    Example([{"role": "user", "content": "Ünïcödé and\nnew lines"}]),  # no demonstration
]


@pytest.fixture(scope="module", params=["builtin:smollm2-135m-instruct", "tiny-random-llama"])
def tokenizer(request):
    return AutoTokenizer.from_pretrained(resolve_model_source(request.param))


@pytest.mark.parametrize("chat_template", [True, False])
def test_batched_ids_are_the_tokenizers_own(tokenizer, chat_template, tmp_path):
    prompts = render_prompts(tokenizer, EXAMPLES, chat_template)
    prompt_ids, completion_ids = tokenize_texts(tokenizer, prompts, [e.demonstration for e in EXAMPLES], chat_template is False, tmp_path)
    for example, ids, completion in zip(EXAMPLES, prompt_ids, completion_ids, strict=True):
        if chat_template:
            encoded = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=True)
            expected = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        else:
            expected = tokenizer("\n\n".join(m["content"] for m in example.messages))["input_ids"]
        assert ids == expected == tokenize_prompt(tokenizer, example, chat_template)
        if example.demonstration is None:
            assert completion is None
        else:
            assert completion == [*tokenizer(example.demonstration, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def test_a_second_run_reads_the_cache_without_tokenizing(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("tiny-random-llama"))
    prompts, demonstrations = render_prompts(tokenizer, EXAMPLES), [e.demonstration for e in EXAMPLES]
    first = tokenize_texts(tokenizer, prompts, demonstrations, False, tmp_path)
    assert len(list(tmp_path.glob("*.arrow"))) == 1
    with mock.patch.object(type(tokenizer), "__call__", side_effect=AssertionError("tokenized again")):
        assert tokenize_texts(tokenizer, prompts, demonstrations, False, tmp_path) == first
    # Other texts: another fingerprint, another file.
    tokenize_texts(tokenizer, prompts[:2], demonstrations[:2], False, tmp_path)
    assert len(list(tmp_path.glob("*.arrow"))) == 2


@pytest.mark.parametrize("local_rank", [0, 1])
def test_the_first_process_of_a_machine_tokenizes_while_the_others_wait(local_rank, monkeypatch, tmp_path):
    """Under DDP or FSDP, local rank 0 tokenizes (writing the cache), then passes the barrier the
    others wait at; they tokenize after it, reading that cache."""
    monkeypatch.setenv("LIT_POSTTRAIN_CACHE", str(tmp_path))
    events = []
    real = datamodule_module.tokenize_texts

    def spy(*args, **kwargs):
        events.append("tokenize")
        return real(*args, **kwargs)

    monkeypatch.setattr(datamodule_module, "tokenize_texts", spy)
    data = TaskDataModule(task=Arithmetic(num_train=8, num_eval=4), batch_size=2)
    data.tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("tiny-random-llama"))
    strategy = SimpleNamespace(barrier=lambda name=None: events.append("barrier"))
    data.trainer = SimpleNamespace(world_size=2, local_rank=local_rank, strategy=strategy, loggers=[])
    data.setup("fit")
    assert events == (["tokenize", "tokenize", "barrier"] if local_rank == 0 else ["barrier", "tokenize", "tokenize"])
    assert len(data.train_rows) == 8 and len(list((tmp_path / "tokenized").glob("*.arrow"))) == 2


def test_without_datasets_the_ids_are_the_same_and_nothing_is_cached(monkeypatch, tmp_path):
    """A GPU image with only torch, lightning, transformers and peft (scripts/gpu_check.sh) has no
    `datasets`: the tokenizer takes the same batches itself, over more than one batch here."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("tiny-random-llama"))
    examples = EXAMPLES * 5
    prompts, demonstrations = render_prompts(tokenizer, examples), [e.demonstration for e in examples]
    expected = tokenize_texts(tokenizer, prompts, demonstrations, False, tmp_path / "with")
    monkeypatch.setattr(tokenize_module, "BATCH", 4)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    assert tokenize_texts(tokenizer, prompts, demonstrations, False, tmp_path / "without") == expected
    assert not (tmp_path / "without").exists()
