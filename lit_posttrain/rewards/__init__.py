"""Verifiers: callables from (completion, answer) to a reward in [0, 1].

Importing this package stays cheap: `MathVerifier` imports math_verify (and sympy) only inside its
worker subprocess.
"""

from lit_posttrain.rewards.base import Verifier, VerifierTimeout
from lit_posttrain.rewards.code import CodeOutputMatch
from lit_posttrain.rewards.exact import ExactMatch, NumericMatch, RegexMatch
from lit_posttrain.rewards.guard import Scorer, ThreadScorer
from lit_posttrain.rewards.math import MathVerifier
from lit_posttrain.rewards.processes import ProcessScorer

__all__ = [
    "CodeOutputMatch", "ExactMatch", "MathVerifier", "NumericMatch", "ProcessScorer", "RegexMatch", "Scorer",
    "ThreadScorer", "Verifier", "VerifierTimeout",
]  # fmt: skip
