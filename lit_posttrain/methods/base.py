"""The shared base of every method: the models (policy, reference, teacher) and their per-token
log-probs (computed by `lit_posttrain.logprobs`), sampling and scoring, the optimizer and its
schedule, token normalisation under accumulation, what each step costs (its phases' time and the
tokens each model ran on, tallied by `cost.StepCost`), and the export of the trained model.

It holds no method-specific branches: a method subclasses it and writes `training_step`.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from lit_posttrain.data.datamodule import Row, pack_demonstrations
from lit_posttrain.data.task import Task
from lit_posttrain.logprobs import shared_prompt_logp, shared_prompt_tokens, token_logp
from lit_posttrain.methods.cost import StepCost
from lit_posttrain.models import (
    DType,
    LoRA,
    apply_lora,
    check_same_tokenizer,
    freeze,
    load_model,
    load_tokenizer,
    resolve_dtype,
    resolve_model_source,
)
from lit_posttrain.optim import Optim, lr_multiplier
from lit_posttrain.rewards.guard import GuardedScorer
from lit_posttrain.rollout import HFEngine, Rollout, RolloutEngine


class PostTrainingModule(L.LightningModule):
    """Policy, reference and teacher models plus what every method needs around them.

    Args:
        model: model source: "builtin:smollm2-135m-instruct", "tiny-random-llama[:SEED]", a local Hugging Face folder, or a hub id.
        lora: train LoRA adapters instead of every weight (null: full fine-tuning).
        dtype: weight dtype: "auto" (bfloat16 where the hardware supports it, else float32), "bfloat16", "float32" or "float16".
        teacher: model source of a frozen teacher (distillation methods); it must share the policy's tokenizer.
        optim: optimizer and learning-rate schedule.
        engine: how completions are sampled (rollouts, evaluation); default HFEngine().
        verifier_timeout_s: a reward call that takes longer scores 0 and is counted, like one that raises.
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~20% slower).
        trust_remote_code: allow model folders to run their own Python code; off unless you trust the source.
    """

    def __init__(
        self,
        model: str = "builtin:smollm2-135m-instruct",
        lora: LoRA | None = None,
        dtype: DType = "auto",
        teacher: str | None = None,
        optim: Optim | None = None,
        engine: RolloutEngine | None = None,
        verifier_timeout_s: float = 10.0,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lora = lora
        self.optim = optim or Optim()
        self.engine = engine or HFEngine()
        self.scorer = GuardedScorer(verifier_timeout_s)
        self._engine_ready = False
        self.gradient_checkpointing = gradient_checkpointing
        self.trust_remote_code = trust_remote_code
        # Resolve sources and load tokenizers now, so that a bad source or a teacher with another
        # tokenizer stops the run at start-up, before any data or weights are loaded.
        self.model_folder = resolve_model_source(model)
        self.tokenizer = load_tokenizer(self.model_folder, trust_remote_code)
        self.teacher_folder = None
        if teacher is not None:
            self.teacher_folder = resolve_model_source(teacher)
            check_same_tokenizer(self.tokenizer, load_tokenizer(self.teacher_folder, trust_remote_code), teacher)
        self.weight_dtype = resolve_dtype(dtype)
        self.policy: torch.nn.Module | None = None
        self._teacher: torch.nn.Module | None = None
        self._reference: torch.nn.Module | None = None
        self._sharded = False
        self._step_cost: StepCost | None = None

    # --- models -------------------------------------------------------------------------------

    def configure_model(self) -> None:
        # Weights are created here, not in __init__, so that sharding strategies can wrap them as
        # they are built. Lightning calls this hook once per trainer entry point: build once.
        if self.policy is not None:
            return
        policy = load_model(self.model_folder, self.weight_dtype, self.trust_remote_code)
        if self.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
            policy.config.use_cache = False
            # Frozen embeddings under LoRA would leave the checkpointed blocks without an input
            # that requires grad, and no gradient would reach the adapters.
            policy.enable_input_require_grads()
        # from_pretrained returns eval mode; Lightning restores whatever mode fit starts from.
        policy.train()
        self.policy = apply_lora(policy, self.lora) if self.lora is not None else policy
        if self.teacher_folder is not None:
            teacher = freeze(load_model(self.teacher_folder, self.weight_dtype, self.trust_remote_code))
            # Kept out of the module's children, like the reference: frozen weights have no place in
            # every checkpoint (they are reloaded from their source), nor in a sharding plan.
            self.__dict__["_teacher"] = teacher
        # ModelParallelStrategy hands the module a device mesh before this hook: shard the policy.
        if self._device_mesh is not None:
            self._shard_policy(self._device_mesh)

    def _shard_policy(self, mesh) -> None:
        """FSDP2: every decoder layer, then the rest of the model, sharded over the data-parallel
        ranks. Under LoRA the inner transformers model is sharded, not peft's wrapper: sharding the
        wrapper leaves the embedding's weight a DTensor inside an unsharded call (`aten.embedding`
        then sees mixed Tensor and DTensor arguments). The teacher and, with full fine-tuning, the
        reference stay whole on every rank: they are frozen and only run forward."""
        from torch.distributed.fsdp import fully_shard

        if "tensor_parallel" in mesh.mesh_dim_names and mesh["tensor_parallel"].size() > 1:
            raise ValueError(
                f"tensor_parallel_size={mesh['tensor_parallel'].size()}: lit_posttrain shards with FSDP2 only; "
                "set ModelParallelStrategy(tensor_parallel_size=1)"
            )
        mesh = mesh["data_parallel"] if "data_parallel" in mesh.mesh_dim_names else mesh
        inner = self.policy.base_model.model if self.lora is not None else self.policy
        # transformers names the blocks that must not be split across devices: one FSDP unit each,
        # so that only one block's full weights exist at a time.
        blocks = set(getattr(inner, "_no_split_modules", None) or [])
        for module in inner.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=mesh)
        fully_shard(inner, mesh=mesh)
        self._sharded = True

    @property
    def lockstep(self) -> bool:
        """Whether every rank must run the policy's forward passes together: under FSDP each one
        gathers weights from all ranks, so a rank that skips or adds a forward deadlocks the others."""
        return self._sharded

    @property
    def teacher(self) -> torch.nn.Module | None:
        """The frozen teacher (None without one), on the policy's device."""
        teacher = self._teacher
        if teacher is not None and next(teacher.parameters()).device != self.device:
            teacher.to(self.device)
        return teacher

    def _required_teacher(self) -> torch.nn.Module:
        if self.teacher is None:
            raise RuntimeError("this module was built without a teacher: set `teacher:` to a model source")
        return self.teacher

    @contextmanager
    def reference(self):
        """The frozen starting model. With LoRA it is the policy with its adapters disabled, which
        costs no memory; with full fine-tuning a frozen copy is loaded on first use."""
        if self.lora is not None:
            with self.policy.disable_adapter():
                yield self.policy
            return
        if self._reference is None:
            reference = freeze(load_model(self.model_folder, self.weight_dtype, self.trust_remote_code))
            # Kept out of the module's children so it is neither checkpointed nor optimised.
            self.__dict__["_reference"] = reference.to(self.device)
        yield self._reference

    def policy_logp(
        self, tokens_BT: Tensor, attention_BT: Tensor, temperature: float = 1.0, first_scored: int | None = None
    ) -> Tensor:
        """Per-token log-probs under the policy, with gradients (from `first_scored` on)."""
        return token_logp(self.policy, tokens_BT, attention_BT, temperature, first_scored)

    def rollout_logp(self, rollout: Rollout, rows: Tensor | None = None, temperature: float | None = None) -> Tensor:
        """Policy log-probs (with gradients) of a rollout's tokens, at its sampling temperature
        unless `temperature` is given.

        Each prompt is run once and its key/value cache shared by its group's completions, which
        gives the same log-probs and gradient as running every row in full at a fraction of the
        cost (prompts are usually most of the tokens). `rows` selects rows to compute; the others
        get zeros with no gradient. Gradient checkpointing disables the cache, so the plain
        full-row forward is used then.
        """
        rows = torch.ones(len(rollout), dtype=torch.bool, device=rollout.tokens_BT.device) if rows is None else rows
        logp_BT = torch.zeros(rollout.tokens_BT.shape, device=rollout.tokens_BT.device)
        index_R = rows.nonzero().squeeze(-1)
        tokens_RT, attention_RT = rollout.tokens_BT[index_R], rollout.attention_BT[index_R]
        temperature = rollout.temperature if temperature is None else temperature
        if self.gradient_checkpointing:
            logp_RT = self.policy_logp(tokens_RT, attention_RT, temperature, rollout.prompt_width) * rollout.mask_BT[index_R]
            self.count_tokens("trained", attention_RT.sum())
        else:
            logp_RT = shared_prompt_logp(
                self.policy, tokens_RT, attention_RT, rollout.group_B[index_R], rollout.prompt_width, temperature
            )
            self.count_tokens("trained", shared_prompt_tokens(attention_RT, rollout.group_B[index_R], rollout.prompt_width))
        return logp_BT.index_put((index_R,), logp_RT)

    @torch.no_grad()
    def teacher_rollout_logp(self, rollout: Rollout) -> Tensor:
        """The teacher's log-probs of a rollout's completion tokens at its sampling temperature (0
        elsewhere), each prompt run once for its whole group, as the policy's are."""
        teacher = self._required_teacher()
        self.count_tokens("teacher", shared_prompt_tokens(rollout.attention_BT, rollout.group_B, rollout.prompt_width))
        return shared_prompt_logp(
            teacher, rollout.tokens_BT, rollout.attention_BT, rollout.group_B, rollout.prompt_width, rollout.temperature
        )

    @torch.no_grad()
    def reference_logp(
        self, tokens_BT: Tensor, attention_BT: Tensor, temperature: float = 1.0, first_scored: int | None = None
    ) -> Tensor:
        """Per-token log-probs under the frozen starting model (from `first_scored` on)."""
        with self.reference() as reference:
            return token_logp(reference, tokens_BT, attention_BT, temperature, first_scored)

    @torch.no_grad()
    def teacher_logp(
        self, tokens_BT: Tensor, attention_BT: Tensor, temperature: float = 1.0, first_scored: int | None = None
    ) -> Tensor:
        """Per-token log-probs under the frozen teacher (from `first_scored` on)."""
        return token_logp(self._required_teacher(), tokens_BT, attention_BT, temperature, first_scored)

    def pack_for_training(self, rows: list[Row]) -> tuple[Tensor, Tensor, Tensor]:
        """Rows' prompt + demonstration packed on the device (`tokens_BT, attention_BT, mask_BT`),
        counted as this step's trained tokens: the loss forward about to run reads all of them."""
        tokens_BT, attention_BT, mask_BT = pack_demonstrations(rows, self.tokenizer.pad_token_id, self.device)
        self.count_tokens("trained", attention_BT.sum())
        return tokens_BT, attention_BT, mask_BT

    # Methods that train on the task's demonstrations say so; the task is checked at start-up.
    needs_demonstrations: bool = False

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and self.needs_demonstrations and datamodule is not None:
            missing = datamodule.task.missing_demonstrations()
            if missing:
                raise ValueError(
                    f"{type(self).__name__} trains on demonstrations, but task {datamodule.task.name!r} has none for "
                    f"{len(missing)} training examples (first: {', '.join(missing[:3])})"
                )

    # --- sampling and scoring -------------------------------------------------------------------

    @property
    def task(self) -> Task:
        return self.trainer.datamodule.task

    def _ready_engine(self) -> RolloutEngine:
        if not self._engine_ready:
            self.engine.setup(self.policy, self.tokenizer)
            self._engine_ready = True
        return self.engine

    def teardown(self, stage: str) -> None:
        # A vLLM engine holds a KV cache and a process group until closed.
        if self._engine_ready:
            self.engine.close()
            self._engine_ready = False

    @torch.no_grad()
    def sample(
        self, rows: list[Row], n: int = 1, score: bool = True, task: Task | None = None, **generate_kwargs
    ) -> Rollout:
        """Sample `n` completions per row with the current weights; score them with `task` (by
        default the training task)."""
        if not generate_kwargs.get("greedy"):
            generate_kwargs.setdefault("seed", [self.prompt_seed(row, n) for row in rows])
        rollout = self._ready_engine().generate([row.prompt_ids for row in rows], n, **generate_kwargs)
        if not score:
            return rollout
        task = task or self.task
        start = time.perf_counter()
        reward_B = torch.tensor(
            self.scorer(
                [
                    functools.partial(task.reward, rows[g].example.messages, text, rows[g].example.answer)
                    for g, text in zip(rollout.group_B.tolist(), rollout.completions, strict=True)
                ]
            )
        )
        rollout.timing["score_s"] = time.perf_counter() - start
        return rollout.with_rewards(reward_B)

    def _seed(self, *parts) -> int:
        # The run's seed, the step and the given parts: the same after a resume, on any rank.
        step = self._trainer.global_step if self._trainer is not None else 0
        return zlib.crc32(repr((os.environ.get("PL_GLOBAL_SEED", "0"), step, *parts)).encode())

    def prompt_seed(self, row: Row, n: int) -> int:
        """The sampling seed of a prompt at this step, so that its samples are the same whichever
        batch or rank it lands in and after a resume."""
        return self._seed(n, row.prompt_ids)

    def step_seed(self, batch_idx: int) -> int:
        """A seed for this step's own random draws (OTR's candidates)."""
        return self._seed("batch", batch_idx)

    @torch.no_grad()
    def evaluate(self, rows: list[Row], batch_size: int = 64, task: Task | None = None) -> dict:
        """Greedy held-out evaluation: accuracy under the task's verifier, mean completion length,
        truncation rate, and the per-example rewards (for comparisons example by example)."""
        rollouts = [
            self.sample(rows[i : i + batch_size], greedy=True, task=task) for i in range(0, len(rows), batch_size)
        ]
        reward_B = torch.cat([r.reward_B for r in rollouts])
        return {
            "accuracy": reward_B.mean().item(),
            "completion_length": torch.cat([r.completion_lengths_B for r in rollouts]).float().mean().item(),
            "truncated": torch.cat([r.truncated_B for r in rollouts]).float().mean().item(),
            "per_example": reward_B.tolist(),
        }

    # --- what a step costs ----------------------------------------------------------------------

    @property
    def token_kinds(self) -> tuple[str, ...]:
        """Logged every step as `tokens/<kind>`: the tokens each model's forward ran on, summed over
        processes. `trained`: the policy's loss forward (with gradients); `teacher`: the teacher's,
        when there is one; methods that sample add `prompts` (each prompt prefilled once) and
        `generated`. Fixed for a run, so that every process logs the same keys (each is a collective)."""
        return ("trained", "teacher") if self.teacher_folder is not None else ("trained",)

    # Logged every step as `time/<phase>`, in seconds, the mean over processes; the loss forward and
    # backward + optimizer step are timed here, the others are added with `add_time`.
    time_phases: tuple[str, ...] = ("loss_forward_s", "backward_step_s")

    @property
    def step_cost(self) -> StepCost:
        """This step's tally (made on first use: subclasses' `token_kinds` may read their own settings)."""
        if self._step_cost is None:
            self._step_cost = StepCost(self.token_kinds, self.time_phases, owner=type(self).__name__)
        return self._step_cost

    def count_tokens(self, kind: str, count: Tensor | int) -> None:
        """Add `count` tokens of `kind` (one of `token_kinds`) to this step's `tokens/<kind>`."""
        self.step_cost.add(f"tokens/{kind}", count)

    def add_time(self, phase: str, seconds: float) -> None:
        """Add `seconds` to this step's `time/<phase>` (one of `time_phases`)."""
        self.step_cost.add(f"time/{phase}", seconds)

    # Callbacks' hooks run before the module's: RolloutRefresh has sampled by the time this runs,
    # so the window up to the backward is the loss forward alone.
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.step_cost.mark("start")

    def on_before_backward(self, loss: Tensor) -> None:
        self.step_cost.mark("backward")

    def on_after_backward(self) -> None:
        self.step_cost.mark("end")  # moved on by optimizer_step when this micro-batch steps

    def optimizer_step(self, *args, **kwargs) -> None:
        # Under automatic optimisation the closure (training_step and backward) runs inside this call.
        super().optimizer_step(*args, **kwargs)
        # An engine sampling from its own copy of the weights must see every update.
        if self._engine_ready:
            self.engine.sync_weights(self.policy)
        self.step_cost.mark("end")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if outputs is not None:
            self.log("train/loss", outputs["loss"].detach(), batch_size=len(batch), sync_dist=True)
        tally = self.step_cost.finish()
        tokens = {k: v for k, v in tally.items() if k.startswith("tokens/")}
        self.log_dict(tokens, reduce_fx="sum", batch_size=len(batch), sync_dist=True)
        self.log_dict({k: v for k, v in tally.items() if k not in tokens}, batch_size=len(batch), sync_dist=True)

    def token_normaliser(self, window_tokens: int) -> float:
        """This micro-batch's share of its accumulation window's token count.

        Lightning divides each micro-batch loss by `accumulate_grad_batches` and data-parallel
        strategies average gradients over ranks; dividing the summed loss by this share undoes both,
        so the window's gradient is exactly the token mean over all of its tokens on all ranks.
        """
        share = self.trainer.accumulate_grad_batches * self.trainer.world_size
        return max(window_tokens, 1) / share

    # --- optimisation -------------------------------------------------------------------------

    def configure_callbacks(self):
        """Callbacks every run of this module needs, added only where the configuration has none of
        the same type (Lightning would otherwise replace the configured one)."""
        present = {type(cb) for cb in self.trainer.callbacks}
        return [cb for cb in self.default_callbacks() if type(cb) not in present]

    def default_callbacks(self) -> list:
        # Imported here: the callbacks package imports this module (for its helpers).
        from lit_posttrain.callbacks.non_finite import NonFiniteGuard
        from lit_posttrain.callbacks.sigterm import CheckpointOnSigterm

        return [NonFiniteGuard(), CheckpointOnSigterm()]

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters")
        opt = self.optim
        optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = LambdaLR(
            optimizer, lambda step: lr_multiplier(step, opt.warmup_steps, total, opt.decay, opt.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- export -------------------------------------------------------------------------------

    def export_hf(self, folder: str | Path) -> Path:
        """Write the policy as a Hugging Face folder with its tokenizer. With LoRA: a merged full
        model when `lora.merge_on_save`, else a peft adapter folder (which transformers also loads
        when peft is installed). Written to a temporary sibling and renamed, so a crash while
        saving never leaves a half-written folder under the final name.

        Under data parallelism only rank 0 writes; with a sharded policy every rank must call it
        (the full weights are gathered from all of them)."""
        folder = Path(folder)
        policy = self._gather_policy() if self.lockstep else (self.policy if self.global_rank == 0 else None)
        if policy is None:  # another rank writes
            return folder
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if self.lora is not None and self.lora.merge_on_save:
            # Merge a copy: merging in place would change the live model (and in bf16 drift it).
            policy = copy.deepcopy(policy).merge_and_unload()
        policy.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder

    def _gather_policy(self) -> torch.nn.Module | None:
        """An unsharded copy of the sharded policy on rank 0 (None elsewhere): a collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.global_rank != 0:
            return None
        policy = load_model(self.model_folder, self.weight_dtype, self.trust_remote_code)
        policy = apply_lora(policy, self.lora) if self.lora is not None else policy
        policy.load_state_dict(state)
        return policy
