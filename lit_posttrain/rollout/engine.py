"""The rollout-engine protocol and the helpers every engine shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_posttrain.padding import left_pad
from lit_posttrain.rollout.types import Rollout


class EngineUnavailable(RuntimeError):
    """The engine cannot sample or take weights (a server that stopped answering): the run stops
    there, and `CheckpointOnSigterm` saves a checkpoint to resume from once it is back."""


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples completions from the current policy.

    `setup` is called once the policy exists, `sync_weights` after every optimizer step (an
    engine that samples from a copy of the weights refreshes it there), `generate` samples `n`
    completions for each prompt (rows of one prompt are contiguous; `group_B` numbers them),
    `close` when training is over (it frees what the engine holds; `setup` may follow again).
    Under FSDP2 the policy's parameters are DTensor shards and every rank calls `setup` and
    `sync_weights` together: an engine samples from the sharded policy in lock-step (HFEngine) or
    gathers the full weights there (VLLMEngine).
    `seed`: an int seeds the call; one int per prompt makes each prompt's samples independent of
    the rest of the batch, which keeps data-parallel runs and resumed runs identical to one
    uninterrupted process.
    Drawing samples ahead of training (`RolloutSource.max_staleness`) calls `generate` from a worker
    thread while the trainer trains, never at the same time as `sync_weights`; an engine that
    samples the trained weights themselves says so with `samples_from_copy(policy) -> False`
    (HFEngine without its merged LoRA copy) and is refused for it.
    An engine that computes with a model of its own may declare a `compute_dtype` attribute: the
    run sets it before `setup` to its mixed-precision compute dtype (bf16 under bf16-mixed, where a
    fully fine-tuned policy's weights are float32 masters), None otherwise (VLLMEngine does).
    """

    max_new_tokens: int
    temperature: float

    def setup(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None: ...

    def sync_weights(self, policy: torch.nn.Module) -> None: ...

    def close(self) -> None: ...

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int = 1,
        *,
        temperature: float | None = None,
        greedy: bool = False,
        max_new_tokens: int | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> Rollout: ...


def check_sampling_settings(engine: str, temperature: float, top_p: float, max_new_tokens: int) -> None:
    """Refuse, at construction, sampling settings no engine can honour."""
    if temperature <= 0:
        raise ValueError(f"{engine} temperature must be > 0 (use greedy=True for argmax), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"{engine} top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        raise ValueError(f"{engine} max_new_tokens must be at least 1, got {max_new_tokens}")


def check_prompt_lengths(engine: str, prompt_ids: list[list[int]], max_new_tokens: int, max_model_len: int, fix: str) -> None:
    """Refuse, before sampling, a prompt whose completion could run past the engine's `max_model_len`."""
    for i, prompt in enumerate(prompt_ids):
        if len(prompt) + max_new_tokens > max_model_len:
            raise ValueError(
                f"{engine}: prompt {i} has {len(prompt)} tokens; with max_new_tokens {max_new_tokens} it exceeds "
                f"max_model_len {max_model_len}: {fix} or shorten the prompt"
            )


def eos_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Tensor:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation config's
    (chat models often stop on an end-of-turn token as well)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
    return torch.tensor(sorted(ids), dtype=torch.long)


def completion_mask(completion_BT: Tensor, eos_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Mask of completion tokens up to and including the first EOS, and which rows never stopped.

    Built from EOS, never from `!= pad_id`: many tokenizers pad with their EOS token.
    """
    is_eos_BT = torch.isin(completion_BT, eos_ids)
    eos_before_BT = is_eos_BT.long().cumsum(-1) - is_eos_BT.long()  # EOS strictly before each position
    return eos_before_BT == 0, ~is_eos_BT.any(-1)


def assemble_rollout(
    prompt_PT: Tensor,
    prompt_attention_PT: Tensor,
    n: int,
    completion_BT: Tensor,
    sampler_logp_BT: Tensor,
    eos_ids: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    temperature: float,
    generate_s: float,
) -> Rollout:
    """A `Rollout` from left-padded prompts (one row each) and the `n` sampled completions per
    prompt (rows of one prompt contiguous), cut after their first EOS. All on one device."""
    device = completion_BT.device
    pad_id = tokenizer.pad_token_id
    prompt_BT = prompt_PT.repeat_interleave(n, 0)
    prompt_attention_BT = prompt_attention_PT.repeat_interleave(n, 0)
    mask_BT, truncated_B = completion_mask(completion_BT, eos_ids.to(device))
    completion_BT = torch.where(mask_BT, completion_BT, pad_id)
    texts = tokenizer.batch_decode([row[m].tolist() for row, m in zip(completion_BT, mask_BT, strict=True)], skip_special_tokens=True)
    return Rollout(
        tokens_BT=torch.cat([prompt_BT, completion_BT], 1),
        attention_BT=torch.cat([prompt_attention_BT, mask_BT.long()], 1),
        mask_BT=torch.cat([torch.zeros_like(prompt_BT, dtype=torch.bool), mask_BT], 1),
        logp_BT=torch.cat([torch.zeros_like(prompt_BT, dtype=torch.float32), torch.where(mask_BT, sampler_logp_BT.float(), 0.0)], 1),
        group_B=torch.arange(prompt_PT.shape[0], device=device).repeat_interleave(n),
        truncated_B=truncated_B,
        prompt_width=prompt_BT.shape[1],
        completions=texts,
        temperature=temperature,
        age_B=torch.zeros(prompt_BT.shape[0], dtype=torch.long, device=device),
        timing={"generate_s": generate_s},
    )


def rollout_from_samples(
    prompt_ids: list[list[int]],
    n: int,
    samples: list[tuple[list[int], list[float]]],
    pad_id: int,
    eos_ids: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    temperature: float,
    generate_s: float,
) -> Rollout:
    """A `Rollout` from an engine's token lists: for each prompt its `n` samples in order, each the
    sampled token ids and their log-probs under the sampling distribution (a vLLM output, in
    process or from a server)."""
    width_new = max(1, max(len(tokens) for tokens, _ in samples))
    completion_BT = torch.full((len(samples), width_new), pad_id, dtype=torch.long)
    sampler_BT = torch.zeros((len(samples), width_new))
    for b, (tokens, logprobs) in enumerate(samples):
        if len(tokens) != len(logprobs):
            raise ValueError(f"sample {b} has {len(tokens)} tokens and {len(logprobs)} log-probs")
        completion_BT[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        sampler_BT[b, : len(tokens)] = torch.tensor(logprobs, dtype=torch.float32)
    prompt_PT, prompt_attention_PT = left_pad(prompt_ids, pad_id)
    return assemble_rollout(prompt_PT, prompt_attention_PT, n, completion_BT, sampler_BT, eos_ids, tokenizer, temperature, generate_s)
