"""A failing verifier or a non-finite step must not take a run down silently or corrupt it."""

import math
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from lit_posttrain.callbacks import NonFiniteGuard
from lit_posttrain.data import Arithmetic, TaskDataModule
from lit_posttrain.methods.grpo import GRPO
from lit_posttrain.rewards import VerifierTimeout
from lit_posttrain.rewards.guard import ThreadScorer
from lit_posttrain.rollout import HFEngine


def test_guarded_scorer_counts_errors_and_bounds_hangs():
    scorer = ThreadScorer(timeout_s=0.2, workers=2)

    def boom() -> float:
        raise ZeroDivisionError("verifier bug")

    start = time.perf_counter()
    rewards = scorer([lambda: 1.0, boom, lambda: time.sleep(3) or 1.0, lambda: 0.5])
    assert rewards == [1.0, 0.0, 0.0, 0.5]
    assert (scorer.failures.errors, scorer.failures.timeouts) == (1, 1)
    assert time.perf_counter() - start < 2.0, "a hung verifier must not hold the step"
    assert scorer([lambda: 1.0] * 3) == [1.0] * 3  # fresh workers after the hang


def test_a_verifiers_own_timeout_is_its_own_branch_and_keeps_the_pool():
    """`VerifierTimeout` subclasses TimeoutError, which is `futures.TimeoutError` on Python 3.11+:
    caught by the pool's timeout branch it was logged as a hang and the pool thrown away, though
    no worker was stuck."""
    scorer = ThreadScorer(timeout_s=5.0, workers=2)
    pool = scorer._pool

    def bounded() -> float:
        raise VerifierTimeout("the verifier's own 0.5 s bound")

    assert scorer([bounded, lambda: 1.0]) == [0.0, 1.0]
    assert (scorer.failures.errors, scorer.failures.timeouts) == (0, 1)
    assert scorer._pool is pool, "no worker was stuck: the pool must be kept"


class FlakyVerifier:
    """Raises on every other call, scores 1 for a leading digit otherwise."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, completion: str, answer: str) -> float:
        self.calls += 1
        if self.calls % 2:
            raise ValueError("flaky")
        return float(completion[:1].isdigit())


class NaNVerifier:
    def __call__(self, completion: str, answer: str) -> float:
        return math.nan


def _fit(verifier, steps: int, tmp_path: Path, module: GRPO | None = None) -> GRPO:
    module = module or GRPO(model="tiny-random-llama", dtype="float32", engine=HFEngine(max_new_tokens=4))
    data = TaskDataModule(Arithmetic(num_train=16, num_eval=4, shots=0, verifier=verifier), batch_size=4)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path), log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, data)
    return module


def test_a_raising_verifier_scores_zero_and_the_run_goes_on(tmp_path):
    module = _fit(FlakyVerifier(), steps=3, tmp_path=tmp_path)
    assert module.trainer.global_step == 3
    assert module.sampler.scorer.failures.errors == 3 * 4 * 8 // 2
    metrics = (Path(module.trainer.log_dir) / "metrics.csv").read_text()
    assert "train/verifier_errors" in metrics


def test_non_finite_steps_are_skipped_then_the_run_stops_naming_the_step(tmp_path, tiny_model_dir):
    module = GRPO(model="tiny-random-llama", dtype="float32", engine=HFEngine(max_new_tokens=4))
    with pytest.raises(RuntimeError, match=r"5 optimizer steps in a row, up to step 4, had a non-finite"):
        _fit(NaNVerifier(), steps=10, tmp_path=tmp_path, module=module)
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = {name.removeprefix("policy."): p for name, p in module.state_dict().items()}
    assert all(torch.equal(before[name], after[name]) for name in before), "skipped steps leave the weights alone"


def test_guard_skips_only_the_bad_step():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    guard = NonFiniteGuard(max_in_row=2)

    class Stub:
        global_step = 7

        class strategy:  # one process: the decision is this rank's own
            @staticmethod
            def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:
                return decision

        def log(self, *args, **kwargs) -> None:
            pass

    start = [p.detach().clone() for p in layer.parameters()]
    layer(torch.tensor([[math.inf, 1.0]])).sum().backward()
    guard.on_before_optimizer_step(Stub(), Stub(), optimizer)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(start, layer.parameters(), strict=True))
    assert (guard.skipped, guard.in_row) == (1, 1)
    optimizer.zero_grad()
    layer(torch.tensor([[1.0, 1.0]])).sum().backward()
    guard.on_before_optimizer_step(Stub(), Stub(), optimizer)
    optimizer.step()
    assert not torch.equal(start[0], layer.weight) and guard.in_row == 0

    # Another rank's gradient was not finite: this rank skips too, so the ranks' weights stay equal.
    class OtherRankFailed(Stub):
        class strategy:
            @staticmethod
            def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:
                assert decision and all
                return False

    optimizer.zero_grad()
    layer(torch.tensor([[1.0, 1.0]])).sum().backward()
    guard.on_before_optimizer_step(OtherRankFailed(), OtherRankFailed(), optimizer)
    assert all(p.grad is None for p in layer.parameters()) and guard.in_row == 1
