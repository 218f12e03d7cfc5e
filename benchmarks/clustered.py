"""Differences over the same items measured by several seeds, tested with the item as the unit.

Why not stack the seeds' items into one McNemar test: every seed of a method starts from the same
model (the "before" half is one vector counted once per seed) and seeds of one setting flip
largely the same items, so the stacked (seed, item) pairs are not independent and the stacked test
rejects a true null far more often than its level (18-24% at 5% in the re-analysis of the study's
data; `tests/test_clustered_statistics.py` shows the same). Here each item contributes one number,
its difference averaged over the seeds, `d_N`; the seeds' agreement is then inside `d_N`, not
counted as more evidence:

- `sign_flip_test`: under no difference, each item's before and after are exchangeable, so the
  sign of each `d_i` is a fair coin; the p-value is how often random signs give a mean as far from
  zero as the observed one. With one seed and right/wrong outcomes it is the exact McNemar test.
- `item_bootstrap`: the 95% interval of the mean of `d_N`, resampling items with replacement.
- `detectable_difference`: the smallest difference the design detects with 80% power at
  two-sided 5%, from the items' own variation under the null, sqrt(mean(d_i^2) / n).
- `holm`: Holm's step-down adjustment of a family of p-values (family-wise 5%).

What this treats as fixed: the seeds that were run. It generalises over items, not over training
runs; `seed_spread` gives each seed's own difference, the run-to-run variation a reader needs
beside it. Every function takes arrays of per-item outcomes: right/wrong as 0/1, or fractions where
a checkpoint is interpolated (`crossing`, `interpolate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z_80_POWER_5_PERCENT = 1.96 + 0.84


def item_differences(after_SN, before_SN) -> np.ndarray:
    """Each item's `after - before`, averaged over seeds: `d_N`. `before_SN` may be one vector
    (`(N,)`: every seed's shared start), counted once, or one row per seed."""
    after_SN = np.atleast_2d(np.asarray(after_SN, dtype=float))
    before = np.asarray(before_SN, dtype=float)
    if before.shape[-1] != after_SN.shape[-1] or after_SN.size == 0:
        raise ValueError(f"a paired difference needs the same non-empty items, got {after_SN.shape} and {before.shape}")
    return after_SN.mean(axis=0) - np.atleast_2d(before).mean(axis=0)


def sign_flip_test(d_N, samples: int = 20_000, seed: int = 0) -> float:
    """Two-sided p-value of mean(d_N) = 0 by random sign flips of the items (Monte Carlo, with the
    observed signs counted among the draws so that p > 0)."""
    d_N = np.asarray(d_N, dtype=float)
    nonzero = d_N[d_N != 0]
    if nonzero.size == 0:
        return 1.0
    observed = abs(nonzero.sum())
    if nonzero.size <= 16:  # every sign pattern: exact
        signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * nonzero.size)).reshape(nonzero.size, -1).T
        return float(np.mean(np.abs(signs @ nonzero) >= observed - 1e-9))
    signs_SN = np.random.default_rng(seed).choice([-1.0, 1.0], size=(samples, nonzero.size))
    extreme = int(np.sum(np.abs(signs_SN @ nonzero) >= observed - 1e-9))
    return (extreme + 1) / (samples + 1)


def item_bootstrap(d_N, samples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(d_N), resampling items (each with all its seeds)."""
    d_N = np.asarray(d_N, dtype=float)
    picks_SN = np.random.default_rng(seed).integers(0, d_N.size, size=(samples, d_N.size))
    means_S = d_N[picks_SN].mean(axis=1)
    return float(np.quantile(means_S, 0.025)), float(np.quantile(means_S, 0.975))


def detectable_difference(d_N) -> float:
    """The smallest mean difference detected with 80% power at two-sided 5%, given the items' own
    spread: under the null mean(d_N) has variance mean(d_i^2) / n (each sign a fair coin)."""
    d_N = np.asarray(d_N, dtype=float)
    return Z_80_POWER_5_PERCENT * math.sqrt(float(np.mean(d_N**2)) / d_N.size)


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the given order: the k-th smallest is multiplied by (m - k + 1),
    made monotone, capped at 1. Reject where the adjusted p <= 0.05 (family-wise 5%)."""
    m = len(p_values)
    order = sorted(range(m), key=p_values.__getitem__)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def seed_spread(after_SN, before_SN) -> list[float]:
    """Each seed's own mean difference (a shared `before` vector used for every seed)."""
    after_SN = np.atleast_2d(np.asarray(after_SN, dtype=float))
    before_SN = np.broadcast_to(np.atleast_2d(np.asarray(before_SN, dtype=float)), after_SN.shape)
    return [float(x) for x in (after_SN - before_SN).mean(axis=1)]


@dataclass(frozen=True)
class ClusteredDifference:
    """`after - before` over the same items and seeds, with the item as the unit."""

    items: int
    seeds: int
    difference: float  # mean over seeds and items
    low: float  # 95% item-bootstrap interval
    high: float
    p_value: float  # sign-flip test over items
    detectable: float  # 80% power at 5%, from these items' spread
    per_seed: tuple[float, ...]

    def cell(self, decimals: int = 3) -> str:
        return f"{self.difference:+.{decimals}f} [{self.low:+.{decimals}f}, {self.high:+.{decimals}f}]"


def clustered_difference(after_SN, before_SN, samples: int = 10_000, seed: int = 0) -> ClusteredDifference:
    d_N = item_differences(after_SN, before_SN)
    low, high = item_bootstrap(d_N, samples, seed)
    seeds = np.atleast_2d(np.asarray(after_SN)).shape[0]
    return ClusteredDifference(
        items=d_N.size, seeds=seeds, difference=float(d_N.mean()), low=low, high=high,
        p_value=sign_flip_test(d_N, 2 * samples, seed), detectable=detectable_difference(d_N),
        per_seed=tuple(seed_spread(after_SN, before_SN)),
    )  # fmt: skip


def crossing(target: float, accuracy_K: list[float]) -> float | None:
    """Where a run's task accuracy first reaches `target`, as a fractional checkpoint index
    (1.25: a quarter of the way from checkpoint 1 to 2, by linear interpolation of the accuracy);
    None when it never does."""
    for k, accuracy in enumerate(accuracy_K):
        if accuracy >= target:
            return float(k) if k == 0 else k - 1 + (target - accuracy_K[k - 1]) / (accuracy - accuracy_K[k - 1])
    return None


def interpolate(x: float, values_K) -> np.ndarray:
    """`values_K` (per checkpoint: a number or a vector of per-item outcomes) at fractional index `x`."""
    values_K = np.asarray(values_K, dtype=float)
    k = min(int(x), len(values_K) - 1)
    w = x - k
    return values_K[k] if w == 0 else (1 - w) * values_K[k] + w * values_K[k + 1]
