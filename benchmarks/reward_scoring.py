"""Scoring a rollout batch's rewards: in the trainer's threads (`ThreadScorer`, the default) or in
worker processes (`ProcessScorer`), for math-verify (CPU-bound, seconds a batch) and for an
exact match (microseconds a call, so what is measured is the scorer's own overhead).

    .venv/bin/python benchmarks/reward_scoring.py --completions 64 --repeats 3

The completions are worked solutions of GSM8K's length (~150 words, ~250 tokens) ending in
`\\boxed{...}`, half right; each scorer is warmed up (workers started, math-verify imported) by
one batch before the timed ones. Nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import time
from pathlib import Path

from lit_posttrain.data.task import Example
from lit_posttrain.rewards import ExactMatch, MathVerifier, ProcessScorer, ThreadScorer
from lit_posttrain.rewards.functions import Verified

OUT = Path(__file__).resolve().parent / "reward_scoring_results.csv"


def completions(n: int, seed: int = 0) -> list[tuple[str, Example]]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        a, b, c = rng.randint(2, 90), rng.randint(2, 90), rng.randint(2, 9)
        steps = " ".join(
            f"Step {k}: we have {a + k} apples and give away {k} of them, so {a + k} - {k} = {a} remain, "
            f"and {c} baskets of {b} make {b * c}."
            for k in range(1, 9)
        )
        right = f"{a + b * c}"
        said = right if i % 2 == 0 else f"\\frac{{{a + b * c + 1}}}{{{c}}}"
        items.append((f"{steps} In total {a} + {b * c} = {said}. The answer is $\\boxed{{{said}}}$.", Example([{"role": "user", "content": "?"}], answer=right)))
    return items


def timed(scorer, parts, items, repeats: int) -> float:
    scorer.score(parts, items)  # warm-up: workers started, imports paid
    start = time.perf_counter()
    for _ in range(repeats):
        scores = scorer.score(parts, items)
    elapsed = (time.perf_counter() - start) / repeats
    assert sum(scores) == len(items) // 2 * len(parts), "half the completions are right"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completions", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    items = completions(args.completions)
    rows = []
    for reward, parts in (("math-verify", [Verified(MathVerifier(timeout_s=30))]), ("exact match", [Verified(_LastBoxed())])):
        scorers = {"threads (4)": ThreadScorer(timeout_s=30)}
        scorers.update({f"processes ({k})": ProcessScorer(timeout_s=30, workers=k) for k in (1, 2)})
        for name, scorer in scorers.items():
            seconds = timed(scorer, parts, items, args.repeats)
            scorer.close()
            rows.append({"reward": reward, "scorer": name, "completions": len(items), "batch_s": round(seconds, 3), "ms_per_call": round(1000 * seconds / len(items), 2)})
            print(rows[-1], flush=True)
        for part in parts:
            getattr(part.verifier, "close", lambda: None)()
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "cores", "machine"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "cores": os.cpu_count(), "machine": _processor()})
    print(f"wrote {args.out}")


def _processor() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


class _LastBoxed(ExactMatch):
    """Exact match of the last `\\boxed{...}` (the cheap reward): its cost is the scorer's."""

    def __call__(self, completion: str, answer: str) -> float:
        return float(completion.rpartition("\\boxed{")[2].partition("}")[0] == answer)


if __name__ == "__main__":
    main()
