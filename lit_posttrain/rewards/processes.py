"""`ProcessScorer`: reward calls in worker processes, in parallel, a worker that hangs or dies
killed and replaced."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import time
import weakref
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from lit_posttrain.rewards import base
from lit_posttrain.rewards.base import VerifierTimeout
from lit_posttrain.rewards.guard import RewardPart, Scorer

if TYPE_CHECKING:
    from lit_posttrain.data.task import Example

log = logging.getLogger(__name__)

# Spawning Python and unpickling the reward (importing its modules) takes seconds on a loaded
# machine; that is not charged to a call's `timeout_s`, but bounded on its own.
_STARTUP_TIMEOUT_S = 120.0


def _serve(conn: Connection) -> None:
    """Worker loop. ("parts", pickled parts) -> ("ready", None) or ("fatal", why); ("score", part
    index, completion, example) -> ("ok", score), ("timeout", why) or ("error", why)."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    base.IN_SCORING_PROCESS = True  # verifiers that isolate themselves need not here (MathVerifier)
    parts: list[RewardPart] = []
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent closed the pipe or died
            return
        if message[0] == "parts":
            try:
                parts = pickle.loads(message[1])
                reply: tuple[str, Any] = ("ready", None)
            except Exception as err:
                reply = ("fatal", f"{type(err).__name__}: {err}")
        else:
            _, p, completion, example = message
            try:
                reply = ("ok", float(parts[p](completion, example)))
            except VerifierTimeout as err:
                reply = ("timeout", str(err))
            except Exception as err:
                reply = ("error", f"{type(err).__name__}: {err}")
        conn.send(reply)


def _kill(proc: BaseProcess, conn: Connection, owner_pid: int) -> None:
    if os.getpid() != owner_pid:  # a forked child inherits the finalizer; the worker is not its own
        return
    conn.close()
    proc.kill()  # not a polite request: it may be stuck in a reward, and it holds no state
    proc.join(timeout=5)


class _Worker:
    """One worker process and what it is doing: loading the reward (not `ready`), idle, or
    scoring call `job` until `deadline`."""

    def __init__(self, context: multiprocessing.context.SpawnContext, parts_blob: bytes) -> None:
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_serve, args=(child,), daemon=True, name="reward-scorer")
        self.proc.start()
        child.close()  # else the parent keeps the child's end open and never sees EOF if it dies
        self._finalizer = weakref.finalize(self, _kill, self.proc, self.conn, os.getpid())
        self.parts_blob, self.ready, self.job = parts_blob, False, None
        self.deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        self.conn.send(("parts", parts_blob))

    def kill(self) -> None:
        self._finalizer()


class ProcessScorer(Scorer):
    """Reward calls in `workers` spawned processes, as many at once.

    A call that raises scores 0 and counts as an error; one that takes longer than `timeout_s` has
    its worker killed and counts as a timeout; a worker that dies (a segfault, `os._exit`, the
    out-of-memory killer) counts as an error. Either way a fresh worker takes its place and the
    step's other calls go on. Workers start on the first call and get the reward's parts pickled
    (a reward function must be importable by its module path, as with any spawned process); a
    reward that cannot be loaded in a worker stops the run with the worker's reason. Inside a
    worker, `MathVerifier` scores in place, bounded by this scorer, instead of in a process of
    its own.
    """

    def __init__(self, timeout_s: float = 10.0, workers: int = 2) -> None:
        super().__init__(timeout_s, workers)
        self._context = multiprocessing.get_context("spawn")  # forking a process that runs torch threads is unsafe
        self._workers: list[_Worker] = []
        self._parts: list[RewardPart] | None = None
        self._parts_blob = b""

    def score(self, parts: Sequence[RewardPart], items: Sequence[tuple[str, Example]]) -> list[float]:
        if self._parts is None or list(parts) != self._parts:
            self._parts, self._parts_blob = list(parts), pickle.dumps(list(parts))
        while len(self._workers) < self.workers:
            self._workers.append(_Worker(self._context, self._parts_blob))
        for i, worker in enumerate(self._workers):
            if worker.parts_blob is not self._parts_blob:  # another task's reward (rare): start afresh
                self._replace(i)
        # Call j is part j % len(parts) of item j // len(parts), as `Scorer.score` orders them.
        jobs = deque(enumerate((p, text, example) for text, example in items for p in range(len(parts))))
        scores = [0.0] * len(jobs)
        while jobs or any(worker.job is not None for worker in self._workers):
            for worker in self._workers:
                if worker.ready and worker.job is None and jobs:
                    worker.job, call = jobs.popleft()
                    worker.deadline = time.monotonic() + self.timeout_s
                    worker.conn.send(("score", *call))
            wait_s = min(worker.deadline for worker in self._workers) - time.monotonic()
            answered = set(wait([worker.conn for worker in self._workers], timeout=max(0.0, wait_s)))
            for i, worker in enumerate(self._workers):
                if worker.conn in answered:
                    self._receive(i, worker, scores)
                elif worker.deadline <= time.monotonic():
                    self._expired(i, worker, scores)
        return scores

    def _receive(self, i: int, worker: _Worker, scores: list[float]) -> None:
        try:
            status, payload = worker.conn.recv()
        except (EOFError, OSError):
            worker.proc.join(timeout=5)
            if not worker.ready:
                self._stop_all(f"a reward scoring worker died while loading the reward (exit code {worker.proc.exitcode})")
            if worker.job is not None:
                reason = f"a reward scoring worker died in a call (exit code {worker.proc.exitcode}); replaced"
                scores[worker.job] = self._failed(reason, timeout=False)
            self._replace(i)
            return
        if status == "fatal":
            self._stop_all(f"a reward scoring worker could not load the reward: {payload}")
        if status == "ready":
            worker.ready, worker.deadline = True, float("inf")
            return
        if status == "ok":
            scores[worker.job] = payload
        else:
            scores[worker.job] = self._failed(f"a reward call {'ran out of time' if status == 'timeout' else 'raised'}: {payload}", timeout=status == "timeout")
        worker.job, worker.deadline = None, float("inf")

    def _expired(self, i: int, worker: _Worker, scores: list[float]) -> None:
        if not worker.ready:
            self._stop_all(f"a reward scoring worker did not load the reward within {_STARTUP_TIMEOUT_S:.0f} s")
        scores[worker.job] = self._failed(f"a reward call took longer than {self.timeout_s:.1f} s; its worker replaced", timeout=True)
        self._replace(i)

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = _Worker(self._context, self._parts_blob)

    def _stop_all(self, reason: str) -> None:
        self.close()
        raise RuntimeError(f"{reason}; reward functions must be importable by module path in a fresh process")

    def close(self) -> None:
        for worker in self._workers:
            worker.kill()
        self._workers = []

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_workers"], state["_context"] = [], None  # processes cannot travel; the copy starts its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._context = multiprocessing.get_context("spawn")
