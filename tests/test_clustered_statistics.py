"""The forgetting study's item-clustered tests (benchmarks/clustered.py): hand-computed values,
the identities with the one-seed McNemar test, and a simulated null where stacking seeds' items
rejects too often and the clustered test does not."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from clustered import (  # noqa: E402
    clustered_difference,
    crossing,
    detectable_difference,
    holm,
    interpolate,
    item_bootstrap,
    item_differences,
    sign_flip_test,
)
from paired import mcnemar_exact, minimum_detectable_difference  # noqa: E402


@pytest.mark.parametrize(("b", "c"), [(0, 0), (5, 0), (1, 9), (9, 1), (3, 3), (2, 7), (8, 8)])
def test_one_seeds_sign_flip_test_is_the_exact_mcnemar_test(b, c):
    before = [1] * b + [0] * c + [1] * 20 + [0] * 30  # b right-to-wrong, c wrong-to-right, 50 unchanged
    after = [0] * b + [1] * c + [1] * 20 + [0] * 30
    assert sign_flip_test(item_differences([after], before)) == pytest.approx(mcnemar_exact(b, c))


def test_with_many_flips_the_monte_carlo_p_value_is_mcnemars():
    b, c = 30, 12
    d = [-1.0] * b + [1.0] * c + [0.0] * 286
    assert sign_flip_test(d, samples=200_000) == pytest.approx(mcnemar_exact(b, c), abs=0.003)


def test_a_shared_start_counts_once_and_repeated_seeds_add_no_evidence():
    rng = np.random.default_rng(1)
    start = rng.random(328) < 0.47
    after = np.where(rng.random(328) < 0.1, ~start, start)
    one, three = clustered_difference([after], start), clustered_difference([after, after, after], start)
    assert (one.difference, one.p_value, one.low, one.high) == (three.difference, three.p_value, three.low, three.high)
    # Stacked, the same seed three times looks like three times the evidence.
    b, c = int(np.sum(start & ~after)), int(np.sum(~start & after))
    assert mcnemar_exact(3 * b, 3 * c) < mcnemar_exact(b, c)
    # A start given per seed is the same start as one given once.
    assert np.array_equal(item_differences([after] * 3, start), item_differences([after] * 3, [start] * 3))


def test_under_a_true_null_with_seeds_that_flip_the_same_items_only_the_clustered_test_holds_its_level():
    """Seeds of one setting flip largely the same items (the study's flip counts were 30/29/29):
    fragile items flip in most seeds, each as likely to gain as to lose, so there is no change.
    Stacking the seeds' (seed, item) pairs counts each fragile item ~2.4 times."""
    rng = np.random.default_rng(0)
    trials, items, seeds = 400, 328, 3
    clustered_rejects = stacked_rejects = 0
    for _ in range(trials):
        start = rng.random(items) < 0.5
        fragile = rng.random(items) < 0.12
        after_SN = np.where(fragile & (rng.random((seeds, items)) < 0.8), ~start, start)
        clustered_rejects += sign_flip_test(item_differences(after_SN, start), samples=2_000, seed=int(rng.integers(1 << 30))) <= 0.05
        b, c = int(np.sum(start & ~after_SN)), int(np.sum(~start & after_SN))
        stacked_rejects += mcnemar_exact(b, c) <= 0.05
    assert 0.02 <= clustered_rejects / trials <= 0.085
    assert stacked_rejects / trials >= 0.15


def test_bootstrap_interval_and_detectable_difference():
    d = [1.0] * 10
    assert item_bootstrap(d) == (1.0, 1.0)
    # One seed of right/wrong items: the paired study's formula, sqrt(discordant / n) * 2.8.
    d = [-1.0] * 30 + [1.0] * 12 + [0.0] * 286
    assert detectable_difference(d) == pytest.approx(minimum_detectable_difference(328, 42 / 328))
    test = clustered_difference([[0] * 30 + [1] * 12 + [1] * 100 + [0] * 186], [1] * 30 + [0] * 12 + [1] * 100 + [0] * 186)
    assert test.difference == pytest.approx(-18 / 328)
    assert test.low < test.difference < test.high and test.per_seed == pytest.approx((-18 / 328,))
    assert test.cell() == f"{-18 / 328:+.3f} [{test.low:+.3f}, {test.high:+.3f}]"
    with pytest.raises(ValueError, match="same non-empty items"):
        item_differences([[1, 0]], [1, 0, 1])


def test_holm_hand_computed():
    # Sorted 0.01, 0.03, 0.04: times 3, 2, 1 -> 0.03, 0.06, 0.04, made monotone -> 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_matched_accuracy_interpolates_between_the_checkpoints_around_it():
    items = [[0, 0], [1, 0], [1, 1]]
    # 0.3 lies 0.1/0.4 of the way from checkpoint 1 (0.2) to checkpoint 2 (0.6).
    assert interpolate(crossing(0.3, [0.1, 0.2, 0.6]), items) == pytest.approx([1.0, 0.25])
    assert interpolate(crossing(0.05, [0.1, 0.2, 0.6]), items) == pytest.approx([0.0, 0.0])  # already there at the start
    assert crossing(0.7, [0.1, 0.2, 0.6]) is None
    assert math.isclose(interpolate(crossing(0.6, [0.1, 0.2, 0.6]), items)[1], 1.0)
    assert crossing(0.3, [0.1, 0.2, 0.6]) == pytest.approx(1.25) and crossing(0.6, [0.1, 0.2, 0.6]) == 2.0
