"""Examples to token ids with `datasets`, as TRL and verl tokenize: every prompt rendered through
the chat template, then the prompts and demonstrations tokenized in batches by the fast tokenizer
(`Dataset.map(batched=True)`), the result cached on disk under a fingerprint of everything that
decides the tokens, so that a second run (or a second process of this one) reads it instead.
Where `datasets` is not installed (a GPU image that has only torch, lightning, transformers and
peft), the same batches go through the tokenizer directly, with the same ids and no cache."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from lit_posttrain.data.task import Example

PROGRESS_FROM = 20_000  # rows from which tokenizing shows a progress bar
BATCH = 1000  # texts a tokenizer call takes


def render_prompts(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], chat_template: bool | str = True, template_kwargs: dict | None = None
) -> list[str]:
    """Each example's prompt as text: through the tokenizer's chat template (with the arguments it
    reads), or its turns joined by blank lines when `chat_template` is False."""
    if chat_template is False:
        return ["\n\n".join(m["content"] for m in example.messages) for example in examples]
    return [
        tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False, **(template_kwargs or {}))
        for example in examples
    ]


def fingerprint(tokenizer: PreTrainedTokenizerBase, prompts: list[str], demonstrations: list[str | None], plain: bool) -> str:
    """A digest of what decides the token ids: the tokenizer (its vocabulary, special tokens and
    settings), whether prompts get the tokenizer's own special tokens, and every text."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's whole definition
    digest.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([type(tokenizer).__name__, tokenizer.eos_token_id, plain, prompts, demonstrations]).encode())
    return digest.hexdigest()[:24]


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], demonstrations: list[str | None], plain: bool, cache_dir: Path | None
) -> tuple[list[list[int]], list[list[int] | None]]:
    """The prompts' and demonstrations' token ids (a demonstration's followed by EOS; None where an
    example has none), tokenized by `Dataset.map` in batches (by the tokenizer itself where
    `datasets` is not installed); cached in `cache_dir` (None: not cached). A rendered chat prompt
    carries its special tokens already; a plain one takes the tokenizer's (`plain`), as
    `tokenizer(text)` would add them."""

    def encode(batch: dict) -> dict:
        return {
            "prompt_ids": tokenizer(batch["prompt"], add_special_tokens=plain)["input_ids"],
            "completion_ids": tokenizer([d or "" for d in batch["demonstration"]], add_special_tokens=False)["input_ids"],
        }

    if not prompts:  # an empty split: no table to map
        return [], []
    try:
        from datasets import Dataset
        from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled
    except ImportError:  # the same batches through the tokenizer, without the cache and the bar
        batches = [
            encode({"prompt": prompts[start : start + BATCH], "demonstration": demonstrations[start : start + BATCH]})
            for start in range(0, len(prompts), BATCH)
        ]
        prompt_ids = [ids for batch in batches for ids in batch["prompt_ids"]]
        completion_ids = [ids for batch in batches for ids in batch["completion_ids"]]
        return prompt_ids, with_eos(tokenizer, demonstrations, completion_ids)
    table = Dataset.from_dict({"prompt": prompts, "demonstration": demonstrations})
    # Ours, not one datasets would compute by pickling the tokenizer inside `encode` (slower).
    digest = fingerprint(tokenizer, prompts, demonstrations, plain)
    cache_file = None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache_file = str(cache_dir / f"{digest}.arrow")
    shown = is_progress_bar_enabled()
    if len(prompts) < PROGRESS_FROM:  # a bar for a second's work is noise in the run's first lines
        disable_progress_bar()
    try:
        tokenized = table.map(
            encode, batched=True, batch_size=BATCH, cache_file_name=cache_file, load_from_cache_file=True,
            remove_columns=["prompt", "demonstration"], new_fingerprint=digest, desc="tokenizing",
        ).to_dict()  # fmt: skip
    finally:
        if shown:
            enable_progress_bar()
    return tokenized["prompt_ids"], with_eos(tokenizer, demonstrations, tokenized["completion_ids"])


def with_eos(
    tokenizer: PreTrainedTokenizerBase, demonstrations: list[str | None], completion_ids: list[list[int]]
) -> list[list[int] | None]:
    """Each demonstration's ids followed by EOS; None where the example has no demonstration."""
    return [
        None if demonstration is None else [*ids, tokenizer.eos_token_id]
        for demonstration, ids in zip(demonstrations, completion_ids, strict=True)
    ]
