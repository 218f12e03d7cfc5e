"""Scoring that a failing reward cannot take down: a call that raises or runs out of time scores 0,
is counted, and the run goes on. Two scorers, chosen by a module's `scorer:`:

- `ThreadScorer` (the default): reward calls in worker threads of the trainer's process. Cheap to
  start, right for verifiers that take microseconds (exact and numeric match) or isolate their own
  work in a process (`MathVerifier`, `CodeOutputMatch`).
- `ProcessScorer` (`lit_posttrain.rewards.processes`): reward calls in worker processes, scored in
  parallel on several cores, a worker that hangs or dies killed and replaced. Right for
  CPU-bound rewards (math-verify over many completions) and for user functions that may spin or
  crash the interpreter.
"""

from __future__ import annotations

import concurrent.futures as futures
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lit_posttrain.rewards.base import VerifierTimeout

if TYPE_CHECKING:
    from lit_posttrain.data.task import Example

log = logging.getLogger(__name__)

# One part of a training reward: `part(completion, example) -> float` (rewards/functions.py).
RewardPart = Callable[[str, "Example"], float]


@dataclass
class ScoreFailures:
    errors: int = 0
    timeouts: int = 0


class Scorer:
    """Scores every completion under every part of a reward, bounded in time; what failed is
    counted in `failures` (logged by the on-policy methods as `train/verifier_errors` and
    `train/verifier_timeouts`) and scores 0.

    Args:
        timeout_s: seconds one reward call may take before it scores 0 and counts as a timeout.
        workers: calls scored at once (threads or processes).
    """

    def __init__(self, timeout_s: float = 10.0, workers: int = 4) -> None:
        if timeout_s <= 0:
            raise ValueError(f"reward timeout must be > 0 seconds, got timeout_s={timeout_s}")
        if workers < 1:
            raise ValueError(f"reward scoring needs at least one worker, got workers={workers}")
        self.timeout_s, self.workers = timeout_s, workers
        self.failures = ScoreFailures()

    def score(self, parts: Sequence[RewardPart], items: Sequence[tuple[str, Example]]) -> list[float]:
        """The score of each (completion, example) of `items` under each part, item-major:
        `scores[i * len(parts) + p]`."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the workers; the next `score` starts fresh ones."""

    def _failed(self, reason: str, *, timeout: bool) -> float:
        if timeout:
            self.failures.timeouts += 1
        else:
            self.failures.errors += 1
        log.warning("%s; scored 0", reason)
        return 0.0


class ThreadScorer(Scorer):
    """Reward calls in `workers` threads, each bounded by `timeout_s`.

    Python cannot stop a thread: a call that never returns keeps its worker, so the pool is
    replaced when one times out and the stuck thread is abandoned. A reward that can spin on the
    CPU forever belongs in a `ProcessScorer` or should isolate itself, as `MathVerifier` and code
    execution do; this guard keeps the run alive either way.
    """

    def __init__(self, timeout_s: float = 10.0, workers: int = 4) -> None:
        super().__init__(timeout_s, workers)
        self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="verifier")

    def score(self, parts: Sequence[RewardPart], items: Sequence[tuple[str, Example]]) -> list[float]:
        return self([functools.partial(part, text, example) for text, example in items for part in parts])

    def __call__(self, calls: Sequence[Callable[[], Any]]) -> list[float]:
        pending = [self._pool.submit(call) for call in calls]
        rewards = []
        for future in pending:
            # VerifierTimeout first: it subclasses TimeoutError, which on Python 3.11+ is also
            # `futures.TimeoutError`, so the pool's own timeout branch would catch it and replace
            # the pool though no worker is stuck.
            try:
                rewards.append(float(future.result(timeout=self.timeout_s)))
            except VerifierTimeout as err:  # a verifier that bounds its own time (MathVerifier)
                rewards.append(self._failed(str(err), timeout=True))
            except futures.TimeoutError:
                rewards.append(self._failed(f"a reward call took longer than {self.timeout_s:.1f} s", timeout=True))
                self._replace_pool()
            except Exception as err:  # a reward's bug must not end the run
                rewards.append(self._failed(f"a reward call raised {type(err).__name__}: {err}", timeout=False))
        return rewards

    def _replace_pool(self) -> None:
        # The stuck worker cannot be interrupted; later calls get fresh workers.
        self._pool.shutdown(wait=False, cancel_futures=False)
        self._pool = futures.ThreadPoolExecutor(self.workers, thread_name_prefix="verifier")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_pool"]  # threads cannot travel; the copy starts its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool = futures.ThreadPoolExecutor(self.workers, thread_name_prefix="verifier")
