"""Paired statistics over items: two checkpoints (or two models) scored on the same items, right or
wrong. The forgetting study's tests; pure functions of lists of booleans."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """`after - before` accuracy over the same items, with its evidence."""

    n: int  # items
    difference: float  # accuracy after - accuracy before
    right_to_wrong: int  # items right before and wrong after
    wrong_to_right: int
    low: float  # 95% paired-bootstrap confidence interval of the difference
    high: float
    p_value: float  # exact McNemar test (two-sided) on the discordant items

    def cell(self, decimals: int = 3) -> str:
        return f"{self.difference:+.{decimals}f} [{self.low:+.{decimals}f}, {self.high:+.{decimals}f}]"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under no change, each of the `b + c` discordant items is
    equally likely to have flipped either way, so min(b, c) is Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(before: list[bool], after: list[bool], samples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `mean(after) - mean(before)`, resampling items with replacement
    (each item keeps its pair: the before/after correlation is what makes the interval narrow)."""
    diffs_N = np.asarray(after, dtype=np.int8) - np.asarray(before, dtype=np.int8)
    picks_SN = np.random.default_rng(seed).integers(0, len(diffs_N), size=(samples, len(diffs_N)))
    means_S = diffs_N[picks_SN].mean(axis=1)
    return float(np.quantile(means_S, 0.025)), float(np.quantile(means_S, 0.975))


def paired_difference(before: list[bool], after: list[bool], samples: int = 10_000, seed: int = 0) -> PairedDifference:
    if len(before) != len(after) or not before:
        raise ValueError(f"a paired test needs the same non-empty items before and after, got {len(before)} and {len(after)}")
    b = sum(1 for x, y in zip(before, after, strict=True) if x and not y)
    c = sum(1 for x, y in zip(before, after, strict=True) if y and not x)
    low, high = paired_bootstrap(before, after, samples, seed)
    return PairedDifference(len(before), (c - b) / len(before), b, c, low, high, mcnemar_exact(b, c))


def minimum_detectable_difference(n: int, discordant: float) -> float:
    """The smallest accuracy difference a paired test over `n` items detects with 80% power at
    two-sided 5%, when a fraction `discordant` of the items flips either way: the difference's
    standard error under the null is sqrt(discordant / n), times z_0.975 + z_0.8 = 1.96 + 0.84."""
    return (1.96 + 0.84) * math.sqrt(discordant / n)
