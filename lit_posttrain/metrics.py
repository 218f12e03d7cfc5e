"""Evaluation arithmetic: pure functions, tested against hand-computed values."""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct (Chen et al. 2021):
    `1 - C(n - c, k) / C(n, k)`, computed as a product so that large n does not overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss_all = 1.0
    for i in range(n - c + 1, n + 1):
        miss_all *= 1.0 - k / i
    return 1.0 - miss_all


def flips(first: Sequence[bool], now: Sequence[bool]) -> dict[str, int]:
    """Per-example changes since the first evaluation: a flat average hides examples that went
    from right to wrong while as many others went the other way."""
    if len(first) != len(now):
        raise ValueError(f"flips compares the same examples: {len(first)} then {len(now)} results")
    right_to_wrong = sum(1 for a, b in zip(first, now, strict=True) if a and not b)
    wrong_to_right = sum(1 for a, b in zip(first, now, strict=True) if b and not a)
    return {"right_to_wrong": right_to_wrong, "wrong_to_right": wrong_to_right}
