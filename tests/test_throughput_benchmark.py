"""benchmarks/throughput.py's arithmetic: phases, token rates and MFU from logged steps, by hand."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import Run, summarise  # noqa: E402

N, PEAK = 1_000_000, 1e9  # parameters in matmuls, FLOP/s


def step(**values) -> dict:
    return {"peak_rss_mib": 1024.0, "train/completion_length": 3.0, "train/truncated": 0.0, **values}


def test_on_policy_step_split_rates_and_mfu():
    steps = [
        step(step_s=2.0, **{"time/generate_s": 1.0, "time/score_s": 0.1, "time/loss_forward_s": 0.5,
                            "time/backward_step_s": 0.3, "time/sync_s": 0.05, "tokens/prompts": 100.0, "tokens/generated": 50.0,
                            "tokens/trained": 120.0, "tokens/teacher": 150.0}),
        # A slower step: the medians are the middle of the three.
        step(step_s=4.0, **{"time/generate_s": 3.0, "time/score_s": 0.1, "time/loss_forward_s": 0.5,
                            "time/backward_step_s": 0.3, "time/sync_s": 0.05, "tokens/prompts": 100.0, "tokens/generated": 50.0,
                            "tokens/trained": 120.0, "tokens/teacher": 150.0}),
        step(step_s=1.0, **{"time/generate_s": 0.5, "time/score_s": 0.1, "time/loss_forward_s": 0.2,
                            "time/backward_step_s": 0.1, "time/sync_s": 0.05, "tokens/prompts": 100.0, "tokens/generated": 50.0,
                            "tokens/trained": 120.0, "tokens/teacher": 150.0}),
    ]  # fmt: skip
    row = summarise(Run(steps, peak_rss_process_mib=2048.0, process_s=30.0), N, PEAK)
    assert row["step_s"] == 2.0 and row["generation_s"] == 1.0 and row["loss_forward_s"] == 0.5
    assert row["sync_s"] == 0.05
    assert row["other_s"] == pytest.approx(0.05)  # 2.0 - (1.0 + 0.1 + 0.5 + 0.3 + 0.05), the median step's rest
    assert row["generation_tokens_per_s"] == 50.0  # generated / generation time
    assert row["training_tokens_per_s"] == pytest.approx(120.0 / 0.8)
    assert row["mfu_generation"] == pytest.approx(2 * N * 150 / 1.0 / PEAK)  # prefill + decode, 2N a token
    # The policy's forward and LoRA backward (4N a token) plus the teacher's forward (2N a token).
    assert row["mfu_training"] == pytest.approx((4 * N * 120 + 2 * N * 150) / 0.8 / PEAK)
    assert row["mfu_step"] == pytest.approx((2 * N * 150 + 4 * N * 120 + 2 * N * 150) / 2.0 / PEAK)
    assert row["peak_rss_training_gib"] == 1.0 and row["peak_rss_process_gib"] == 2.0


def test_a_method_that_does_not_sample_has_no_generation_columns():
    steps = [step(step_s=1.0, **{"time/loss_forward_s": 0.6, "time/backward_step_s": 0.3, "tokens/trained": 300.0})]
    row = summarise(Run(steps, peak_rss_process_mib=1024.0, process_s=10.0), N, PEAK)
    assert row["generation_s"] is None and row["generated_tokens"] is None and row["mfu_generation"] is None
    assert row["other_s"] == pytest.approx(0.1)
    assert row["mfu_training"] == pytest.approx(4 * N * 300 / 0.9 / PEAK)
    assert row["teacher_tokens"] is None
