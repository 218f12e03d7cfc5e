"""`VLLMServerEngine`: sampling from a vLLM server in another process (`python -m lit_posttrain.serve`),
on other GPUs or other cores than the trainer's, as TRL's `vllm_mode="server"` does.

Sampling goes through the server's OpenAI-compatible completions route, one request per prompt (so
each prompt's seed is its own, as in-process engines seed them), all in flight at once so that
the server batches them. Prompts travel as token ids and samples come back as token ids with
their log-probs under the sampling distribution (`--logprobs-mode processed_logprobs`), the same
`Rollout` the in-process `VLLMEngine` makes.

Weights: after every optimizer step the trainer writes the policy's full weights (merged, under
LoRA; gathered, under FSDP2) as one safetensors file to a folder the server can read (by default
in `/dev/shm`, memory on this machine), and has the server load them in place through its
development route `/collective_rpc` (`reload_weights`; started with `VLLM_SERVER_DEV_MODE=1`,
which `lit_posttrain.serve` sets); then the server's prefix cache is reset. vLLM's NCCL
weight-transfer engine is for GPUs; on a CPU a file is what its server can take. The file is
written whole before the server is told of it: a write that fails leaves the server on the
previous weights. A load that fails on the server leaves its weights unknown; the run stops there
(`EngineUnavailable`) and a resumed run pushes the full weights before it samples again.

A server that stops answering stops the run with `EngineUnavailable`, which names the server
(`CheckpointOnSigterm` saves a checkpoint to resume from); one that answers slowly is reported on
the console every `slow_after_s` seconds until it answers or `timeout_s` passes.

Under DDP or FSDP every process samples its own prompts from the one server and process 0 pushes
the weights (every process gathers them under FSDP2: a collective).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from lit_posttrain.rollout import vllm_checks as checks
from lit_posttrain.rollout.engine import (
    EngineUnavailable,
    check_prompt_lengths,
    check_sampling_settings,
    eos_token_ids,
    rollout_from_samples,
)
from lit_posttrain.rollout.types import Rollout
from lit_posttrain.sharding import is_sharded
from lit_posttrain.weights import full_weights

log = logging.getLogger(__name__)

START_HINT = "start one with `python -m lit_posttrain.serve MODEL --port PORT` (README, 'A vLLM server')"


class ServerRefused(RuntimeError):
    """The server answered with an HTTP error: it is up, and refused the request."""

    def __init__(self, path: str, status: int, detail: str) -> None:
        super().__init__(f"{path} answered HTTP {status}: {detail}")
        self.path, self.status, self.detail = path, status, detail


class VLLMServerEngine:
    """Samples from a vLLM server in another process (see the module docstring).

    Args:
        url: the server's address.
        temperature: sampling temperature.
        top_p: nucleus sampling threshold (1.0: off).
        top_k: sample among the k likeliest tokens (0: off).
        max_new_tokens: longest completion, in tokens; longer ones are cut and counted as truncated.
        weights_dir: folder, readable by the server, for the weights pushed after each step (null: /dev/shm where it has room, else the system's temporary folder).
        timeout_s: how long a request may go unanswered before the run stops.
        slow_after_s: how long requests may go unanswered before the console says so (and again each such interval).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 64,
        weights_dir: str | None = None,
        timeout_s: float = 600.0,
        slow_after_s: float = 60.0,
    ) -> None:
        check_sampling_settings("VLLMServerEngine", temperature, top_p, max_new_tokens)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"VLLMServerEngine url must start with http:// or https://, got {url!r}")
        if timeout_s <= 0 or slow_after_s <= 0:
            raise ValueError(f"VLLMServerEngine timeout_s and slow_after_s must be > 0, got {timeout_s} and {slow_after_s}")
        self.url = url.rstrip("/")
        self.temperature, self.top_p, self.top_k, self.max_new_tokens = temperature, top_p, top_k, max_new_tokens
        self.weights_dir, self.timeout_s, self.slow_after_s = weights_dir, timeout_s, slow_after_s
        self.syncs = 0  # weight pushes so far
        self.model_name: str | None = None
        self._push_root: Path | None = None

    # --- start-up -----------------------------------------------------------------------------

    def setup(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Find the server and what it serves, check it can serve this policy, and push the
        policy's weights (it may differ from the served folder: a resumed run, an adapter)."""
        self.tokenizer, self.pad_id = tokenizer, tokenizer.pad_token_id
        base = policy.get_base_model() if hasattr(policy, "peft_config") else policy
        self.eos_ids = eos_token_ids(base, tokenizer)
        self.device = next(policy.parameters()).device
        models = self._call("GET", "/v1/models").get("data", [])
        if not models:
            raise EngineUnavailable(f"VLLMServerEngine: the server at {self.url} serves no model")
        served = models[0]
        self.model_name, self.max_model_len = served["id"], int(served["max_model_len"])
        if self.max_new_tokens >= self.max_model_len:
            raise ValueError(
                f"VLLMServerEngine max_new_tokens {self.max_new_tokens} leaves no room for a prompt in the server's "
                f"max_model_len {self.max_model_len}: start the server with a larger --max-model-len"
            )
        checks.check_same_shape(served.get("root", ""), base.config, self.url)
        self._push_root = Path(tempfile.mkdtemp(prefix="lit_posttrain-push-", dir=self.weights_dir or _default_push_dir(base)))
        self.sync_weights(policy)

    # --- weights ------------------------------------------------------------------------------

    @torch.no_grad()
    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Make the server sample from `policy`'s current weights. Under DDP or FSDP every process
        calls it together; process 0 pushes and tells the others whether the push went through."""
        self.syncs += 1
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        pushes = not distributed or torch.distributed.get_rank() == 0
        # Under FSDP2 gathering is a collective every process joins; under DDP the others would
        # only merge LoRA weights they never send.
        weights = full_weights(policy) if pushes or is_sharded(policy) else None
        error = None
        if pushes:
            try:
                self._push(weights)
            except (EngineUnavailable, ServerRefused, OSError) as err:
                error = err
        if distributed:
            # Process 0's outcome, so that no process samples from weights the server may not hold.
            failed = torch.tensor([error is not None], dtype=torch.uint8, device=_collective_device())
            torch.distributed.broadcast(failed, src=0)
            if failed.item() and error is None:
                raise EngineUnavailable(f"VLLMServerEngine: process 0's weight push to {self.url} failed (its log says why)")
        if error is not None:
            raise EngineUnavailable(
                f"VLLMServerEngine: pushing step {self.syncs - 1}'s weights to the server at {self.url} failed: {error}. "
                "The run stops; resume it from its checkpoint once the server answers (the full weights are pushed again first)"
            ) from error

    def _push(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        folder = self._push_root / f"push-{self.syncs}"
        folder.mkdir()
        try:
            # Whole before the server hears of it. Tied weights (embeddings and output head) share
            # storage, which safetensors refuses: each name gets its own copy, because vLLM's
            # in-place reload updates a tied head only from its own name.
            seen, tensors = set(), {}
            for name, tensor in weights:
                tensor = tensor.detach().contiguous().cpu()
                tensors[name] = tensor.clone() if tensor.data_ptr() in seen else tensor
                seen.add(tensor.data_ptr())
            save_file(tensors, folder / "model.safetensors")
            try:
                self._call("POST", "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
            except ServerRefused as err:
                if err.status == 404:
                    raise ServerRefused(
                        err.path, err.status,
                        "the server has no /collective_rpc route: start it with VLLM_SERVER_DEV_MODE=1 "
                        "(`python -m lit_posttrain.serve` does)",
                    ) from err  # fmt: skip
                raise
            self._call("POST", "/reset_prefix_cache")  # cached prompts were computed with the old weights
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # loaded into the server's own tensors

    def close(self) -> None:
        """Remove the push folder; the server keeps running (it is the user's)."""
        if self._push_root is not None:
            shutil.rmtree(self._push_root, ignore_errors=True)
            self._push_root = None

    # --- sampling -----------------------------------------------------------------------------

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
        if self.model_name is None:
            raise RuntimeError("VLLMServerEngine.generate called before setup(policy, tokenizer)")
        temperature = 1.0 if greedy else (self.temperature if temperature is None else temperature)
        max_new_tokens = max_new_tokens or self.max_new_tokens
        check_prompt_lengths("VLLMServerEngine", prompt_ids, max_new_tokens, self.max_model_len, "start the server with a larger --max-model-len")
        seeds = [seed] * len(prompt_ids) if seed is None or isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != len(prompt_ids):
            raise ValueError(f"VLLMServerEngine: {len(seeds)} seeds for {len(prompt_ids)} prompts")
        bodies = [
            {
                "model": self.model_name,
                "prompt": list(prompt),
                "n": n,
                "temperature": 0.0 if greedy else temperature,
                "top_p": 1.0 if greedy else self.top_p,
                "top_k": 0 if greedy else self.top_k,
                "max_tokens": max_new_tokens,
                "stop_token_ids": self.eos_ids.tolist(),
                "logprobs": 0,  # the sampled token's log-prob only
                "return_token_ids": True,
                **({"seed": s} if s is not None else {}),
            }
            for prompt, s in zip(prompt_ids, seeds, strict=True)
        ]
        start = time.perf_counter()
        answers = self._completions(bodies)
        samples = []
        for answer in answers:
            for choice in sorted(answer["choices"], key=lambda c: c["index"]):
                samples.append((choice["token_ids"], choice["logprobs"]["token_logprobs"]))
        rollout = rollout_from_samples(
            prompt_ids, n, samples, self.pad_id, self.eos_ids, self.tokenizer, temperature, time.perf_counter() - start
        )
        return rollout.to(self.device)

    def _completions(self, bodies: list[dict]) -> list[dict]:
        """Every request in flight at once; the console hears of requests unanswered for
        `slow_after_s`, and the run stops at `timeout_s` or at the first that fails."""
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(len(bodies), 64)) as pool:
            futures = [pool.submit(self._call, "POST", "/v1/completions", body) for body in bodies]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=self.slow_after_s, return_when=FIRST_EXCEPTION)
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    for f in pending:
                        f.cancel()
                    error = failed[0].exception()
                    if isinstance(error, ServerRefused):
                        raise ValueError(f"VLLMServerEngine: the server at {self.url} refused a prompt: {error}") from error
                    raise error
                if pending:
                    log.warning(
                        "VLLMServerEngine: %d of %d requests to %s unanswered after %.0f s",
                        len(pending), len(futures), self.url, time.perf_counter() - start,
                    )  # fmt: skip
        return [f.result() for f in futures]

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One HTTP request to the server: its JSON answer ({} for none). A server that does not
        answer raises `EngineUnavailable`; one that answers with an error, `ServerRefused`."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            raise ServerRefused(path, err.code, err.read().decode(errors="replace")[:1000]) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise EngineUnavailable(
                f"VLLMServerEngine: no answer from the vLLM server at {self.url} to {method} {path} ({reason}); "
                f"is it running? {START_HINT}, and give its address as the engine's url"
            ) from err
        return json.loads(payload) if payload else {}


def _default_push_dir(model: torch.nn.Module) -> str:
    """/dev/shm (memory: no disk write) where it holds the weights twice over, else the temporary folder."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 2 * size:
        return str(shm)
    return tempfile.gettempdir()


def _collective_device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
