"""The shared base of every method: the models (policy, reference, teacher) and their per-token
log-probs, sampling with the policy and scoring by the task, the optimizer, and the export.

Elsewhere, each with one job: building and sharding the models (`lit_posttrain.models`,
`lit_posttrain.sharding`), the forward passes (`lit_posttrain.logprobs`), the rollout engine's
life and scoring (`rollout.session.EngineSession`), what each step costs
(`methods.cost.StepCostHooks`), the seeds sampling takes from the run and the step
(`methods.seeds.RunSeeds`), measurement (`lit_posttrain.measurement`), the export folder
(`lit_posttrain.export`). A method subclasses `PostTrainingModule` (or `OnPolicyModule`, to train
on its own samples) and writes `training_step`; README.md, "Adding a method", gives the contract.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from lit_posttrain.allocator import keep_freed_memory
from lit_posttrain.callbacks.non_finite import NonFiniteGuard
from lit_posttrain.callbacks.sigterm import CheckpointOnSigterm
from lit_posttrain.data.batches import Row
from lit_posttrain.data.datamodule import pack_demonstrations
from lit_posttrain.data.task import Task
from lit_posttrain.export import export_policy
from lit_posttrain.logprobs import first_masked, token_logp
from lit_posttrain.methods.cost import StepCostHooks
from lit_posttrain.methods.seeds import RunSeeds
from lit_posttrain.models import LoRA, build_policy, freeze, load_model, resolve_sources
from lit_posttrain.optim import Optim, configure_adamw
from lit_posttrain.precision import DType, resolve_dtype
from lit_posttrain.rewards.guard import Scorer, ThreadScorer
from lit_posttrain.rollout import HFEngine, Rollout, RolloutEngine
from lit_posttrain.rollout.session import EngineSession
from lit_posttrain.sharding import is_sharded, shard_policy


class PostTrainingModule(StepCostHooks, RunSeeds, L.LightningModule):
    """Policy, reference and teacher models plus what every method needs around them.

    Args:
        model: model source: "builtin:smollm2-135m-instruct", "tiny-random-llama[:SEED]", a local Hugging Face folder, or a hub id (downloaded once into the hub cache).
        lora: train LoRA adapters instead of every weight (null: full fine-tuning).
        dtype: weight dtype: "auto" (bfloat16 where the hardware supports it, else float32; under mixed precision, float32 for weights the optimizer steps, with full fine-tuning), "bfloat16", "float32" or "float16".
        teacher: model source of a frozen teacher, for the methods that distil from one (OPD); it must share the policy's tokenizer.
        optim: optimizer and learning-rate schedule.
        engine: how completions are sampled (rollouts, evaluation); default HFEngine().
        scorer: how reward calls run, each bounded in time (one that raises or runs out of time scores 0 and is counted): ThreadScorer (default; timeout_s 10, workers 4) or ProcessScorer (worker processes, in parallel, a hung or dead worker replaced).
        gradient_checkpointing: recompute activations in the backward pass (less memory, ~20% slower).
        trust_remote_code: allow model folders to run their own Python code; off unless you trust the source.
        revision: the hub model's branch, tag or commit (a hub id `model` only); policy, reference, vLLM and exports read that snapshot.
        attn_implementation: transformers' attention kernel for the policy, reference and teacher ("sdpa", "eager", "flash_attention_2"; null: SDPA, with short keys on a CPU as plain matmuls, which are faster there: lit_posttrain/attention.py).
    """

    # What a method declares (README.md, "Adding a method"): whether it trains on the task's
    # demonstrations (the task is checked for them at start-up) and whether it reads a teacher (a
    # teacher given to a method that does not is refused, not loaded for nothing).
    needs_demonstrations: bool = False
    uses_teacher: bool = False
    # Optimizer steps one training_step takes (GRPO's ppo_epochs x mini_batches): the learning-rate
    # schedule's length, when the run is bounded by epochs, counts them.
    optimizer_steps_per_batch: int = 1

    def __init__(
        self,
        model: str = "builtin:smollm2-135m-instruct",
        lora: LoRA | None = None,
        dtype: DType = "auto",
        teacher: str | None = None,
        optim: Optim | None = None,
        engine: RolloutEngine | None = None,
        scorer: Scorer | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        revision: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if teacher is not None and not self.uses_teacher:
            raise ValueError(
                f"{type(self).__name__} does not use a teacher, but `teacher: {teacher}` is set: remove it "
                "(OPD is the method that distils from one)"
            )
        self.lora = lora
        self.optim = optim or Optim()
        self.engine = engine or HFEngine()
        self.sampler = EngineSession(self.engine, scorer or ThreadScorer())
        self.gradient_checkpointing = gradient_checkpointing
        self.trust_remote_code, self.attn_implementation = trust_remote_code, attn_implementation
        # Now, so that a bad source or a teacher with another tokenizer stops the run at start-up.
        self.model_folder, self.tokenizer, self.teacher_folder = resolve_sources(model, teacher, trust_remote_code, revision)
        self.dtype_setting = dtype  # resolved with the precision, when the model is built (weight_dtype)
        self.policy: torch.nn.Module | None = None
        self._teacher: torch.nn.Module | None = None
        self._reference: torch.nn.Module | None = None

    # --- models -------------------------------------------------------------------------------

    def configure_model(self) -> None:
        # Weights are created here, not in __init__, so that sharding strategies can wrap them as
        # they are built. Lightning calls this hook once per trainer entry point: build once.
        if self.policy is not None:
            return
        self.policy = build_policy(
            self.model_folder, self.weight_dtype, self.lora, self.gradient_checkpointing, self.trust_remote_code, self.attn_implementation
        )
        if self.teacher_folder is not None:
            self.__dict__["_teacher"] = self._frozen(self.teacher_folder, resolve_dtype(self.dtype_setting))
        # ModelParallelStrategy hands the module a device mesh before this hook: shard the policy
        # (FSDP2). The teacher and, with full fine-tuning, the reference stay whole on every rank:
        # they are frozen and only run forward.
        if self._device_mesh is not None:
            shard_policy(self.policy, self._device_mesh, lora=self.lora is not None, compute_dtype=self.mixed_precision_dtype)

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the policy's weights are built in (`dtype`): under mixed precision "auto"
        keeps a fully fine-tuned policy's in float32, the master weights the optimizer steps; a
        LoRA policy's frozen base and the frozen models take bf16 where it is native either way."""
        return resolve_dtype(self.dtype_setting, trained_in_mixed_precision=self.mixed_precision_dtype is not None and self.lora is None)

    @property
    def mixed_precision_dtype(self) -> torch.dtype | None:
        """The compute dtype of a mixed-precision run (Lightning's `precision: bf16-mixed` or
        `16-mixed`: weights and optimizer state in `dtype`, float32 for full fine-tuning, matmuls
        in bf16 or fp16), else None."""
        precision = str(getattr(self._trainer, "precision", ""))
        return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    @property
    def sharded(self) -> bool:
        """Whether the policy is sharded (FSDP2). Every rank must then run the policy's forward
        passes together: each gathers weights from all ranks, so a rank that skips or adds a
        forward deadlocks the others."""
        return self.policy is not None and is_sharded(self.policy)

    @property
    def teacher(self) -> torch.nn.Module:
        """The frozen teacher, on the policy's device."""
        if self._teacher is None:
            raise RuntimeError(f"{type(self).__name__} was built without a teacher: set `teacher:` to a model source")
        if next(self._teacher.parameters()).device != self.device:
            self._teacher.to(self.device)
        return self._teacher

    @contextmanager
    def reference(self):
        """The frozen starting model. With LoRA it is the policy with its adapters disabled, which
        costs no memory; with full fine-tuning a frozen copy is loaded on first use."""
        if self.lora is not None:
            with self.policy.disable_adapter():
                yield self.policy
            return
        if self._reference is None:
            # In the policy's dtype: at the start the two agree exactly, under mixed precision too.
            self.__dict__["_reference"] = self._frozen(self.model_folder, self.weight_dtype).to(self.device)
        yield self._reference

    def _frozen(self, folder: str, dtype: torch.dtype) -> torch.nn.Module:
        # Kept in `__dict__`, out of the module's children: not checkpointed (reloaded from its
        # source), not optimised, not sharded.
        return freeze(load_model(folder, dtype, self.trust_remote_code, self.attn_implementation))

    def policy_logp(
        self, tokens_BT: Tensor, attention_BT: Tensor, temperature: float = 1.0, first_scored: int | None = None
    ) -> Tensor:
        """Per-token log-probs under the policy, with gradients (from `first_scored` on)."""
        return token_logp(self.policy, tokens_BT, attention_BT, temperature, first_scored)

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
        return token_logp(self.teacher, tokens_BT, attention_BT, temperature, first_scored)

    def pack_for_training(self, rows: list[Row]) -> tuple[Tensor, Tensor, Tensor]:
        """Rows' prompt + demonstration packed on the device (`tokens_BT, attention_BT, mask_BT`),
        counted as this step's trained tokens: the loss forward about to run reads all of them."""
        tokens_BT, attention_BT, mask_BT = pack_demonstrations(rows, self.tokenizer.pad_token_id, self.device)
        self.count_tokens("trained", attention_BT.sum())
        return tokens_BT, attention_BT, mask_BT

    def demonstration_logp(self, rows: list[Row]) -> tuple[Tensor, Tensor]:
        """The policy's log-probs (with gradients) of the rows' demonstrations given their prompts,
        and the mask of those tokens: `(logp_BT, mask_BT)`. Counted as this step's trained tokens."""
        tokens_BT, attention_BT, mask_BT = self.pack_for_training(rows)
        return self.policy_logp(tokens_BT, attention_BT, first_scored=first_masked(mask_BT)), mask_BT

    def setup(self, stage: str) -> None:
        # A step's large activations reuse the heap's pages (lit_posttrain.allocator). One process
        # only: under FSDP2 over two processes the heaps it keeps took a 0.5B full fine-tune past
        # 24 GiB (22.7 GB in use, a rank killed) that fits in 18.5 with glibc's defaults.
        if self.trainer.strategy.root_device.type == "cpu" and self.trainer.world_size == 1:
            keep_freed_memory()
        self.sampler.compute_dtype = self.mixed_precision_dtype
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and self.needs_demonstrations and datamodule is not None:
            datamodule.task.check_demonstrations(type(self).__name__)

    # --- sampling and scoring -------------------------------------------------------------------

    @property
    def task(self) -> Task:
        return self.trainer.datamodule.task

    def teardown(self, stage: str) -> None:
        self.sampler.close()

    def sample(
        self, rows: list[Row], n: int = 1, score: bool = True, task: Task | None = None, **generate_kwargs
    ) -> Rollout:
        """Sample `n` completions per row with the current weights; score them with `task` (by
        default the training task). Unless greedy, each prompt is seeded by the run, the step and
        the prompt: its samples are the same whichever batch or rank it lands in, and after a resume."""
        if not generate_kwargs.get("greedy"):
            generate_kwargs.setdefault("seed", [self.run_seed(n, row.prompt_ids) for row in rows])
        task = (task or self.task) if score else None
        return self.sampler.sample(self.policy, self.tokenizer, rows, n, task, **generate_kwargs)

    # --- optimisation -------------------------------------------------------------------------

    def optimizer_step(self, *args, **kwargs) -> None:
        # Under automatic optimisation the closure (training_step and backward) runs inside this call.
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """The step's time ends here; an engine sampling from its own copy of the weights must see
        every update."""
        self.step_cost.mark("end")
        seconds = self.sampler.push(self.policy)
        if seconds is not None:
            self.add_time("sync_s", seconds)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # With LoRA the frozen base is rebuilt from `model` when a run resumes: the checkpoint holds
        # the adapters and the optimizer's state, not a second copy of the base weights. (A sharded
        # policy's checkpoint is written by the strategy from the module itself: kept whole.)
        if self.lora is not None and not self.sharded:
            # Tied weights (a head sharing the embedding) under each of their names.
            frozen = {name for name, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
            checkpoint["frozen_base_omitted"] = True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("frozen_base_omitted"):
            missing = [n for n, p in self.named_parameters() if p.requires_grad and n not in checkpoint["state_dict"]]
            if missing:
                raise ValueError(f"the checkpoint lacks {len(missing)} trained weights of this model (first: {missing[0]}): was it written with other LoRA settings?")
            self.strict_loading = False  # the frozen base's weights are the ones `model` built

    def configure_callbacks(self):
        """Callbacks every run of this module needs, added only where the configuration has none of
        the same type (Lightning would otherwise replace the configured one)."""
        present = {type(cb) for cb in self.trainer.callbacks}
        return [cb for cb in (NonFiniteGuard(), CheckpointOnSigterm()) if type(cb) not in present]

    def configure_optimizers(self):
        trainable = (p for p in self.policy.parameters() if p.requires_grad)
        steps = self.trainer.max_steps
        if steps < 0:  # bounded by epochs: Lightning counts batches
            steps = int(self.trainer.estimated_stepping_batches) * self.optimizer_steps_per_batch
        return configure_adamw(trainable, self.optim, steps)

    # --- export -------------------------------------------------------------------------------

    def export_hf(self, folder: str | Path) -> Path:
        """Write the policy as a Hugging Face folder with its tokenizer (`export.export_policy`).
        With LoRA: a merged full model when `lora.merge_on_save`, else a peft adapter folder.
        Under data parallelism only rank 0 writes; with a sharded policy every rank must call it
        (the full weights are gathered from all of them)."""
        merge = self.lora is not None and self.lora.merge_on_save

        def unsharded() -> torch.nn.Module:
            return build_policy(self.model_folder, self.weight_dtype, self.lora, False, self.trust_remote_code)

        return export_policy(self.policy, self.tokenizer, folder, rank=self.global_rank, unsharded=unsharded, merge_lora=merge)
