"""Rewards as TRL and verl users write them: a weighted list of parts, each called with the row's
columns, each part's mean logged, their weighted sum the training reward."""

import csv
import json
from pathlib import Path

import pytest

from lit_posttrain.cli import LitPostTrainCLI
from lit_posttrain.data.files import FileTask
from lit_posttrain.data.task import Example
from lit_posttrain.rewards import ExactMatch
from lit_posttrain.rewards.functions import TRLReward, Verified, VerlScore, import_function

TINY_GRPO = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_grpo.yaml")

MODULE = '''
seen = []

def starts_with_digit(prompts, completions, **kwargs):
    seen.append({"prompts": prompts, "completions": completions, **kwargs})
    return [1.0 if c[0]["content"][:1].isdigit() else 0.0 for c in completions]

def by_difficulty(prompts, completions, difficulty, **kwargs):
    return [0.1 * d for d in difficulty]

def plain(prompts, completions, **kwargs):
    seen.append({"prompts": prompts, "completions": completions})
    return [None]

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    seen.append((data_source, solution_str, ground_truth, extra_info))
    return {"score": 1.0 if ground_truth in solution_str else 0.0} if data_source else 0.25
'''


@pytest.fixture
def rewards_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import my_rewards

    my_rewards.seen.clear()
    return my_rewards


EXAMPLE = Example(
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1?"}], answer="2",
    metadata={"difficulty": 3, "data_source": "mine", "extra_info": {"index": 7}},
)  # fmt: skip


def test_a_trl_reward_function_is_called_as_trl_calls_it(rewards_module):
    part = TRLReward("my_rewards.starts_with_digit")
    assert (part.name, part.weight, part("2 apples", EXAMPLE)) == ("starts_with_digit", 1.0, 1.0)
    (call,) = rewards_module.seen
    assert call["prompts"] == [EXAMPLE.messages]
    assert call["completions"] == [[{"role": "assistant", "content": "2 apples"}]]
    assert (call["answer"], call["difficulty"], call["data_source"]) == (["2"], [3], ["mine"])
    assert TRLReward("my_rewards:by_difficulty")("x", EXAMPLE) == pytest.approx(0.3)
    # As text, for TRL's standard (not conversational) format; None is TRL's "no score here".
    assert TRLReward("my_rewards.plain", conversational=False)("two", EXAMPLE) == 0.0
    assert rewards_module.seen[-1] == {"prompts": ["1 + 1?"], "completions": ["two"]}


def test_a_verl_compute_score_gets_the_rows_source_answer_and_extra_info(rewards_module):
    part = VerlScore("my_rewards.compute_score", weight=2.0)
    assert (part.name, part("it is 2", EXAMPLE), part("three", EXAMPLE)) == ("compute_score", 1.0, 0.0)
    assert rewards_module.seen[0] == ("mine", "it is 2", "2", {"index": 7})
    assert part("x", Example(EXAMPLE.messages, answer="2")) == 0.25  # a float result; no source in the row


@pytest.mark.parametrize(
    ("path", "message"),
    [("no_such_module.fn", "cannot import module 'no_such_module'"), ("os:no_such_fn", "has no callable 'no_such_fn'"),
     ("justaname", "expected an import path")],
)  # fmt: skip
def test_a_wrong_function_path_stops_the_run_when_configured(path, message):
    with pytest.raises(ValueError, match=message):
        import_function(path)
    with pytest.raises(ValueError, match=message):
        TRLReward(path)


def test_parts_need_their_own_names(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"rewards: each part needs its own name"):
        FileTask(str(tmp_path / "t.jsonl"), rewards=[Verified(ExactMatch()), Verified(ExactMatch())])


def test_weighted_rewards_that_read_columns_train_through_the_cli(rewards_module, tmp_path):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "difficulty": 3, "data_source": "mine"} for i in range(16)]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewards = [
        {"class_path": "lit_posttrain.rewards.functions.TRLReward", "init_args": {"function": "my_rewards.starts_with_digit", "weight": 0.5}},
        {"class_path": "lit_posttrain.rewards.functions.TRLReward", "init_args": {"function": "my_rewards:by_difficulty", "weight": 2.0, "name": "difficulty"}},
        {"class_path": "lit_posttrain.rewards.functions.VerlScore", "init_args": {"function": "my_rewards.compute_score"}},
        {"class_path": "lit_posttrain.rewards.functions.Verified", "init_args": {"verifier": {"class_path": "lit_posttrain.rewards.RegexMatch", "init_args": {"pattern": "\\d", "whole": False}}}},
    ]  # fmt: skip
    cli = LitPostTrainCLI(
        args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "2", "--export", "false",
              "--data.task", "lit_posttrain.data.files.FileTask", "--data.task.train", "mine.jsonl",
              "--data.task.eval_fraction", "0.25", "--data.task.rewards", json.dumps(rewards)],
    )  # fmt: skip
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("train/reward")]
    assert len(logged) == 2
    for row in logged:
        parts = {name: float(row[f"train/rewards/{name}"]) for name in ("starts_with_digit", "difficulty", "compute_score", "RegexMatch")}
        assert parts["difficulty"] == pytest.approx(0.3)  # read from every row's own column
        # The reward is the weighted sum of the parts, so its mean is the weighted sum of theirs.
        expected = 0.5 * parts["starts_with_digit"] + 2.0 * parts["difficulty"] + parts["compute_score"] + parts["RegexMatch"]
        assert float(row["train/reward"]) == pytest.approx(expected, abs=1e-5)
    # 12 training prompts, 8 a step: 8 then the epoch's last 4, 8 samples each, two parts recording calls.
    assert len(rewards_module.seen) == (8 + 4) * 8 * 2
