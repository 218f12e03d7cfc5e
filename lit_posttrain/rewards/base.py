"""The verifier protocol: a callable from (completion, answer) to a reward in [0, 1]."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Verifier(Protocol):
    def __call__(self, completion: str, answer: str) -> float: ...
