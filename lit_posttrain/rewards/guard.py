"""Scoring that a failing verifier cannot take down: an exception or a timeout scores 0, is
counted, and the run goes on."""

from __future__ import annotations

import concurrent.futures as futures
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lit_posttrain.rewards.base import VerifierTimeout

log = logging.getLogger(__name__)


@dataclass
class ScoreFailures:
    errors: int = 0
    timeouts: int = 0


class GuardedScorer:
    """Run reward calls in worker threads, each bounded by `timeout_s`.

    A call that raises or does not return in time scores 0.0 and is counted in `failures` (a
    verifier's own `VerifierTimeout` as a timeout): the one count of both, logged by the on-policy
    methods as `train/verifier_errors` and `train/verifier_timeouts`. Python
    cannot stop a thread: a call that never returns keeps its worker, so the pool is replaced when
    one times out and the stuck thread is abandoned. A verifier that can spin on the CPU forever
    should isolate itself in a process, as `MathVerifier` and code execution do; this guard keeps
    the run alive either way.
    """

    def __init__(self, timeout_s: float = 10.0, workers: int = 4) -> None:
        if timeout_s <= 0:
            raise ValueError(f"verifier timeout must be > 0 seconds, got {timeout_s}")
        self.timeout_s, self.workers = timeout_s, workers
        self.failures = ScoreFailures()
        self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="verifier")

    def __call__(self, calls: Sequence[Callable[[], float]]) -> list[float]:
        pending = [self._pool.submit(call) for call in calls]
        rewards = []
        for future in pending:
            # VerifierTimeout first: it subclasses TimeoutError, which on Python 3.11+ is also
            # `futures.TimeoutError`, so the pool's own timeout branch would catch it and replace
            # the pool though no worker is stuck.
            try:
                rewards.append(float(future.result(timeout=self.timeout_s)))
            except VerifierTimeout as err:  # a verifier that bounds its own time (MathVerifier)
                self.failures.timeouts += 1
                rewards.append(0.0)
                log.warning("%s: scored 0", err)
            except futures.TimeoutError:
                self.failures.timeouts += 1
                rewards.append(0.0)
                log.warning("a verifier call took longer than %.1f s: scored 0", self.timeout_s)
                self._replace_pool()
            except Exception as err:  # a verifier's bug must not end the run
                self.failures.errors += 1
                rewards.append(0.0)
                log.warning("a verifier call raised %s: %s; scored 0", type(err).__name__, err)
        return rewards

    def _replace_pool(self) -> None:
        # The stuck worker cannot be interrupted; later calls get fresh workers.
        self._pool.shutdown(wait=False, cancel_futures=False)
        self._pool = futures.ThreadPoolExecutor(self.workers, thread_name_prefix="verifier")
