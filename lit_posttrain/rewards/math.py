"""`MathVerifier`: symbolic answer checking with math-verify, bounded in time from any thread."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from lit_posttrain.rewards import base
from lit_posttrain.rewards.base import VerifierTimeout

ScoreFn = Callable[[str, str], float]

# Spawning Python and importing sympy takes seconds on a loaded machine; that must not be charged
# to the first sample's `timeout_s`, so startup gets a bound of its own.
_STARTUP_TIMEOUT_S = 120.0
_READY = "ready"


def _gold_latex(answer: str) -> str:
    # math_verify only extracts LaTeX from inside delimiters; a bare "72" or "\frac{1}{2}" gold
    # answer parses reliably once boxed, and one that already has delimiters is left alone.
    if "\\boxed" in answer or "$" in answer:
        return answer
    return f"$\\boxed{{{answer}}}$"


def _math_verify_score(completion: str, answer: str) -> float:
    from math_verify import parse, verify

    # Timeouts disabled (None): they use SIGALRM; the parent bounds time by killing this process.
    gold = parse(_gold_latex(answer), parsing_timeout=None)
    if not gold:
        raise ValueError(f"math_verify could not parse the answer {answer!r}")
    predicted = parse(completion, parsing_timeout=None)
    return 1.0 if verify(gold, predicted, timeout_seconds=None) else 0.0


def _serve(conn: Connection, score_fn: ScoreFn) -> None:
    """Worker loop: answer (completion, answer) requests with ("ok", reward) or ("error", message)."""
    # The only warnings math_verify logs are about its disabled timeouts, which we replace.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        # Pay for imports and lazily built parsers now, under the startup bound.
        score_fn("1", "1")
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(_READY)
    while True:
        try:
            completion, answer = conn.recv()
        except EOFError:  # the parent closed the pipe or died
            return
        try:
            reply: tuple[str, Any] = ("ok", float(score_fn(completion, answer)))
        except Exception as e:
            reply = ("error", f"{type(e).__name__}: {e}")
        conn.send(reply)


def _stop_worker(proc: BaseProcess, conn: Connection, owner_pid: int) -> None:
    # A forked child inherits this finalizer; the worker is not its to stop.
    if os.getpid() != owner_pid:
        return
    conn.close()
    # kill, not a polite request: the worker may be stuck inside sympy and it holds no state.
    proc.kill()
    proc.join(timeout=5)


class MathVerifier:
    """Reward 1.0 iff math-verify judges the completion's final answer equal to the gold answer.

    The gold answer may be a plain number or LaTeX ("72", "-3.5", "\\frac{1}{2}") or already contain
    `\\boxed{...}` or `$...$`; the completion's answer is extracted by math-verify, preferring a
    `\\boxed{...}`, so "The answer is $\\boxed{0.5}$" matches gold "\\frac{1}{2}".

    Scoring runs in a persistent worker subprocess, one request at a time, for two reasons:
    math-verify's own timeouts use SIGALRM, which only works in the main thread (the trainer may
    score from worker threads), and a sympy call that hangs cannot be interrupted from another
    thread at all, only by killing the process that runs it. A request that takes longer than
    `timeout_s` raises `VerifierTimeout` and the worker is killed; a fresh one starts on the next
    call. A worker that dies, or a score that raises (e.g. an unparseable gold answer), raises
    `RuntimeError`. In training both score 0.0 and are counted, as `train/verifier_timeouts` and
    `train/verifier_errors` (`rewards.guard`). Calls from several threads are serialised. Inside a
    `ProcessScorer` worker, which is itself a bounded process, it scores in place.

    The worker is started with the 'spawn' method (forking a process that runs torch threads is
    unsafe), so, as with any spawn-based multiprocessing, a script that calls the verifier must
    keep its entry point under `if __name__ == "__main__":`. Daemonic processes (multiprocessing
    Pool and DataLoader workers) may not start children, so score in the trainer process instead.

    Args:
        timeout_s: Seconds one completion may take to parse and verify before it scores 0.0.
    """

    def __init__(self, timeout_s: float = 5.0, _score_fn: ScoreFn = _math_verify_score) -> None:
        # `_score_fn` lets tests substitute a worker function that hangs or crashes on demand; it
        # must be picklable (a module-level function) because the worker is spawned.
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._score_fn = _score_fn
        self._reset_worker_state()

    def _reset_worker_state(self) -> None:
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._finalizer: weakref.finalize | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A live process, pipe and lock cannot travel; the copy starts its own worker when used.
        state = self.__dict__.copy()
        for key in ("_lock", "_owner_pid", "_proc", "_conn", "_finalizer"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_worker_state()

    def __call__(self, completion: str, answer: str) -> float:
        if base.IN_SCORING_PROCESS:
            logging.getLogger("math_verify").setLevel(logging.ERROR)  # only its disabled-timeout warnings
            return float(self._score_fn(completion, answer))
        if self._owner_pid != os.getpid():
            # Inherited through fork (e.g. by a DataLoader worker): the pipe leads to the parent's
            # worker, and the lock may have been copied while held.
            if self._finalizer is not None:
                self._finalizer.detach()
            self._reset_worker_state()
        with self._lock:
            conn = self._conn if self._conn is not None else self._start_worker()
            try:
                conn.send((completion, answer))
                answered = conn.poll(self.timeout_s)
                status, payload = conn.recv() if answered else (None, None)
            except (EOFError, OSError):
                self._stop()
                raise RuntimeError("math verification failed: its worker process died") from None
            if not answered:
                self._stop()  # the next call starts a fresh worker
                raise VerifierTimeout(f"math verification took longer than {self.timeout_s}s")
            if status != "ok":
                raise RuntimeError(f"math verification failed: {payload}")
            return payload

    def close(self) -> None:
        """Stop the worker now rather than at garbage collection or interpreter exit."""
        with self._lock:
            self._stop()

    def _start_worker(self) -> Connection:
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child_conn, self._score_fn), daemon=True, name="MathVerifier")
        proc.start()
        # Without this the parent keeps the child's end open and would never see EOF if it dies.
        child_conn.close()
        self._proc, self._conn = proc, parent_conn
        self._finalizer = weakref.finalize(self, _stop_worker, proc, parent_conn, self._owner_pid)
        try:
            ready = parent_conn.poll(_STARTUP_TIMEOUT_S)
            message = parent_conn.recv() if ready else None
        except (EOFError, OSError):
            self._stop()
            raise RuntimeError("math verification failed: its worker process died while starting") from None
        if message is None:
            self._stop()
            raise VerifierTimeout(f"the math verification worker did not start within {_STARTUP_TIMEOUT_S}s")
        if message != _READY:
            self._stop()
            # Retrying cannot fix a worker that fails on a trivial input (e.g. math_verify missing);
            # scoring every sample 0.0 would hide it, so this one is raised.
            raise RuntimeError(f"MathVerifier worker failed to start: {message[1]}")
        return parent_conn

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs _stop_worker once and unregisters it from interpreter exit
        self._proc = self._conn = self._finalizer = None
