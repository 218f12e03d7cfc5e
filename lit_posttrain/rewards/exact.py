"""String and number verifiers: cheap, deterministic, and strict unless asked otherwise.

Strict defaults matter for RL: a lenient verifier that also accepts "12." or "The answer is 12"
teaches the policy whatever slack it allows, and the reward stops meaning what the task says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

# A bare number as the whole completion in strict mode: no sign other than '-', no thousands
# separators, no trailing '.', no exponent.
_STRICT_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

# A number inside free text. The lookbehinds keep a match from starting inside another number
# ("1,2345" is not read as "1,234" then "5") and keep the hyphen in "3-5" from becoming a sign.
_NUMBER_IN_TEXT = re.compile(r"(?:(?<![\w.])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?")

_ANSWER_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _to_decimal(text: str) -> Decimal:
    # Decimal rather than float so that integers beyond 2**53 still compare exactly.
    return Decimal(text.replace(",", ""))


def _parse_answer_number(answer: str) -> Decimal:
    """Parse a gold answer such as "72", "-3.5" or "1,000"; raise ValueError naming it otherwise."""
    text = answer.strip()
    if not _ANSWER_NUMBER.fullmatch(text):
        raise ValueError(f"answer {answer!r} is not a number (expected e.g. '72', '-3.5' or '1,000')")
    return _to_decimal(text)


@dataclass(frozen=True)
class ExactMatch:
    """Reward 1.0 iff the completion equals the answer as a string, else 0.0.

    With the defaults nothing is normalised: for answer "12", the completions "12.", " 12",
    "12\\n" and "012" all score 0.0. Use `NumericMatch` to compare numbers by value.

    Args:
        strip: Strip leading and trailing whitespace from completion and answer before comparing.
        case_sensitive: Compare case-sensitively; when False both sides are case-folded first.
    """

    strip: bool = False
    case_sensitive: bool = True

    def __call__(self, completion: str, answer: str) -> float:
        if self.strip:
            completion, answer = completion.strip(), answer.strip()
        if not self.case_sensitive:
            completion, answer = completion.casefold(), answer.casefold()
        return 1.0 if completion == answer else 0.0


@dataclass(frozen=True)
class NumericMatch:
    """Reward 1.0 iff the number in the completion equals the numeric answer, else 0.0.

    In "strict" mode the whole completion must be a plain number such as "12", "-3.5" or "012"
    (leading zeros are allowed: the value is what counts), with no surrounding whitespace, no
    thousands separators, no trailing '.', no '+' and no exponent. In "last" mode the last number
    in the text is taken, and commas are read as thousands separators: "The answer is 1,234." gives
    1234. The answer is parsed the same lenient way ("72", "-3.5", "1,000", surrounding whitespace
    ignored); an answer that is not a number raises ValueError.

    Args:
        extract: "strict": the completion must be exactly a number; "last": use the last number in the completion.
        tolerance: Largest absolute difference between the two numbers that still counts as equal.
    """

    extract: Literal["strict", "last"] = "strict"
    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if self.extract not in ("strict", "last"):
            raise ValueError(f"extract must be 'strict' or 'last', got {self.extract!r}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    def __call__(self, completion: str, answer: str) -> float:
        # Parse the answer first so that a bad gold answer fails loudly whatever the completion.
        gold = _parse_answer_number(answer)
        if self.extract == "strict":
            if not _STRICT_NUMBER.fullmatch(completion):
                return 0.0
            predicted = completion
        else:
            matches = _NUMBER_IN_TEXT.findall(completion)
            if not matches:
                return 0.0
            predicted = matches[-1]
        return 1.0 if abs(_to_decimal(predicted) - gold) <= Decimal(str(self.tolerance)) else 0.0


@dataclass(frozen=True)
class RegexMatch:
    """Reward 1.0 iff the completion matches a regular expression: a format reward, independent of
    the answer (e.g. `^\\d+$`: the reply is only digits).

    Args:
        pattern: the regular expression (Python `re` syntax).
        whole: the whole completion must match (True), or only its start (False).
    """

    pattern: str
    whole: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_compiled", re.compile(self.pattern))
        except re.error as err:
            raise ValueError(f"RegexMatch pattern {self.pattern!r} is not a valid regular expression: {err}") from None

    def __call__(self, completion: str, answer: str) -> float:
        match = self._compiled.fullmatch if self.whole else self._compiled.match
        return 1.0 if match(completion) else 0.0
