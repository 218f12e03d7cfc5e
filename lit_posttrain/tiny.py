"""Tiny random models for tests and smoke runs: a 2-layer random Llama with a character-level
tokenizer, built locally in well under a second (`tiny-random-llama[:SEED]` as a model source)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

TINY_CHARS = list(" \n0123456789+-*/=.,:;?!'\"()abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ#$%&<>[]{}_\\|")
TINY_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '</s>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A character-level tokenizer with a chat template: every character is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + TINY_CHARS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(""), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=TINY_SPECIALS[4:],
        padding_side="left",  # set at construction: assigning it later is not saved
        chat_template=TINY_CHAT_TEMPLATE,
    )


def build_tiny_llama(out: Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> None:
    """Write a tiny random `LlamaForCausalLM` and its character-level tokenizer to `out`.

    A Llama config, not Qwen2: with `model_type: qwen2` AutoTokenizer builds a Qwen2Tokenizer
    that silently drops spaces and newlines from a character-level vocabulary.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# Model shapes with random weights, for measuring speed and memory at real sizes with nothing
# downloaded (`random:<shape>` as a model source): each published model's config, its vocabulary
# size kept (the output head's cost), the tiny character-level tokenizer in place of its own.
RANDOM_SHAPES = {
    "smollm2-135m": ("llama", {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                               "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152}),
    "smollm2-360m": ("llama", {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                               "num_attention_heads": 15, "num_key_value_heads": 5, "vocab_size": 49152}),
    "qwen2-0.5b": ("qwen2", {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                             "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936}),
    "qwen2-1.5b": ("qwen2", {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                             "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936}),
}  # fmt: skip
RANDOM_WEIGHTS_MARKER = "random_weights.json"  # in a folder: build the model from its config, seeded


def build_random_shape(out: Path, shape: str, seed: int = 0) -> None:
    """Write `shape`'s config (no weights: `models.load_model` initialises them from `seed`) and
    the tiny tokenizer to `out`."""
    import json

    from transformers import AutoConfig

    model_type, sizes = RANDOM_SHAPES[shape]
    tokenizer = build_tiny_tokenizer()
    config = AutoConfig.for_model(
        model_type, **sizes, tie_word_embeddings=True, max_position_embeddings=32768,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"shape": shape, "seed": seed}))
