"""Rewards as the ecosystem writes them, each named and weighted, combined by a task's `rewards:`
list into the training reward (the weighted sum, as TRL's `reward_funcs` and `reward_weights`):

- `Verified(verifier)`: a library verifier, `(completion, answer) -> float`.
- `TRLReward(function)`: a TRL reward function, called as TRL calls it for one completion:
  `function(prompts=[...], completions=[...], answer=[...], <each other column>=[...])`, lists of
  one, returning a list of one score (None: no score, counted as 0).
- `VerlScore(function)`: a verl `compute_score(data_source, solution_str, ground_truth,
  extra_info)`, returning a float or a dict with a "score".

A function is named by its import path, `package.module.function` or `package.module:function`,
and imported when the run is configured, so a wrong path stops the run before any model loads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lit_posttrain.rewards.base import Verifier

if TYPE_CHECKING:  # the data package imports this module (FileTask's `rewards:`)
    from lit_posttrain.data.task import Example


def import_function(path: str) -> Callable:
    """The callable at `path` ("pkg.module.fn" or "pkg.module:fn"), or a ValueError saying what failed."""
    module_name, sep, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not sep or not module_name or not attribute:
        raise ValueError(f"reward function {path!r}: expected an import path, package.module.function or package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"reward function {path!r}: cannot import module {module_name!r}: {err}") from err
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"reward function {path!r}: module {module_name!r} has no callable {attribute!r}")
    return function


class Reward:
    """One part of the training reward: `weight` times the score of a completion of `example`.

    Args:
        weight: its factor in the sum.
        name: what its mean is logged as (`train/rewards/<name>`); by default the function's or verifier's name.
    """

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        self.weight = weight
        self.name = name or self.default_name()

    def default_name(self) -> str:
        return type(self).__name__

    def __call__(self, completion: str, example: Example) -> float:
        raise NotImplementedError


class Verified(Reward):
    """A library verifier, `(completion, answer) -> float`, as a reward part.

    Args:
        verifier: the verifier (ExactMatch, NumericMatch, MathVerifier, ...).
    """

    def __init__(self, verifier: Verifier, weight: float = 1.0, name: str | None = None) -> None:
        self.verifier = verifier
        super().__init__(weight, name)

    def default_name(self) -> str:
        return type(self.verifier).__name__

    def __call__(self, completion: str, example: Example) -> float:
        return float(self.verifier(completion, example.answer))


class _ImportedReward(Reward):
    """A reward part calling a user's function, imported by path when the part is made and named
    after it by default."""

    def __init__(self, function: str, weight: float = 1.0, name: str | None = None) -> None:
        self.function_path, self.function = function, import_function(function)
        super().__init__(weight, name)

    def default_name(self) -> str:
        return self.function_path.replace(":", ".").rpartition(".")[2]


class TRLReward(_ImportedReward):
    """A TRL reward function (see the module docstring).

    Args:
        function: its import path, package.module.function or package.module:function.
        conversational: pass the prompt as turns and the completion as one assistant turn, as TRL does for conversational data; false: both as text (the prompt's last user turn).
    """

    def __init__(self, function: str, weight: float = 1.0, name: str | None = None, conversational: bool = True) -> None:
        super().__init__(function, weight, name)
        self.conversational = conversational

    def __call__(self, completion: str, example: Example) -> float:
        if self.conversational:
            prompt: Any = example.messages
            completion_arg: Any = [{"role": "assistant", "content": completion}]
        else:
            prompt, completion_arg = example.messages[-1]["content"], completion
        columns = {key: [value] for key, value in {**example.metadata, "answer": example.answer}.items()}
        (score,) = self.function(prompts=[prompt], completions=[completion_arg], **columns)
        return 0.0 if score is None else float(score)


class VerlScore(_ImportedReward):
    """A verl `compute_score` (see the module docstring); `data_source` and `extra_info` come from
    the row (verl's layout keeps them), `ground_truth` is its answer.

    Args:
        function: its import path, package.module.function or package.module:function.
    """

    def __call__(self, completion: str, example: Example) -> float:
        result = self.function(
            data_source=example.metadata.get("data_source"), solution_str=completion,
            ground_truth=example.answer, extra_info=example.metadata.get("extra_info"),
        )  # fmt: skip
        return float(result["score"] if isinstance(result, dict) else result)
