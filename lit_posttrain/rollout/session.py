"""A rollout engine bound to the policy for a run: started on first use, given the new weights
after every optimizer step, closed when training ends, and what it samples scored by the task.
The engine's whole life in one place; the module calls `sample`, `push` and `close`."""

from __future__ import annotations

import time

import torch
from transformers import PreTrainedTokenizerBase

from lit_posttrain.data.batches import Row
from lit_posttrain.data.task import Task
from lit_posttrain.rewards.guard import Scorer
from lit_posttrain.rollout.engine import RolloutEngine
from lit_posttrain.rollout.types import Rollout


class EngineSession:
    """`engine` sampling from `policy`, with rewards scored by `scorer` (a reward call that raises
    or runs out of time scores 0 and is counted)."""

    def __init__(self, engine: RolloutEngine, scorer: Scorer) -> None:
        self.engine = engine
        self.scorer = scorer
        self.started = False
        # The dtype the trainer computes the policy in under mixed precision (bf16 for
        # `bf16-mixed`), None otherwise; set by the module once the trainer is known.
        self.compute_dtype: torch.dtype | None = None

    def start(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> RolloutEngine:
        """The engine, set up for `policy` on first use. An engine that keeps a model of its own
        (VLLMEngine) computes in `compute_dtype` where it is set, as the trainer does."""
        if not self.started:
            if hasattr(self.engine, "compute_dtype"):
                self.engine.compute_dtype = self.compute_dtype
            self.engine.setup(policy, tokenizer)
            self.started = True
        return self.engine

    @torch.no_grad()
    def sample(
        self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[Row], n: int, task: Task | None,
        **generate_kwargs,
    ) -> Rollout:  # fmt: skip
        """`n` completions per row, scored by `task` (not scored when it is None)."""
        rollout = self.start(policy, tokenizer).generate([row.prompt_ids for row in rows], n, **generate_kwargs)
        if task is None:
            return rollout
        start = time.perf_counter()
        parts = task.reward_parts()
        # Every part of every completion is its own guarded call: one that fails scores that part 0.
        items = [(text, rows[g].example) for g, text in zip(rollout.group_B.tolist(), rollout.completions, strict=True)]
        score_BP = torch.tensor(self.scorer.score(parts, items), dtype=torch.float32).view(len(rollout), len(parts))
        reward_B = score_BP @ torch.tensor([float(part.weight) for part in parts])
        rollout.timing["score_s"] = time.perf_counter() - start
        named = {part.name: score_BP[:, p] for p, part in enumerate(parts)} if task.rewards else None
        return rollout.with_rewards(reward_B, named)

    def push(self, policy: torch.nn.Module) -> float | None:
        """Give a started engine the policy's current weights (vLLM's copy, or HFEngine's merged
        copy under LoRA; one that samples from the policy itself has nothing to do); the seconds it
        took, None when the engine has not started."""
        if not self.started:
            return None
        start = time.perf_counter()
        self.engine.sync_weights(policy)
        return time.perf_counter() - start

    def close(self) -> None:
        """Free what the engine holds (a vLLM engine: its KV cache and process group)."""
        if self.started:
            self.engine.close()
            self.started = False
        self.scorer.close()
