"""`VLLMEngine`: sampling with a colocated `vllm.LLM` on the trainer's GPU.

Written against vLLM 0.33 (the range `>=0.33,<0.34` of the `vllm` extra; vLLM's Python API changes
between releases). vLLM is CUDA-only and pins its own torch and transformers, so it lives in a GPU
environment of its own: `pip install -e '.[vllm]'` there. This module is imported only when the
engine is selected, and without vllm or without a GPU it stops at start-up saying what to do.

Weights: after every optimizer step the policy's weights are pushed into the engine's model in
place (`load_weights` on the worker, through `collective_rpc`). With LoRA the adapters alone are
pushed, as a new `LoRARequest` (vLLM applies them without merging). The engine's log-probs differ
slightly from the trainer's (other kernels, other numerics); methods recompute the log-probs they
optimise with the trainer, and reused rows use the engine's as a truncated importance weight's
denominator. Not exercised by CI (no GPU there): the conformance test runs it wherever a GPU is.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from lit_posttrain.rollout.engine import assemble_rollout, left_pad
from lit_posttrain.rollout.types import Rollout

INSTALL_HINT = (
    "VLLMEngine needs vllm and a CUDA GPU: in a GPU environment run pip install -e '.[vllm]' "
    "(vllm 0.33 pins torch 2.14.0 and transformers<5.21). On a CPU, use lit_posttrain.rollout.HFEngine."
)


def check_vllm_available() -> None:
    """Raise at start-up, with what to install or use instead, where vLLM cannot run."""
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"vllm is not installed ({err}). {INSTALL_HINT}") from None
    if not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA GPU is visible. {INSTALL_HINT}")


class VLLMEngine:
    """Colocated vLLM sampling (see the module docstring).

    Args:
        temperature: sampling temperature.
        top_p: nucleus sampling threshold (1.0: off).
        top_k: sample among the k likeliest tokens (0: off).
        max_new_tokens: longest completion, in tokens.
        gpu_memory_utilization: fraction of GPU memory vLLM may take (the trainer needs the rest).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 64,
        gpu_memory_utilization: float = 0.3,
    ) -> None:
        check_vllm_available()
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_new_tokens, self.gpu_memory_utilization = max_new_tokens, gpu_memory_utilization
        self.llm = None
        self._lora_request = None
        self._adapter_dir = tempfile.mkdtemp(prefix="lit_posttrain-vllm-lora-")
        self._syncs = 0

    def setup(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        from vllm import LLM

        # In-process engine core, so that weights can be pushed without crossing processes.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_token_id
        self.eos_ids = torch.tensor([tokenizer.eos_token_id])
        self.is_lora = hasattr(policy, "peft_config")
        base = policy.get_base_model() if self.is_lora else policy
        lora_kwargs = {}
        if self.is_lora:
            rank = next(iter(policy.peft_config.values())).r
            lora_kwargs = {"enable_lora": True, "max_lora_rank": max(8, rank), "max_loras": 1}
        self.llm = LLM(
            model=base.config._name_or_path,
            dtype=str(next(base.parameters()).dtype).removeprefix("torch."),
            gpu_memory_utilization=self.gpu_memory_utilization,
            enable_prefix_caching=True,  # a group's completions share their prompt
            logprobs_mode="processed_logprobs",  # log-probs of the sampling distribution, as HFEngine's
            **lora_kwargs,
        )
        self.sync_weights(policy)

    @torch.no_grad()
    def sync_weights(self, policy: torch.nn.Module) -> None:
        self._syncs += 1
        if self.is_lora:
            from vllm.lora.request import LoRARequest

            path = os.path.join(self._adapter_dir, f"step-{self._syncs}")
            policy.save_pretrained(path)
            self._lora_request = LoRARequest(f"policy-{self._syncs}", self._syncs, path)
            return
        weights = [(name, p.detach()) for name, p in policy.state_dict().items()]
        self.llm.collective_rpc(lambda worker: worker.model_runner.model.load_weights(weights))
        self.llm.reset_prefix_cache()  # cached prompts were computed with the old weights

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
        from vllm import SamplingParams, TokensPrompt

        temperature = 1.0 if greedy else (self.temperature if temperature is None else temperature)
        params = SamplingParams(
            n=n,
            temperature=0.0 if greedy else temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=0 if greedy or self.top_k == 0 else self.top_k,
            max_tokens=max_new_tokens or self.max_new_tokens,
            logprobs=0,  # the sampled token's log-prob only
            seed=seed if isinstance(seed, int) else None,
        )
        if not (seed is None or isinstance(seed, int)):
            # Per-prompt seeds: vLLM seeds per request, so each prompt gets its own parameters.
            params = [params.clone() for _ in prompt_ids]
            for request, request_seed in zip(params, seed, strict=True):
                request.seed = request_seed
        start = time.perf_counter()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, lora_request=self._lora_request, use_tqdm=False
        )
        completions = [c for out in outputs for c in out.outputs]
        width_new = max(len(c.token_ids) for c in completions)
        completion_BT = torch.full((len(completions), width_new), self.pad_id, dtype=torch.long)
        sampler_BT = torch.zeros((len(completions), width_new))
        for b, c in enumerate(completions):
            completion_BT[b, : len(c.token_ids)] = torch.tensor(c.token_ids)
            sampler_BT[b, : len(c.token_ids)] = torch.tensor([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs, strict=True)])
        prompt_PT, prompt_attention_PT = left_pad(prompt_ids, self.pad_id)
        rollout = assemble_rollout(
            prompt_PT, prompt_attention_PT, n, completion_BT, sampler_BT, self.eos_ids, self.tokenizer, temperature,
            time.perf_counter() - start,
        )  # fmt: skip
        return _to(rollout, torch.device("cuda", torch.cuda.current_device()))


def _to(rollout: Rollout, device: torch.device) -> Rollout:
    fields = (f.name for f in dataclasses.fields(rollout))
    moved = {name: getattr(rollout, name).to(device) for name in fields if isinstance(getattr(rollout, name), torch.Tensor)}
    return dataclasses.replace(rollout, **moved)
