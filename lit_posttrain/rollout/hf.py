"""`HFEngine`: sampling with transformers' `generate` in the trainer's process. Runs anywhere."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_posttrain.logprobs import prefill
from lit_posttrain.padding import left_pad
from lit_posttrain.rollout.engine import assemble_rollout, check_sampling_settings, eos_token_ids
from lit_posttrain.rollout.types import Rollout
from lit_posttrain.sharding import is_sharded
from lit_posttrain.weights import lora_layers, merged_weight


def _sample(probs_AV: Tensor, generator, prompt_A: Tensor) -> Tensor:
    """One token per row; with one generator per prompt, each prompt's rows draw from their own."""
    if not isinstance(generator, list):
        return torch.multinomial(probs_AV, 1, generator=generator).squeeze(-1)
    token_A = torch.empty(len(probs_AV), dtype=torch.long, device=probs_AV.device)
    for p in prompt_A.unique().tolist():
        rows = (prompt_A == p).nonzero().squeeze(-1)
        token_A[rows] = torch.multinomial(probs_AV[rows], 1, generator=generator[p]).squeeze(-1)
    return token_A


class HFEngine:
    """Batched sampling with a KV cache, left-padded prompts, stop at EOS.

    Each prompt is prefilled once and its cache shared by its `n` samples (with one-shot chat
    prompts of ~70 tokens and 8-token answers, prefill is most of the work); rows leave the batch
    at their EOS.

    With LoRA it samples from a plain copy of the model whose weights are the base weights plus the
    adapters' product, refreshed after every optimizer step (`sync_weights`): generating through the
    peft wrapper ran at about half the speed, and merging in place and back drifts bf16 base weights.
    The trainer recomputes the log-probs it optimises, so the copy's bf16 rounding does not bias
    the loss.

    A policy sharded with FSDP2 is sampled as it is, in lock-step: every process runs the same
    number of decoding steps, one whose rows have all stopped stepping on until every process's have.

    Args:
        temperature: sampling temperature.
        top_p: nucleus sampling threshold (1.0: off).
        top_k: sample among the k likeliest tokens (0: off).
        max_new_tokens: longest completion, in tokens; longer ones are cut and counted as truncated.
        merged_copy: with LoRA, sample from a merged copy of the weights (faster, costs one model's memory).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 64,
        merged_copy: bool = True,
    ) -> None:
        check_sampling_settings("HFEngine", temperature, top_p, max_new_tokens)
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_new_tokens, self.merged_copy = max_new_tokens, merged_copy
        self.model: torch.nn.Module | None = None
        self._copy_targets: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}
        self.sharded = False

    def setup(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.eos_ids = eos_token_ids(policy, tokenizer)
        # A policy sharded with FSDP2 holds DTensor weights. Its forward passes gather weights from
        # every rank, so it is sampled as it is (a merged copy would need the full weights) and
        # every rank runs the same number of decoding steps (`_any_rank`).
        self.sharded = is_sharded(policy)
        lora = lora_layers(policy)
        if not (lora and self.merged_copy) or self.sharded:
            self.model = policy
            return
        import copy

        base = policy.get_base_model()
        # A deep copy of the base model carries the injected LoRA layers; swap each for its plain
        # base layer so that the copy is an ordinary model.
        self.model = copy.deepcopy(base).requires_grad_(False).eval()
        prefix = "base_model.model."
        for name, layer in lora.items():
            inner = name.removeprefix(prefix)
            parent_name, _, child = inner.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            plain = getattr(parent, child).get_base_layer()
            setattr(parent, child, plain)
            self._copy_targets[name] = (layer, plain)
        self.sync_weights(policy)

    def samples_from_copy(self, policy: torch.nn.Module) -> bool:
        """Whether it samples from weights of its own (the merged LoRA copy) that optimizer steps
        do not touch: what drawing samples beside training needs (`RolloutSource.max_staleness`)."""
        return bool(lora_layers(policy)) and self.merged_copy and not is_sharded(policy)

    @torch.no_grad()
    def sync_weights(self, policy: torch.nn.Module) -> None:
        for layer, plain in self._copy_targets.values():
            plain.weight.copy_(merged_weight(layer))

    def close(self) -> None:
        """Drop the merged sampling copy (the next `setup` makes a new one)."""
        self.model, self._copy_targets = None, {}

    @contextlib.contextmanager
    def _eval_mode(self):
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int = 1,
        *,
        temperature: float | None = None,
        greedy: bool = False,
        max_new_tokens: int | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> Rollout:
        if self.model is None:
            raise RuntimeError("HFEngine.generate called before setup(policy, tokenizer)")
        temperature = 1.0 if greedy else (self.temperature if temperature is None else temperature)
        max_new_tokens = max_new_tokens or self.max_new_tokens
        device = next(self.model.parameters()).device
        prompt_PT, prompt_attention_PT = (t.to(device) for t in left_pad(prompt_ids, self.pad_id))
        # An int seeds one generator for the call; a sequence seeds one per prompt, so that a
        # prompt's samples do not depend on which other prompts share the batch (or the rank).
        if seed is None or isinstance(seed, int):
            generator = None if seed is None else torch.Generator(device).manual_seed(seed)
        else:
            generator = [torch.Generator(device).manual_seed(s) for s in seed]
        start = time.perf_counter()
        with self._eval_mode():
            completion_BT, logp_BT = self._decode(
                prompt_PT, prompt_attention_PT, n, max_new_tokens, temperature, greedy, generator
            )
        return assemble_rollout(
            prompt_PT, prompt_attention_PT, n, completion_BT, logp_BT, self.eos_ids, self.tokenizer, temperature,
            time.perf_counter() - start,
        )  # fmt: skip

    def _decode(self, prompt_PT, attention_PT, n, max_new_tokens, temperature, greedy, generator):
        """Prefill each prompt once, share its KV cache among its `n` samples, then decode token by
        token; rows that reached EOS leave the batch. Returns completion tokens (pad after EOS) and
        the sampler's log-probs, each `(P * n, max_new_tokens)` or shorter if all rows stopped."""
        model, B = self.model, prompt_PT.shape[0] * n
        logits_PV, cache, position_PT = prefill(model, prompt_PT, attention_PT)
        cache.batch_repeat_interleave(n)
        logits_AV = logits_PV.repeat_interleave(n, 0)  # A: rows still decoding
        attention_AT = attention_PT.repeat_interleave(n, 0)
        position_A1 = position_PT[:, -1:].repeat_interleave(n, 0) + 1
        alive_A = torch.arange(B, device=prompt_PT.device)
        tokens_BT = torch.full((B, max_new_tokens), self.pad_id, dtype=torch.long, device=prompt_PT.device)
        logp_BT = torch.zeros((B, max_new_tokens), device=prompt_PT.device)
        eos_ids = self.eos_ids.to(prompt_PT.device)
        finished = False  # lock-step only: this rank's rows have all stopped, it steps for the others
        for t in range(max_new_tokens):
            scores_AV = self._warp(logits_AV.float(), temperature, greedy)
            logp_AV = torch.log_softmax(scores_AV, -1)
            token_A = scores_AV.argmax(-1) if greedy else _sample(logp_AV.exp(), generator, alive_A // n)
            if not finished:
                tokens_BT[alive_A, t] = token_A
                logp_BT[alive_A, t] = logp_AV.gather(-1, token_A[:, None]).squeeze(-1)
            going_A = ~torch.isin(token_A, eos_ids) & (not finished)
            if t == max_new_tokens - 1 or not self._any_rank(going_A.any()):
                return tokens_BT[:, : t + 1], logp_BT[:, : t + 1]
            if not going_A.any():
                # Other ranks still decode: keep the finished rows (their outputs are not recorded)
                # so that this rank joins every forward pass.
                finished = True
            elif not going_A.all():
                keep = going_A.nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                alive_A, token_A = alive_A[keep], token_A[keep]
                attention_AT, position_A1 = attention_AT[keep], position_A1[keep]
            attention_AT = torch.cat([attention_AT, torch.ones_like(attention_AT[:, :1])], 1)
            out = model(
                input_ids=token_A[:, None], attention_mask=attention_AT, position_ids=position_A1,
                past_key_values=cache, use_cache=True,
            )  # fmt: skip
            logits_AV, position_A1 = out.logits[:, -1], position_A1 + 1
        raise AssertionError("unreachable: the loop returns at its last step")

    def _any_rank(self, flag: Tensor) -> bool:
        """`flag` on any rank (this rank's own value unless the policy is sharded)."""
        if not self.sharded:
            return bool(flag)
        flag = flag.to(torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag)

    def _warp(self, logits_AV, temperature: float, greedy: bool):
        """The sampling distribution's logits: temperature, then top-k, then top-p."""
        if greedy:
            return logits_AV
        scores_AV = logits_AV / temperature
        if self.top_k > 0 and self.top_k < scores_AV.shape[-1]:
            kth_A1 = scores_AV.topk(self.top_k, -1).values[:, -1:]
            scores_AV = scores_AV.masked_fill(scores_AV < kth_A1, -float("inf"))
        if self.top_p < 1.0:
            sorted_AV, order_AV = scores_AV.sort(-1, descending=True)
            cumulative_AV = sorted_AV.softmax(-1).cumsum(-1)
            # Drop a token when the tokens before it already reach top_p; the first always stays.
            drop_sorted_AV = (cumulative_AV - sorted_AV.softmax(-1)) >= self.top_p
            drop_AV = drop_sorted_AV.scatter(-1, order_AV, drop_sorted_AV)
            scores_AV = scores_AV.masked_fill(drop_AV, -float("inf"))
        return scores_AV
