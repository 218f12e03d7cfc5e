"""The verifier protocol: a callable from (completion, answer) to a reward in [0, 1]. A verifier
that cannot score raises; training scores that completion 0 and counts it (`rewards.guard`)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Verifier(Protocol):
    def __call__(self, completion: str, answer: str) -> float: ...


class VerifierTimeout(TimeoutError):
    """A verifier that bounds its own time (`MathVerifier`) ran out of it: counted as a timeout."""


# True inside a `ProcessScorer` worker: the process is already isolated and bounded in time by the
# scorer, so a verifier that would start a process of its own (`MathVerifier`) scores in place.
IN_SCORING_PROCESS = False
