"""SePT: self-evolving post-training (code public, built on verl). Plain SFT on the model's own
low-temperature samples, refreshed online.

Objective, per step: for each prompt q sample one completion o ~ pi(. | q) at sampling temperature
tau_s with the latest weights, then minimise the token-mean negative log-likelihood at training
temperature tau_t = 1:
    L = -(1 / N) * sum_{t} log pi_{tau_t}(o_t | q, o_<t).
tau_s rises linearly from `start_temperature` to 1.0 over the first `ramp_fraction` of training.
Sampling colder than training sharpens the model toward its own likeliest answers; with
tau_s = tau_t the expected gradient is zero, and with tau_s > tau_t training hurts.

Departures and choices:
1. Online is the default (rollouts sampled every step); the offline ablation is the same run with
   `rollouts: {every_n_steps: null}`: every prompt sampled once, with the starting weights.
2. No reward and no verifier; held-out accuracy is still evaluated by the task's verifier.
3. A configuration whose sampling temperature ever exceeds the training temperature is refused;
   one that samples at the training temperature throughout is refused too (zero expected gradient).
4. One optimizer step per rollout batch by default; `ppo_epochs` and `mini_batches` take several
   (`methods.epochs`), as epochs of SFT over the step's own samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.data.batches import Batch, Row
from lit_posttrain.losses import token_mean_nll
from lit_posttrain.methods.on_policy import OnPolicyModule
from lit_posttrain.rollout import Rollout


class SePT(OnPolicyModule):
    """Self-training on the model's own low-temperature samples (see the module docstring).

    Args:
        start_temperature: sampling temperature at the first step (0.6 for math models, 0.9 for general ones in the paper).
        end_temperature: sampling temperature at the end of the ramp; must not exceed train_temperature.
        ramp_fraction: fraction of training over which the sampling temperature rises linearly.
        train_temperature: temperature of the log-probs the NLL is taken at (the paper's tau_t = 1).
    """

    def __init__(
        self,
        *args,
        start_temperature: float = 0.9,
        end_temperature: float = 1.0,
        ramp_fraction: float = 2 / 3,
        train_temperature: float = 1.0,
        group_size: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(*args, group_size=group_size, **kwargs)
        hottest = max(start_temperature, end_temperature)
        if hottest > train_temperature:
            raise ValueError(
                f"SePT sampling temperature {hottest} exceeds the training temperature {train_temperature}: "
                "self-training on samples hotter than the trained distribution flattens it and hurts the "
                "model (SePT's ablation). Use start_temperature <= end_temperature <= train_temperature."
            )
        if start_temperature == end_temperature == train_temperature:
            raise ValueError(
                f"SePT sampling and training temperatures are both {train_temperature} throughout: the expected "
                "gradient of SFT on the model's own samples is then zero. Start colder, e.g. start_temperature: 0.6."
            )
        if start_temperature <= 0 or not 0 < ramp_fraction <= 1:
            raise ValueError("SePT needs start_temperature > 0 and 0 < ramp_fraction <= 1")
        self.start_temperature, self.end_temperature = start_temperature, end_temperature
        self.ramp_fraction, self.train_temperature = ramp_fraction, train_temperature

    def sampling_temperature(self, step: int, total_steps: int) -> float:
        progress = min(1.0, step / max(1.0, self.ramp_fraction * total_steps))
        return self.start_temperature + (self.end_temperature - self.start_temperature) * progress

    def sample_rollouts(self, rows: list[Row]) -> Rollout:
        temperature = self.sampling_temperature(self.sampling_step, int(self.trainer.estimated_stepping_batches))
        return self.sample(rows, n=self.group_size, temperature=temperature, score=False)

    @property
    def uses_pi_old(self) -> bool:
        return False  # an NLL: no ratio to pi_old

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        rollout = self.rollouts_for(batch)
        loss, metrics, _ = self.train_on(rollout, self.self_training_backward)
        self.log_rollout_step(rollout, metrics | {"sampling_temperature": torch.tensor(rollout.temperature)})
        return loss

    def self_training_backward(self, rollout: Rollout, index: list[int]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Forward and backward of the token-mean NLL of `rollout`'s completions (the batch's rows
        `index`) at the training temperature, a micro-batch at a time, over its tokens on every
        process."""
        tokens = self.step_counts(rollout.mask_BT).tokens

        def micro_batch_loss(index: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
            part = rollout.select(index)
            logp_BT = self.rollout_logp(part, temperature=self.train_temperature)
            loss, metrics = token_mean_nll(logp_BT, part.mask_BT, num_tokens=tokens)
            return loss, {"nll": metrics["nll"]}

        loss, metrics = self.backward_in_micro_batches(*rollout.row_lengths(), micro_batch_loss)
        return loss, metrics, torch.ones(len(rollout), dtype=torch.bool)
