"""`HFEngine`: sampling with transformers' `generate` in the trainer's process. Runs anywhere."""

from __future__ import annotations

import contextlib
import time

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lit_posttrain.rollout.engine import completion_mask, left_pad
from lit_posttrain.rollout.types import Rollout


def _lora_layers(policy: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in policy.named_modules() if isinstance(m, LoraLayer)}


class HFEngine:
    """Batched sampling with a KV cache, left-padded prompts, stop at EOS.

    With LoRA it samples from a plain copy of the model whose weights are the base weights plus the
    adapters' product, refreshed after every optimizer step (`sync_weights`): generating through the
    peft wrapper ran at about half the speed, and merging in place and back drifts bf16 base weights.
    The trainer recomputes the log-probs it optimises, so the copy's bf16 rounding does not bias
    the loss.

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
        if temperature <= 0:
            raise ValueError(f"HFEngine temperature must be > 0 (use greedy=True for argmax), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"HFEngine top_p must be in (0, 1], got {top_p}")
        if max_new_tokens < 1:
            raise ValueError(f"HFEngine max_new_tokens must be at least 1, got {max_new_tokens}")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_new_tokens, self.merged_copy = max_new_tokens, merged_copy
        self.model: torch.nn.Module | None = None
        self._copy_targets: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}

    def setup(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        eos = policy.generation_config.eos_token_id if hasattr(policy, "generation_config") else None
        eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])}
        self.eos_ids = torch.tensor(sorted(eos_ids), dtype=torch.long)
        lora = _lora_layers(policy)
        if not (lora and self.merged_copy):
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

    @torch.no_grad()
    def sync_weights(self, policy: torch.nn.Module) -> None:
        for layer, plain in self._copy_targets.values():
            base = layer.get_base_layer().weight
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
            plain.weight.copy_(base + delta.to(base.dtype))

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
        seed: int | None = None,
    ) -> Rollout:
        if self.model is None:
            raise RuntimeError("HFEngine.generate called before setup(policy, tokenizer)")
        temperature = self.temperature if temperature is None else temperature
        max_new_tokens = max_new_tokens or self.max_new_tokens
        device = next(self.model.parameters()).device
        prompt_BT, prompt_attention_BT = left_pad(prompt_ids, self.pad_id)
        prompt_BT = prompt_BT.repeat_interleave(n, 0).to(device)
        prompt_attention_BT = prompt_attention_BT.repeat_interleave(n, 0).to(device)
        config = GenerationConfig(
            do_sample=not greedy,
            temperature=1.0 if greedy else temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=0 if greedy else self.top_k,  # 0, not None: None falls back to transformers' default of 50
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_ids.tolist(),
            pad_token_id=self.pad_id,
            use_cache=True,
            output_scores=True,
            return_dict_in_generate=True,
        )
        start = time.perf_counter()
        rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else []) if seed is not None else contextlib.nullcontext()
        with rng, self._eval_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(input_ids=prompt_BT, attention_mask=prompt_attention_BT, generation_config=config)
        width = prompt_BT.shape[1]
        completion_BT = out.sequences[:, width:]
        mask_BT, truncated_B = completion_mask(completion_BT, self.eos_ids.to(device))
        # scores are the processed logits each token was sampled from: temperature, top-k and
        # top-p already applied, so their log-softmax is the sampler's log-prob.
        logp_BT = torch.stack(
            [torch.log_softmax(s.float(), -1).gather(-1, completion_BT[:, t, None]).squeeze(-1) for t, s in enumerate(out.scores)],
            dim=1,
        )
        logp_BT = torch.where(mask_BT, logp_BT, 0.0)
        completion_BT = torch.where(mask_BT, completion_BT, self.pad_id)
        texts = self.tokenizer.batch_decode(
            [row[m].tolist() for row, m in zip(completion_BT, mask_BT, strict=True)], skip_special_tokens=True
        )
        zeros = torch.zeros_like(prompt_BT, dtype=torch.float32)
        return Rollout(
            tokens_BT=torch.cat([prompt_BT, completion_BT], 1),
            attention_BT=torch.cat([prompt_attention_BT, mask_BT.long()], 1),
            mask_BT=torch.cat([torch.zeros_like(prompt_BT, dtype=torch.bool), mask_BT], 1),
            logp_BT=torch.cat([zeros, logp_BT], 1),
            group_B=torch.arange(len(prompt_ids), device=device).repeat_interleave(n),
            truncated_B=truncated_B,
            prompt_width=width,
            completions=texts,
            temperature=1.0 if greedy else temperature,
            age_B=torch.zeros(len(prompt_ids) * n, dtype=torch.long, device=device),
            timing={"generate_s": time.perf_counter() - start},
        )

