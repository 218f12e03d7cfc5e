"""The long-reasoning task (sums worked one addition a line) and the config that trains on it."""

import subprocess
import sys
from pathlib import Path

from lit_posttrain.data.running_sum import RunningSum

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "lit-posttrain")


def test_every_worked_answer_is_right_and_the_splits_do_not_overlap():
    task = RunningSum(terms=5, digits=2, num_train=30, num_eval=10)
    train, held_out = task.train_examples(), task.eval_examples()
    assert len(train) == 30 and len(held_out) == 10
    assert not {ex.messages[0]["content"] for ex in train} & {ex.messages[0]["content"] for ex in held_out}
    for ex in train + held_out:
        assert task.verifier(ex.demonstration, ex.answer) == 1.0
        assert len(ex.demonstration.splitlines()) == 5  # four additions and the answer
    assert RunningSum.worked((12, 30, 5)) == "12 + 30 = 42\n42 + 5 = 47\nAnswer: 47"
    assert task.verifier("12 + 30 = 42\n42 + 5 = 46\nAnswer: 46", "47") == 0.0
    assert [ex.answer for ex in RunningSum(terms=5, digits=2, num_train=3, num_eval=10).eval_examples()] == [ex.answer for ex in held_out]


def test_the_long_completions_config_trains(tmp_path):
    """configs/long_sums.yaml as shipped, on the tiny model with shorter lists and answers."""
    done = subprocess.run(
        [CLI, "fit", "--config", str(ROOT / "configs" / "long_sums.yaml"), "--model.init_args.model", "tiny-random-llama",
         "--model.init_args.group_size", "2", "--model.init_args.engine.init_args.max_new_tokens", "16",
         "--data.task.init_args.terms", "4", "--data.task.init_args.num_train", "8", "--data.batch_size", "2",
         "--trainer.max_steps", "2", "--trainer.callbacks", "[]", "--export_to", str(tmp_path / "model")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "model" / "config.json").exists() or (tmp_path / "model" / "adapter_config.json").exists()
