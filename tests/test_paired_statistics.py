"""The forgetting study's paired tests (benchmarks/paired.py) against hand-computed values."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paired import mcnemar_exact, minimum_detectable_difference, paired_bootstrap, paired_difference  # noqa: E402


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),  # nothing flipped: no evidence either way
        (5, 0, 2 / 32),  # all five flips one way: 2 * P(Binomial(5, 1/2) = 0)
        (1, 9, 2 * (1 + 10) / 1024),  # 2 * P(Binomial(10, 1/2) <= 1)
        (9, 1, 2 * (1 + 10) / 1024),  # symmetric
        (3, 3, 1.0),  # balanced: capped at 1
    ],
)
def test_mcnemar_exact_hand_computed(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected)


def test_paired_difference_counts_flips_and_its_interval_covers_it():
    before = [True, True, False, False] * 25
    after = [True, False, True, True] * 25  # per block of four: one right-to-wrong, two wrong-to-right
    test = paired_difference(before, after)
    assert (test.n, test.right_to_wrong, test.wrong_to_right) == (100, 25, 50)
    assert test.difference == pytest.approx(0.25)
    assert test.low < 0.25 < test.high and test.high - test.low < 0.4
    assert test.p_value == pytest.approx(mcnemar_exact(25, 50))
    assert test.cell() == f"+0.250 [{test.low:+.3f}, {test.high:+.3f}]"


def test_bootstrap_of_identical_differences_is_a_point_and_mismatched_lists_are_refused():
    assert paired_bootstrap([False] * 10, [True] * 10) == (1.0, 1.0)
    with pytest.raises(ValueError, match="same non-empty items"):
        paired_difference([True], [True, False])


def test_minimum_detectable_difference_hand_computed():
    # 100 items, a quarter flipping: standard error sqrt(0.25 / 100) = 0.05, times 1.96 + 0.84.
    assert minimum_detectable_difference(100, 0.25) == pytest.approx(2.8 * 0.05)
    assert minimum_detectable_difference(400, 0.25) == pytest.approx(2.8 * math.sqrt(0.25 / 400))
