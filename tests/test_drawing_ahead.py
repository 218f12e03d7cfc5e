"""Samples drawn ahead of training (`RolloutSource(max_staleness=k)`, rollout/ahead.py): a batch
trains on the samples the weights of k batches earlier draw for it, with that step's seeds, drawn
in a worker thread while the trainer trained, never while the engine took new weights; k = 0 is
the on-policy step; a resumed run trains on what the uninterrupted one did."""

import threading
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_posttrain.data import Arithmetic, TaskDataModule
from lit_posttrain.data.batches import Batches, Row
from lit_posttrain.data.task import Example
from lit_posttrain.methods.grpo import GRPO
from lit_posttrain.methods.sept import SePT
from lit_posttrain.models import LoRA
from lit_posttrain.optim import Optim
from lit_posttrain.rollout import HFEngine
from lit_posttrain.rollout.ahead import SamplesAhead
from lit_posttrain.rollout.source import RolloutSource
from tests.helpers.steps import tiny_rollout


class RecordingEngine(HFEngine):
    """HFEngine on a merged LoRA copy that records each sampling call (its thread, the weight
    pushes before it) and fails a push made while it samples."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, int]] = []
        self.pushes, self.sampling = 0, False

    def sync_weights(self, policy: torch.nn.Module) -> None:
        assert not self.sampling, "the engine took new weights while it sampled"
        self.pushes += 1
        super().sync_weights(policy)

    def generate(self, *args, **kwargs):
        self.sampling = True
        self.calls.append((threading.current_thread().name, self.pushes))
        try:
            time.sleep(0.05)  # a slow sampler: a push that did not wait for it would land mid-sample
            return super().generate(*args, **kwargs)
        finally:
            self.sampling = False


class Recorder(L.Callback):
    """Each batch's rows, the trained weights it started from and the rollout it trained on."""

    def __init__(self) -> None:
        self.rows, self.weights, self.rollouts = [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.rows.append(batch.rows)
        self.weights.append({n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.rollouts.append(module.last_rollout)


def _odd_length(completion: str, answer: str) -> float:
    return float(len(completion) % 2)  # varies within a group: every step moves the weights


def _module(max_staleness: int, engine: HFEngine | None = None) -> GRPO:
    return GRPO(
        model="tiny-random-llama", dtype="float32", lora=LoRA(r=4), group_size=4, optim=Optim(lr=0.05),
        engine=engine or RecordingEngine(max_new_tokens=6), rollouts=RolloutSource(max_staleness=max_staleness),
    )  # fmt: skip


def _fit(module: GRPO, tmp_path: Path, steps: int = 4, callbacks=(), ckpt_path=None, checkpoint_every=None) -> L.Trainer:
    # 12 prompts in batches of 4: three batches an epoch, so four steps cross into the next epoch.
    data = TaskDataModule(Arithmetic(num_train=12, num_eval=4, shots=0, verifier=_odd_length), batch_size=4)
    saving = [L.pytorch.callbacks.ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=checkpoint_every, save_top_k=-1)] if checkpoint_every else []
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path), log_every_n_steps=1,
        enable_checkpointing=bool(saving), callbacks=[*callbacks, *saving],
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    # Objects in the hyperparameters (LightningCLI saves plain values): this test's own file, trusted.
    trainer.fit(module, data, ckpt_path=ckpt_path, weights_only=False if ckpt_path else None)
    return trainer


def _resample(module: GRPO, weights: dict, rows, step: int):
    """The samples `weights` draw for `rows` with step `step`'s seeds, on the module's own engine."""
    params = dict(module.policy.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    module.sampler.start(module.policy, module.tokenizer).sync_weights(module.policy)
    with module.seeded_as_step(step):
        return module.sample_rollouts(rows)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_each_batch_trains_on_what_the_weights_of_k_batches_before_drew(k, tmp_path):
    engine, recorder = RecordingEngine(max_new_tokens=6), Recorder()
    module = _module(k, engine)
    _fit(module, tmp_path, callbacks=[recorder])

    drawn_at = [max(0, t - k) for t in range(4)]
    assert [r.version_B.unique().tolist() for r in recorder.rollouts] == [[s] for s in drawn_at]
    # One draw a batch, none wasted past max_steps; after the first, in the worker, each started
    # with the pushes of its step (one at the engine's start, one after each optimizer step).
    threads = [name for name, _ in engine.calls]
    assert len(engine.calls) == 4
    assert threads[0] == "MainThread"
    assert all(name.startswith("lit-posttrain-ahead" if k else "MainThread") for name in threads[1:])
    assert sorted(pushes - 1 for _, pushes in engine.calls) == drawn_at

    metrics = (Path(module.trainer.log_dir) / "metrics.csv").read_text().splitlines()
    column = metrics[0].split(",").index("train/staleness")
    assert [float(line.split(",")[column]) for line in metrics[1:] if line.split(",")[column]] == [t - s for t, s in enumerate(drawn_at)]

    # Drawn again from the recorded weights of the step that drew them: the same samples.
    moved = 0
    for t, (rows, rollout) in enumerate(zip(recorder.rows, recorder.rollouts, strict=True)):
        again = _resample(module, recorder.weights[drawn_at[t]], rows, drawn_at[t])
        assert torch.equal(again.tokens_BT, rollout.tokens_BT), f"batch {t}"
        assert torch.equal(again.reward_B, rollout.reward_B), f"batch {t}"
        if drawn_at[t] != t:
            current = _resample(module, recorder.weights[t], rows, drawn_at[t])
            moved += not torch.equal(current.tokens_BT, rollout.tokens_BT)
    assert moved or not k, "the weights moved too little to tell the drawing step from the current one"


def test_a_resumed_run_trains_on_the_samples_drawn_before_it_stopped(tmp_path):
    whole = Recorder()
    _fit(_module(1), tmp_path / "whole", callbacks=[whole], checkpoint_every=2)
    checkpoint = next((tmp_path / "whole" / "ckpt").glob("*step=2.ckpt"))
    resumed = Recorder()
    _fit(_module(1), tmp_path / "resumed", callbacks=[resumed], ckpt_path=checkpoint)

    # Batch 2 was drawn by step 1's weights before the checkpoint; drawn again it would be step 2's.
    assert [r.version_B.unique().tolist() for r in resumed.rollouts] == [[1], [2]]
    for a, b in zip(whole.rollouts[2:], resumed.rollouts, strict=True):
        assert torch.equal(a.tokens_BT, b.tokens_BT)
    for name, value in whole.weights[3].items():
        torch.testing.assert_close(resumed.weights[1][name], value, rtol=0, atol=0)


def test_an_engine_sampling_the_trained_weights_themselves_is_refused_at_start_up(tmp_path):
    module = GRPO(model="tiny-random-llama", dtype="float32", engine=HFEngine(max_new_tokens=4), rollouts=RolloutSource(max_staleness=1))
    with pytest.raises(ValueError, match=r"max_staleness 1 draws samples while the policy trains, but HFEngine samples from the policy itself"):
        _fit(module, tmp_path, steps=1)


def test_drawing_ahead_and_reusing_rollouts_together_are_refused():
    with pytest.raises(ValueError, match=r"cannot also reuse them \(every_n_steps 2\)"):
        RolloutSource(every_n_steps=2, max_staleness=1)
    with pytest.raises(ValueError, match="max_staleness must be >= 0"):
        RolloutSource(max_staleness=-1)


def test_a_failed_draw_is_raised_once_dropped_and_not_checkpointed():
    rollout, rows = tiny_rollout([1, 0, 0, 1, 0.5, 0])
    ahead = SamplesAhead()
    ahead.submit((0, 1), rows, lambda rows: rollout)

    def fails(rows):
        raise RuntimeError("server gone")

    ahead.submit((0, 2), rows, fails)
    with pytest.raises(RuntimeError, match="server gone"):
        ahead.settle()
    assert ahead.settle() >= 0 and (0, 2) not in ahead
    restored = SamplesAhead()
    restored.load_state_dict(ahead.state_dict())
    taken, _ = restored.take((0, 1), rows)
    assert torch.equal(taken.tokens_BT, rollout.tokens_BT)
    ahead.close()


def test_a_draw_for_other_prompts_than_its_batch_holds_is_refused():
    rollout, rows = tiny_rollout([1, 0, 0, 1, 0.5, 0])
    ahead = SamplesAhead()
    ahead.submit((0, 1), rows, lambda rows: rollout)
    ahead.submit((0, 0), rows, lambda rows: rollout)
    with pytest.raises(RuntimeError, match="batch 1 of epoch 0 answer other prompts"):
        ahead.take((0, 1), rows[::-1])
    assert (0, 0) not in ahead, "a draw for a batch the run has passed is dropped"
    ahead.close()


def test_batch_at_is_what_iteration_yields_on_every_rank():
    rows = [Row(Example([{"role": "user", "content": str(i)}], answer=str(i)), [i], None) for i in range(10)]
    for rank in (0, 1):
        now = {"epoch": 0}
        batches = Batches(rows, batch_size=2, rank=rank, world_size=2, seed=3, epoch_fn=lambda now=now: now["epoch"])
        for epoch in (0, 1):
            now["epoch"] = epoch
            seen = list(batches)
            assert [batches.batch_at(epoch, i) for i in range(len(seen))] == seen
            assert batches.batch_at(epoch, len(seen)) is None


def test_sept_draws_ahead_at_the_temperature_of_the_step_that_drew(tmp_path):
    """SePT's sampling temperature follows its schedule by step: a draw ahead takes the drawing
    step's temperature, as it takes its weights and seeds."""
    recorder = Recorder()
    module = SePT(
        model="tiny-random-llama", dtype="float32", lora=LoRA(r=4), group_size=2, start_temperature=0.4, ramp_fraction=1.0,
        engine=HFEngine(max_new_tokens=4), rollouts=RolloutSource(max_staleness=1),
    )  # fmt: skip
    _fit(module, tmp_path, callbacks=[recorder])
    assert [r.version_B.unique().tolist() for r in recorder.rollouts] == [[0], [0], [1], [2]]
    temperatures = [module.sampling_temperature(r.version_B[0].item(), 4) for r in recorder.rollouts]
    assert [r.temperature for r in recorder.rollouts] == pytest.approx(temperatures)
    assert len(set(temperatures)) == 3
